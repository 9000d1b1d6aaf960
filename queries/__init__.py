"""The audit questions as SQL, one file per question, installed as ``nexus_audit.queries``.

Data only: :mod:`nexus_audit.history.sql` loads them (a module named ``nexus_audit/queries.py``
would clash with this package in the installed wheel).
"""
