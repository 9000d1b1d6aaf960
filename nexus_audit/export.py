"""Compatibility: ``nexus_audit.export.ParquetHistory`` (named in the README) lives in
:mod:`nexus_audit.history.parquet`."""

from nexus_audit.history.parquet import ParquetHistory, export_history

__all__ = ["ParquetHistory", "export_history"]
