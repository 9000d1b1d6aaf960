"""Configuration: accounts, keys, budget, schedule, pricing, listen address.

Immutable value objects built by :func:`load_settings` from the environment mapping and
an optional TOML file named by ``NEXUS_AUDIT_CONFIG``; the environment wins. Tests pass a
plain dict as the environment. Every mistake becomes a :class:`ConfigError` that names
the setting, and never quotes a key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from nexus_audit.domain.shards import Shard
from nexus_audit.domain.timeutil import parse_duration
from nexus_audit.domain.tolerance import DEFAULT_TOTAL_TOLERANCE, TotalTolerance
from nexus_audit.errors import ConfigError, UsageError

PRODUCTION_API_URL: Final = "https://api.cloudnexus.io/v2"
#: The provider's documented limit per key.
API_RATE_LIMIT: Final = 1000
#: Our default share of it: a quarter, leaving three quarters to the deploy tools, CI and
#: consoles that share keys in practice. 250 requests/min still lists 25,000 instances a
#: minute at 100 a page.
DEFAULT_RATE_BUDGET: Final = 250
DEFAULT_DB: Final = "nexus-audit.duckdb"
#: Loopback by default: /report and /metrics describe the whole fleet, including public
#: buckets. Expose it deliberately (``--listen 0.0.0.0:9747``, as the container does).
DEFAULT_LISTEN: Final = "127.0.0.1:9747"
DEFAULT_INTERVAL: Final = timedelta(hours=1)
DEFAULT_BUCKET_INTERVAL: Final = timedelta(minutes=1)
DEFAULT_STALE_AFTER: Final = timedelta(days=7)
DEFAULT_PENDING_STALE_AFTER: Final = timedelta(hours=1)
DEFAULT_ACCOUNT: Final = "default"
#: Bytes allowed in one API answer: a page of 100 records is tens of KiB, a list of
#: 100,000 buckets some 20 MiB; an endless or hostile body stops here.
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
#: The longest wait the API's headers (Retry-After, X-RateLimit-Reset) may impose: two
#: budget windows. Longer, the crawl fails RATE_LIMITED instead of stalling.
DEFAULT_MAX_SERVER_WAIT: Final = timedelta(minutes=2)
#: Reports ``serve`` computes at once by default: one per core (each is mostly one DuckDB
#: query at a time), at least 1 and at most 4, so reports leave the crawls a share.
DEFAULT_REPORT_CONCURRENCY: Final = max(1, min(4, os.cpu_count() or 1))


class Secret:
    """A value that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: only for the Authorization header."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountConfig:
    """One CloudNexus account: where its API is, its key, and this tool's budget on it."""

    name: str
    api_url: str = PRODUCTION_API_URL
    api_key: Secret
    rate_budget: int = DEFAULT_RATE_BUDGET


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """How ``serve`` guards its own endpoints (like Prometheus' exporter web config)."""

    listen: str = DEFAULT_LISTEN
    bearer_token: Secret | None = None
    basic_auth_user: str | None = None
    basic_auth_password: Secret | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything nexus-audit needs to run, validated."""

    accounts: tuple[AccountConfig, ...] = ()
    db_path: Path = Path(DEFAULT_DB)
    interval: timedelta = DEFAULT_INTERVAL
    bucket_interval: timedelta = DEFAULT_BUCKET_INTERVAL
    #: Longest time one observation covers; default twice the interval of its kind.
    max_gap: timedelta | None = None
    stale_after: timedelta = DEFAULT_STALE_AFTER
    pending_stale_after: timedelta = DEFAULT_PENDING_STALE_AFTER
    pricing_file: Path | None = None
    policy_file: Path | None = None
    request_timeout: float = 30.0
    #: How far a crawl's count may be from agreeing API totals (``TOTAL_MISMATCH`` past it).
    total_tolerance: TotalTolerance = DEFAULT_TOTAL_TOLERANCE
    #: Bytes allowed in one API answer (``RESPONSE_TOO_LARGE`` past it).
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    #: The longest wait the API's rate-limit headers may impose (``RATE_LIMITED`` past it).
    max_server_wait: timedelta = DEFAULT_MAX_SERVER_WAIT
    per_instance_metrics: bool = False
    per_bucket_metrics: bool = True
    #: Reports ``serve`` computes at once; more are refused (503 with Retry-After).
    report_concurrency: int = DEFAULT_REPORT_CONCURRENCY
    web: WebConfig = field(default_factory=WebConfig)
    #: This replica's share of the accounts (``--shard i/n``); None: every account.
    shard: Shard | None = None

    def account(self, name: str | None) -> tuple[AccountConfig, ...]:
        """The accounts a command acts on: all, or the one named (``UsageError`` if unknown)."""
        if name is None:
            return self.accounts
        for account in self.accounts:
            if account.name == name:
                return (account,)
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise UsageError(f"--account: unknown account {name!r} (configured: {known})",
                         parameter="account")

    def crawled_accounts(self, name: str | None) -> tuple[AccountConfig, ...]:
        """:meth:`account`, refusing a configuration without any account (a command that
        crawls needs at least one; ``report`` works on a database alone)."""
        if not self.accounts:
            raise ConfigError("no CloudNexus account is configured: set NEXUS_API_KEY (or "
                              "NEXUS_API_KEY_FILE), or [[accounts]] in the NEXUS_AUDIT_CONFIG "
                              "file")
        return self.account(name)

    def in_shard(self, flag: str | None = None) -> Settings:
        """These settings with only the accounts of the shard (``flag``, the ``--shard``
        value, else :attr:`shard`; every account without one); :class:`ConfigError` when
        the shard holds none of them."""
        shard = Shard.parse(flag) if flag else self.shard
        if shard is None:
            return self
        held = tuple(a for a in self.accounts if shard.holds(a.name))
        if self.accounts and not held:
            names = ", ".join(a.name for a in self.accounts)
            raise ConfigError(f"shard {shard} holds none of the configured accounts ({names}): "
                              f"with {shard.count} replicas some have nothing to crawl; "
                              "use fewer replicas", parameter="shard")
        return replace(self, accounts=held, shard=shard)

    def max_gaps(self) -> tuple[timedelta, timedelta]:
        """Longest time one observation holds, for instances and buckets: ``max_gap`` when
        set, else twice the schedule interval of each kind."""
        if self.max_gap is not None:
            return self.max_gap, self.max_gap
        return 2 * self.interval, 2 * self.bucket_interval

    def secrets(self) -> tuple[str, ...]:
        """Every secret value in force, for the log redactor."""
        values = [a.api_key.reveal() for a in self.accounts]
        for secret in (self.web.bearer_token, self.web.basic_auth_password):
            if secret is not None:
                values.append(secret.reveal())
        return tuple(v for v in values if v)


def _nameable(given: str, path: Path) -> bool:
    """Whether an unreadable secret file's name may be quoted in an error.

    A value without a folder part, or whose folder does not exist, may well be the key
    itself pasted where its file name belongs (``NEXUS_API_KEY_FILE=nxk_live_...``, a
    common slip): quoting it would print the secret to a terminal or a CI log.
    """
    return "/" in given and path.parent.is_dir()


def read_secret_file(path: str | Path, setting: str, *, given: str | None = None) -> Secret:
    """Read a key or token from a file; the error names the file, never the content.

    ``given`` is the value as the user wrote it (default ``path``): when it may be the
    secret itself rather than a file name, the error does not repeat it.
    """
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        reason = exc.strerror or exc
        if not _nameable(str(path) if given is None else given, Path(path)):
            raise ConfigError(
                f"{setting}: cannot read the file it names: {reason} (the value is not "
                "repeated: it has no existing folder part, so it may be the secret itself; "
                "give the path of a file that holds it)") from None
        raise ConfigError(f"{setting}: cannot read {path}: {reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{setting}: {path} is not a UTF-8 text file") from None
    if not value:
        raise ConfigError(f"{setting}: {path} is empty")
    if any(ch.isspace() for ch in value):
        raise ConfigError(f"{setting}: {path} holds more than one word; expected only the key")
    return Secret(value)


def _duration(value: Any, setting: str) -> timedelta:
    if not isinstance(value, str):
        raise ConfigError(f"{setting}: expected a duration string like '1h', got {value!r}")
    try:
        return parse_duration(value, parameter=setting)
    except UsageError as exc:
        raise ConfigError(str(exc), parameter=setting) from None


def _positive_int(value: Any, setting: str, *, maximum: int | None = None) -> int:
    if isinstance(value, str):
        text = value.strip()
        # ASCII digits only: int() also takes other scripts' digits, signs and underscores.
        if not (text.isascii() and text.isdigit()):
            raise ConfigError(f"{setting}: expected a whole number, got {value!r}")
        value = int(text)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{setting}: expected a positive whole number, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{setting}: {value} is above the maximum of {maximum}")
    return value


def _bool(value: Any, setting: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{setting}: expected true or false, got {value!r}")


def _str(value: Any, setting: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{setting}: expected a non-empty string, got {value!r}")
    return value.strip()


def _url(value: Any, setting: str) -> str:
    given = _str(value, setting)
    url = given.rstrip("/")
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(f"{setting}: {given!r} is not an http(s) URL with a host "
                          f"(e.g. {PRODUCTION_API_URL})")
    return url


def validate_listen(value: str, setting: str = "listen") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9747`` for IPv6); ``UsageError`` when malformed."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    ascii_port = port_text.isascii() and port_text.isdigit()  # not "٩٧٤٧"
    if not sep or not host or not ascii_port or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"{setting}: {value!r} is not HOST:PORT (e.g. 127.0.0.1:9747)",
                         parameter=setting)
    return host, int(port_text)


def load_toml(path: Path) -> dict[str, Any]:
    """Read the config file; syntax errors name the line and column."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"NEXUS_AUDIT_CONFIG: cannot read {path}: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        # tomllib decodes the bytes itself; a binary or Latin-1 file is not TOML either.
        raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8 text") from None


_TOP_KEYS: Final = frozenset({
    "db", "rate_budget", "api_url", "interval", "bucket_interval", "max_gap", "stale_after",
    "pending_stale_after", "pricing", "policy", "request_timeout", "accounts", "serve",
    "total_tolerance", "max_response_bytes", "max_server_wait",
})
_ACCOUNT_KEYS: Final = frozenset({"name", "api_url", "api_key_file", "api_key_env", "rate_budget"})
_SERVE_KEYS: Final = frozenset({
    "listen", "per_instance_metrics", "per_bucket_metrics", "bearer_token_file",
    "basic_auth_user", "basic_auth_password_file", "tls_cert_file", "tls_key_file",
    "report_concurrency",
})


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(allowed))})")


def _relative(base: Path, value: Any, setting: str) -> Path:
    path = Path(_str(value, setting)).expanduser()
    return path if path.is_absolute() else base / path


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and its config file.

    Without any account configured (no key at all), ``accounts`` is empty: commands that
    need one say so themselves, so ``report`` works on a database alone.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    base = Path.cwd()
    if env.get("NEXUS_AUDIT_CONFIG"):
        path = Path(env["NEXUS_AUDIT_CONFIG"]).expanduser()
        data = load_toml(path)
        base = path.parent
        _check_keys(data, _TOP_KEYS, str(path))
    where = env.get("NEXUS_AUDIT_CONFIG", "config")

    def setting(env_name: str, key: str, default: Any, table: Mapping[str, Any] = data,
                label: str = "") -> tuple[Any, str]:
        """A setting's value and the name an error should give it: the environment
        variable's when it comes from there, else the file's key."""
        if env_name in env:
            return env[env_name], env_name
        return table.get(key, default), label + key

    budget = _positive_int(*setting("NEXUS_RATE_BUDGET", "rate_budget", DEFAULT_RATE_BUDGET),
                           maximum=1_000_000)
    default_url = _url(*setting("NEXUS_API_URL", "api_url", PRODUCTION_API_URL))

    env_key: Secret | None = None
    if env.get("NEXUS_API_KEY") and env.get("NEXUS_API_KEY_FILE"):
        raise ConfigError("set NEXUS_API_KEY or NEXUS_API_KEY_FILE, not both")
    if env.get("NEXUS_API_KEY"):
        value = env["NEXUS_API_KEY"].strip()
        if not value or any(ch.isspace() for ch in value):
            raise ConfigError("NEXUS_API_KEY: empty or contains white space")
        env_key = Secret(value)
    elif env.get("NEXUS_API_KEY_FILE"):
        env_key = read_secret_file(env["NEXUS_API_KEY_FILE"], "NEXUS_API_KEY_FILE")

    tables = data.get("accounts", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: 'accounts' must be an array of tables ([[accounts]])")
    accounts: list[AccountConfig] = []
    for index, table in enumerate(tables):
        label = f"{where}: accounts[{index}]"
        _check_keys(table, _ACCOUNT_KEYS, label)
        name = _str(table.get("name"), f"{label}.name")
        key: Secret | None = None
        if "api_key_file" in table:
            key = read_secret_file(_relative(base, table["api_key_file"], f"{label}.api_key_file"),
                                   f"{label}.api_key_file", given=str(table["api_key_file"]))
        elif "api_key_env" in table:
            var = _str(table["api_key_env"], f"{label}.api_key_env")
            if not env.get(var):
                raise ConfigError(f"{label}.api_key_env: the variable {var} is not set")
            key = Secret(env[var].strip())
        if env_key is not None and len(tables) == 1:
            key = env_key  # the environment wins
        if key is None:
            raise ConfigError(f"{label}: no key (set api_key_file or api_key_env)")
        # NEXUS_API_URL / NEXUS_RATE_BUDGET from the environment win over the file.
        url = default_url if "NEXUS_API_URL" in env else _url(
            table.get("api_url", default_url), f"{label}.api_url")
        account_budget = budget if "NEXUS_RATE_BUDGET" in env else _positive_int(
            table.get("rate_budget", budget), f"{label}.rate_budget", maximum=1_000_000)
        accounts.append(AccountConfig(name=name, api_url=url, api_key=key,
                                      rate_budget=account_budget))
    if env_key is not None and len(tables) > 1:
        raise ConfigError(f"{where}: NEXUS_API_KEY applies to one account, but {len(tables)} "
                          "are configured; give each its api_key_file or api_key_env")
    if not tables and env_key is not None:
        accounts.append(AccountConfig(name=env.get("NEXUS_ACCOUNT", DEFAULT_ACCOUNT),
                                      api_url=default_url, api_key=env_key, rate_budget=budget))
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: account names must be unique, got {names}")

    serve = data.get("serve", {})
    if not isinstance(serve, dict):
        raise ConfigError(f"{where}: [serve] must be a table")
    _check_keys(serve, _SERVE_KEYS, f"{where}: [serve]")
    listen, listen_name = setting("NEXUS_AUDIT_LISTEN", "listen", DEFAULT_LISTEN, serve,
                                  "serve.")
    validate_listen(_str(listen, listen_name), listen_name)
    token = None
    if env.get("NEXUS_AUDIT_BEARER_TOKEN_FILE") or "bearer_token_file" in serve:
        token_given = env.get("NEXUS_AUDIT_BEARER_TOKEN_FILE", serve.get("bearer_token_file"))
        token = read_secret_file(_relative(base, token_given, "bearer_token_file"),
                                 "bearer_token_file", given=str(token_given))
    user = serve.get("basic_auth_user")
    password = None
    if user is not None:
        user = _str(user, "serve.basic_auth_user")
        if ":" in user:  # basic auth sends "user:password": a colon ends the user name
            raise ConfigError("serve.basic_auth_user: must not contain ':' (no client could "
                              "log in)", parameter="basic_auth_user")
        if "basic_auth_password_file" not in serve:
            raise ConfigError("serve.basic_auth_user needs serve.basic_auth_password_file")
        password = read_secret_file(_relative(base, serve["basic_auth_password_file"],
                                    "basic_auth_password_file"), "basic_auth_password_file",
                                    given=str(serve["basic_auth_password_file"]))
    cert = serve.get("tls_cert_file")
    key_file = serve.get("tls_key_file")
    if (cert is None) != (key_file is None):
        raise ConfigError("serve: tls_cert_file and tls_key_file go together")
    web = WebConfig(
        listen=listen,
        bearer_token=token,
        basic_auth_user=user,
        basic_auth_password=password,
        tls_cert_file=_relative(base, cert, "tls_cert_file") if cert else None,
        tls_key_file=_relative(base, key_file, "tls_key_file") if key_file else None,
    )

    def path_setting(env_name: str, key: str) -> Path | None:
        if env.get(env_name):
            return Path(env[env_name]).expanduser()
        if key in data:
            return _relative(base, data[key], key)
        return None

    interval = _duration(*setting("NEXUS_AUDIT_INTERVAL", "interval", "1h"))
    bucket_interval = _duration(*setting("NEXUS_AUDIT_BUCKET_INTERVAL", "bucket_interval", "1m"))
    max_gap = data.get("max_gap")
    timeout = data.get("request_timeout", 30)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigError(f"request_timeout: expected positive seconds, got {timeout!r}")
    shard = (Shard.parse(env["NEXUS_AUDIT_SHARD"], parameter="NEXUS_AUDIT_SHARD")
             if env.get("NEXUS_AUDIT_SHARD", "").strip() else None)
    max_server_wait = _duration(*setting("NEXUS_AUDIT_MAX_SERVER_WAIT", "max_server_wait",
                                         "2m"))
    if max_server_wait <= timedelta(0):
        raise ConfigError("max_server_wait: must be longer than 0", parameter="max_server_wait")
    return Settings(
        shard=shard,
        accounts=tuple(accounts),
        db_path=path_setting("NEXUS_AUDIT_DB", "db") or Path(DEFAULT_DB),
        interval=interval,
        bucket_interval=bucket_interval,
        max_gap=_duration(max_gap, "max_gap") if max_gap is not None else None,
        stale_after=_duration(data.get("stale_after", "7d"), "stale_after"),
        pending_stale_after=_duration(data.get("pending_stale_after", "1h"),
                                      "pending_stale_after"),
        pricing_file=path_setting("NEXUS_AUDIT_PRICING", "pricing"),
        policy_file=path_setting("NEXUS_AUDIT_POLICY", "policy"),
        request_timeout=float(timeout),
        total_tolerance=TotalTolerance.parse(*setting("NEXUS_AUDIT_TOTAL_TOLERANCE",
                                                      "total_tolerance", "10,1%")),
        max_response_bytes=_positive_int(*setting("NEXUS_AUDIT_MAX_RESPONSE_BYTES",
                                                  "max_response_bytes",
                                                  DEFAULT_MAX_RESPONSE_BYTES)),
        max_server_wait=max_server_wait,
        per_instance_metrics=_bool(serve.get("per_instance_metrics", False),
                                   "serve.per_instance_metrics"),
        per_bucket_metrics=_bool(serve.get("per_bucket_metrics", True),
                                 "serve.per_bucket_metrics"),
        report_concurrency=_positive_int(*setting(
            "NEXUS_AUDIT_REPORT_CONCURRENCY", "report_concurrency", DEFAULT_REPORT_CONCURRENCY,
            serve, "serve."), maximum=64),
        web=web,
    )
