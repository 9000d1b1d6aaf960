"""The history: DuckDB only, no HTTP. Schema and migrations, staging and diffs, atomic
commits, readers, file handling, the SQL loader and the Parquet export.
"""
