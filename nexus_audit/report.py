"""Compatibility: ``nexus_audit.report.build_report`` (named in the README) lives in
:mod:`nexus_audit.audit.report`."""

from nexus_audit.audit.report import Report, build_report

__all__ = ["Report", "build_report"]
