"""``python -m nexus_audit`` runs the ``nexus-audit`` command."""

from nexus_audit.cli import run

run()
