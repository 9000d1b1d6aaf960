"""nexus-audit: inventory exporter and audit service for the CloudNexus cloud (REST API v2)."""

__version__ = "0.1.0"
