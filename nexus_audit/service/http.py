"""The vocabulary of ``serve``'s HTTP side, apart from the application: what the app is
built from (:class:`Exposition`, :class:`ReportSource`, :class:`Readiness`), how it
answers errors (:class:`HttpError`), who may call it (:class:`AuthPolicy`, TLS) and how a
report query is read (:func:`parse_report_query`). Pure, or nearly: tested without a server.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from multidict import MultiMapping

from nexus_audit.config import WebConfig
from nexus_audit.domain.files import MAX_SETTINGS_FILE_BYTES
from nexus_audit.domain.timeutil import Window, parse_duration
from nexus_audit.errors import ConfigError, UsageError
from nexus_audit.history.cancel import Cancel

#: Paths served without credentials: liveness probes must not need the token.
OPEN_PATHS: Final = frozenset({"/healthz"})
REPORT_PARAMETERS: Final = ("since", "until", "account", "stale_after")
#: Seconds a connection may take to deliver a whole request head (from connecting, or from
#: the previous response on a kept-alive connection); then it is closed. Also how long an
#: idle kept-alive connection stays open.
HEADER_TIMEOUT: Final = 10.0
DEFAULT_SINCE: Final = "30d"
JSON_DUMPS: Final = json.dumps


class Exposition(Protocol):
    """Renders the metrics for one scrape."""

    def cached(self, accept: str, *, gzip: bool = False) -> tuple[bytes, str] | None:
        """The body (gzip-encoded when ``gzip``) and its content type for the scrape's
        ``Accept`` header if cheap to make (called on the event loop); else None."""

    def render(self, accept: str) -> tuple[bytes, str]:
        """The body and its content type for the scrape's ``Accept`` header (called in a
        worker thread when :meth:`cached` gave None)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportQuery:
    """A validated ``GET /report`` query."""

    window: Window
    account: str | None = None
    stale_after: timedelta | None = None


class ReportSource(Protocol):
    """Builds the report JSON; called in a report worker thread."""

    @property
    def accounts(self) -> tuple[str, ...]:
        """The configured account names (an unknown ``account`` is a 400)."""

    def report(self, query: ReportQuery, cancel: Cancel) -> Mapping[str, Any] | bytes:
        """The report JSON for ``query`` (or its bytes, already encoded); ``NoDataError``
        when there is nothing to report.

        Runs inside ``cancel.cancellable(cancel)``: DuckDB reads are interrupted when
        nobody waits for the report any more; other work should stop soon after
        ``cancel.cancelled`` (by raising)."""

    def report_html(self, query: ReportQuery, cancel: Cancel) -> bytes:
        """The same report as one HTML page, UTF-8 (``nexus_audit.output.html_report``),
        computed like :meth:`report`."""


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether every account has crawled recently; ``accounts`` holds the reasons."""

    ready: bool
    accounts: Mapping[str, Any] = field(default_factory=dict)


class HttpError(Exception):
    """An error answered as ``{"error": {"code", "message"[, "parameter"]}}``."""

    def __init__(self, status: int, code: str, message: str, *,
                 parameter: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """The JSON response for this error."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        return web.json_response({"error": body}, status=self.status, headers=self.headers)


# -- authentication ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthPolicy:
    """Who may call the guarded endpoints: anyone, a bearer token, basic auth, or either."""

    bearer_token: str | None = None
    basic_user: str | None = None
    basic_password: str | None = None

    @classmethod
    def from_web(cls, web_config: WebConfig) -> AuthPolicy:
        """The policy configured in ``[serve]``."""
        return cls(
            bearer_token=web_config.bearer_token.reveal() if web_config.bearer_token else None,
            basic_user=web_config.basic_auth_user,
            basic_password=(web_config.basic_auth_password.reveal()
                            if web_config.basic_auth_password else None),
        )

    @property
    def enabled(self) -> bool:
        """Whether any credential is required."""
        return self.bearer_token is not None or self.basic_user is not None

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value naming the accepted schemes."""
        schemes = []
        if self.bearer_token is not None:
            schemes.append('Bearer realm="nexus-audit"')
        if self.basic_user is not None:
            schemes.append('Basic realm="nexus-audit", charset="UTF-8"')
        return ", ".join(schemes)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value grants access (constant-time compare).

        A value that is not UTF-8 (aiohttp hands its bytes over as surrogate escapes) or
        basic credentials that are not ASCII base64 grant nothing; they never raise.
        """
        if not self.enabled:
            return True
        if not authorization:
            return False
        try:
            authorization.encode("utf-8")
        except UnicodeEncodeError:
            return False  # not UTF-8 on the wire: no token or password of ours
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        scheme = scheme.lower()
        if scheme == "bearer" and self.bearer_token is not None:
            return hmac.compare_digest(credentials.encode(), self.bearer_token.encode())
        if scheme == "basic" and self.basic_user is not None and self.basic_password is not None:
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: non-ASCII
                return False
            user, sep, password = decoded.partition(":")
            # Both comparisons always run, so timing does not tell which one failed.
            user_ok = hmac.compare_digest(user.encode(), self.basic_user.encode())
            password_ok = hmac.compare_digest(password.encode(), self.basic_password.encode())
            return bool(sep) and user_ok and password_ok
        return False


def make_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM files; ``ConfigError`` if unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # ssl's FileNotFoundError carries no file name (it said "None does not exist"): name
    # the missing file ourselves.
    for setting, path in (("tls_cert_file", cert_file), ("tls_key_file", key_file)):
        if not path.is_file():
            raise ConfigError(f"serve.{setting}: {path} does not exist (or is not a file)",
                              parameter=setting)
        # OpenSSL reads a file to its end looking for PEM blocks: a disk image named by
        # mistake is refused, as every other settings file over the bound is.
        if path.stat().st_size > MAX_SETTINGS_FILE_BYTES:
            raise ConfigError(f"serve.{setting}: {path} holds more than "
                              f"{MAX_SETTINGS_FILE_BYTES:,} bytes: not a PEM file",
                              parameter=setting)
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except FileNotFoundError as exc:  # removed in between
        raise ConfigError(f"serve.tls_cert_file/tls_key_file: {cert_file} or {key_file} "
                          f"does not exist ({exc.strerror})") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"serve.tls_cert_file/tls_key_file: cannot load {cert_file} with {key_file}: "
            f"{getattr(exc, 'reason', None) or exc.strerror or exc}"
        ) from None
    return context


# -- query parsing (pure) ------------------------------------------------------------------


def parse_report_query(
    query: Mapping[str, str],
    *,
    accounts: tuple[str, ...],
    now: datetime,
) -> ReportQuery:
    """Validate ``/report``'s parameters; ``UsageError`` naming the parameter at fault.

    ``query`` is a multi-dict (aiohttp's ``request.query``) or a plain mapping. Empty
    values mean "the default" (``until=`` is now, ``account=`` is every account).
    """
    for key in query:
        if key not in REPORT_PARAMETERS:
            raise UsageError(f"{key}: unknown parameter (known: {', '.join(REPORT_PARAMETERS)})",
                             parameter=key)
        if isinstance(query, MultiMapping) and len(query.getall(key)) > 1:
            raise UsageError(f"{key}: given more than once", parameter=key)
    since = (query.get("since") or "").strip() or DEFAULT_SINCE
    until = (query.get("until") or "").strip() or None
    window = Window.parse(since, until, now)
    account = (query.get("account") or "").strip() or None
    if account is not None and account not in accounts:
        known = ", ".join(accounts) or "none"
        raise UsageError(f"account: unknown account {account!r} (configured: {known})",
                         parameter="account")
    stale_text = (query.get("stale_after") or "").strip()
    stale_after = parse_duration(stale_text, parameter="stale_after") if stale_text else None
    return ReportQuery(window=window, account=account, stale_after=stale_after)
