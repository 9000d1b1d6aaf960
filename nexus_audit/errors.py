"""The exceptions of nexus-audit: one root, a few named families.

The CLI turns these into one line and an exit code (usage errors 2, runtime failures 1);
a traceback means a bug. Library errors (aiohttp, duckdb, tomllib) are translated at the
boundary with ``raise ... from`` so callers only ever see this vocabulary.
"""

from __future__ import annotations


class NexusAuditError(Exception):
    """Root of every error nexus-audit raises on purpose."""

    #: A short hint printed after the message by the CLI: what the user can do about it.
    hint: str = ""


class UsageError(NexusAuditError):
    """The user asked for something malformed: a bad flag, duration or parameter (exit 2)."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        #: The flag or query parameter at fault, named in HTTP 400 bodies.
        self.parameter = parameter


class ConfigError(UsageError):
    """The configuration (environment, TOML file, key file, pricing file) is invalid."""


class ApiError(NexusAuditError):
    """CloudNexus answered with an error, or could not be reached.

    Carries what a person needs to act on it: the HTTP status, the API's error code and
    message, the request id to quote to CloudNexus support, and the endpoint.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.endpoint = endpoint

    def __str__(self) -> str:
        parts = [self.message]
        detail = ", ".join(
            f"{name} {value}"
            for name, value in (
                ("HTTP", self.status),
                ("code", self.code),
                ("request_id", self.request_id),
                ("endpoint", self.endpoint),
            )
            if value is not None
        )
        if detail:
            parts.append(f"({detail})")
        return " ".join(parts)


class AuthError(ApiError):
    """401: the API key is invalid or expired."""

    hint = "check NEXUS_API_KEY / NEXUS_API_KEY_FILE; the key may be revoked or expired"


class ForbiddenError(ApiError):
    """403: the key lacks a permission, or the caller's IP is not on the allow-list."""

    hint = "check the key's permissions and the account's IP allow-list"


class NotFoundError(ApiError):
    """404: the resource or endpoint does not exist (check NEXUS_API_URL)."""


class BadRequestError(ApiError):
    """400: CloudNexus rejected the request (a bad parameter or a rejected cursor)."""


class RateLimitedError(ApiError):
    """429 persisted past the retry allowance."""


class ServerError(ApiError):
    """5xx persisted past the retry allowance."""


class TransportError(ApiError):
    """Timeouts, connection resets and unreadable responses persisted past retries."""


class ProtocolError(ApiError):
    """CloudNexus answered 2xx with a body that breaks the documented format."""


class ResponseTooLargeError(ProtocolError):
    """An answer's body passed the byte cap per answer (an endless or hostile body)."""


class CrawlError(NexusAuditError):
    """A crawl could not be completed; nothing of it becomes history."""

    #: The failure code stored with the failed crawl (``crawls.error_code``).
    code: str = "CRAWL"

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        #: The answer (``X-Request-Id``) that showed the problem, to quote to support.
        self.request_id = request_id


class DuplicateConflictError(CrawlError):
    """One crawl saw the same id twice with different contents."""

    code = "DUPLICATE_CONFLICT"


class TotalMismatchError(CrawlError):
    """The records collected fall short of (or exceed) the total the API agreed on."""

    code = "TOTAL_MISMATCH"


class WalkTooLongError(CrawlError):
    """A cursor chain ran past the pages its announced total allows."""

    code = "WALK_TOO_LONG"


class PageTooLargeError(CrawlError):
    """A page held more items than the ``limit`` asked for."""

    code = "PAGE_TOO_LARGE"


class StoreError(NexusAuditError):
    """The history database cannot be used (locked, corrupt, full disk, wrong file)."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer nexus-audit; it is left untouched."""

    hint = "upgrade nexus-audit, or point NEXUS_AUDIT_DB at another file"


class CostOutOfRangeError(NexusAuditError):
    """An amount of money passes what a report adds up exactly (DECIMAL(38,12): under
    10^26): prices out of proportion to the fleet they price."""

    hint = "check the prices in the pricing file (NEXUS_AUDIT_PRICING or pricing = ...)"


class NoDataError(NexusAuditError):
    """The question has no answer yet: no crawls, an unknown account, an empty window."""


class UnknownAccountError(NoDataError):
    """A report or export names an account the history has never seen."""

    def __init__(self, account: str, known: list[str] | tuple[str, ...]) -> None:
        names = ", ".join(known) or "none"
        super().__init__(f"--account: no history for account {account!r} (known: {names})")
        self.account = account
