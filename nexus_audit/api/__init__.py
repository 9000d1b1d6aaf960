"""The CloudNexus v2 API client: HTTP and typed errors, the rate budget, retries, pagination."""

from nexus_audit.api.budget import RateBudget
from nexus_audit.api.client import ApiStats, CloudNexusClient
from nexus_audit.api.pagination import PAGE_LIMIT, CursorWalk, RepeatedCursorError
from nexus_audit.api.retry import DEFAULT_RETRY_POLICY, RetryPolicy

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "PAGE_LIMIT",
    "ApiStats",
    "CloudNexusClient",
    "CursorWalk",
    "RateBudget",
    "RepeatedCursorError",
    "RetryPolicy",
]
