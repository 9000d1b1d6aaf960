"""What a report becomes: text renderings (table, JSON, Markdown, CSV), OCSF findings, and
the verified evidence upload to CloudNexus object storage.
"""
