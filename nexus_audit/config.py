"""Configuration: accounts, keys, budget, schedule, pricing, listen address.

Immutable value objects built by :func:`load_settings` from the environment mapping and
an optional TOML file named by ``NEXUS_AUDIT_CONFIG``; the environment wins. Tests pass a
plain dict as the environment. Every mistake becomes a :class:`ConfigError` that names
the setting, and never quotes a key.

Each scalar setting is declared once, on its field, by :func:`setting`: its default, its
parser, its environment variable, its TOML key (top level or ``[serve]``) and its maximum.
:func:`load_settings` is driven by those declarations; only the accounts' keys and
``serve``'s credentials and TLS files are assembled by hand. No other module of the
package reads the environment (``tests/test_layout.py`` checks it).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from nexus_audit.domain.files import read_bounded
from nexus_audit.domain.shards import Shard
from nexus_audit.domain.tolerance import DEFAULT_TOTAL_TOLERANCE, TotalTolerance
from nexus_audit.domain.values import (
    boolean,
    duration,
    duration_or_zero,
    listen_address,
    positive_int,
    seconds,
    text,
)
from nexus_audit.errors import ConfigError, UsageError

T = TypeVar("T")

PRODUCTION_API_URL: Final = "https://api.cloudnexus.io/v2"
#: Our default share of the provider's limit per key (1000 requests/min): a quarter,
#: leaving three quarters to the deploy tools, CI and consoles that share keys in practice.
#: 250 requests/min still lists 25,000 instances a minute at 100 a page.
DEFAULT_RATE_BUDGET: Final = 250
#: Loopback by default: /report and /metrics describe the whole fleet, including public
#: buckets. Expose it deliberately (``--listen 0.0.0.0:9747``, as the container does).
DEFAULT_LISTEN: Final = "127.0.0.1:9747"
#: Bytes allowed in one API answer: a page of 100 records is tens of KiB, a list of
#: 100,000 buckets some 20 MiB; an endless or hostile body stops here.
DEFAULT_MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
#: The longest wait the API's headers (Retry-After, X-RateLimit-Reset) may impose: two
#: budget windows. Longer, the crawl fails RATE_LIMITED instead of stalling.
DEFAULT_MAX_SERVER_WAIT: Final = timedelta(minutes=2)
#: Reports ``serve`` computes at once by default: one per core (each is mostly one DuckDB
#: query at a time), at least 1 and at most 4, so reports leave the crawls a share.
DEFAULT_REPORT_CONCURRENCY: Final = max(1, min(4, os.cpu_count() or 1))

_SETTING: Final = "nexus_audit.setting"


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """Where one scalar setting comes from and how it is read (declared by :func:`setting`):
    ``parse(value, name)`` checks a value, naming the variable or the file's key that gave
    it; ``table`` is ``""`` (the file's top level) or ``"serve"``; with ``blank_is_unset``
    an empty variable counts as not set (else it is a value, and refused)."""

    parse: Callable[[Any, str], Any]
    env: str | None = None
    key: str | None = None
    table: str = ""
    maximum: int | None = None
    blank_is_unset: bool = False

    def from_env(self, env: Mapping[str, str]) -> str | None:
        """The environment's value for it, or None when it is not set there."""
        value = env.get(self.env) if self.env is not None else None
        return None if value is None or (self.blank_is_unset and not value.strip()) else value

    def read(self, value: Any, name: str) -> Any:
        """``value`` parsed and held to the maximum; errors name ``name``."""
        parsed = self.parse(value, name)
        if self.maximum is not None and parsed > self.maximum:
            raise ConfigError(f"{name}: {parsed} is above the maximum of {self.maximum}")
        return parsed


def setting(default: T, parse: Callable[[Any, str], T], *, env: str | None = None,
            key: str | None = None, table: str = "", maximum: int | None = None,
            blank_is_unset: bool = False) -> T:
    """A dataclass field holding a setting: ``default`` unless the variable ``env`` or the
    TOML key ``key`` (in ``table``) gives a value, checked by ``parse``."""
    spec = Setting(parse=parse, env=env, key=key, table=table, maximum=maximum,
                   blank_is_unset=blank_is_unset)
    return field(default=default, metadata={_SETTING: spec})


def declared(cls: type) -> dict[str, Setting]:
    """The settings declared on the dataclass ``cls``, by field name."""
    return {f.name: f.metadata[_SETTING] for f in fields(cls) if _SETTING in f.metadata}


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


def _path(value: Any, setting: str) -> Path:
    return Path(text(value, setting)).expanduser()


def _url(value: Any, setting: str) -> str:
    given = text(value, setting)
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


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountConfig:
    """One CloudNexus account: where its API is, its key, and this tool's budget on it.

    ``api_url`` and ``rate_budget`` as set at the file's top level (or by their variables)
    are every ``[[accounts]]``'s defaults; their variables also win over an account's own.
    """

    #: The name of the account of the environment's key (the file's accounts name theirs).
    name: str = setting("default", text, env="NEXUS_ACCOUNT", blank_is_unset=True)
    api_url: str = setting(PRODUCTION_API_URL, _url, env="NEXUS_API_URL", key="api_url")
    api_key: Secret
    #: Requests per minute this tool may spend per key.
    rate_budget: int = setting(DEFAULT_RATE_BUDGET, positive_int, env="NEXUS_RATE_BUDGET",
                               key="rate_budget", maximum=1_000_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """How ``serve`` guards its own endpoints (like Prometheus' exporter web config)."""

    listen: str = setting(DEFAULT_LISTEN, listen_address, env="NEXUS_AUDIT_LISTEN", key="listen",
                          table="serve")
    bearer_token: Secret | None = None
    basic_auth_user: str | None = None
    basic_auth_password: Secret | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything nexus-audit needs to run, validated."""

    accounts: tuple[AccountConfig, ...] = ()
    db_path: Path = setting(Path("nexus-audit.duckdb"), _path, env="NEXUS_AUDIT_DB",
                            key="db", blank_is_unset=True)
    interval: timedelta = setting(timedelta(hours=1), duration,
                                  env="NEXUS_AUDIT_INTERVAL", key="interval")
    bucket_interval: timedelta = setting(timedelta(minutes=1), duration,
                                         env="NEXUS_AUDIT_BUCKET_INTERVAL", key="bucket_interval")
    #: Longest time one observation covers; None: twice the interval of its kind.
    max_gap: timedelta | None = setting(None, duration, key="max_gap")
    stale_after: timedelta = setting(timedelta(days=7), duration, key="stale_after")
    pending_stale_after: timedelta = setting(timedelta(hours=1), duration,
                                             key="pending_stale_after")
    pricing_file: Path | None = setting(None, _path, env="NEXUS_AUDIT_PRICING",
                                        key="pricing", blank_is_unset=True)
    policy_file: Path | None = setting(None, _path, env="NEXUS_AUDIT_POLICY",
                                       key="policy", blank_is_unset=True)
    #: Seconds the API has for an answer.
    request_timeout: float = setting(30.0, seconds, key="request_timeout")
    #: How far a crawl's count may be from agreeing API totals (``TOTAL_MISMATCH`` past it).
    total_tolerance: TotalTolerance = setting(DEFAULT_TOTAL_TOLERANCE, TotalTolerance.parse,
                                              env="NEXUS_AUDIT_TOTAL_TOLERANCE",
                                              key="total_tolerance")
    #: Bytes allowed in one API answer (``RESPONSE_TOO_LARGE`` past it).
    max_response_bytes: int = setting(DEFAULT_MAX_RESPONSE_BYTES, positive_int,
                                      env="NEXUS_AUDIT_MAX_RESPONSE_BYTES",
                                      key="max_response_bytes")
    #: The longest wait the API's rate-limit headers may impose (``RATE_LIMITED`` past it).
    max_server_wait: timedelta = setting(DEFAULT_MAX_SERVER_WAIT, duration,
                                         env="NEXUS_AUDIT_MAX_SERVER_WAIT", key="max_server_wait")
    per_instance_metrics: bool = setting(False, boolean, key="per_instance_metrics", table="serve")
    per_bucket_metrics: bool = setting(True, boolean, key="per_bucket_metrics", table="serve")
    #: Reports ``serve`` computes at once; more are refused (503 with Retry-After).
    report_concurrency: int = setting(DEFAULT_REPORT_CONCURRENCY, positive_int,
                                      env="NEXUS_AUDIT_REPORT_CONCURRENCY",
                                      key="report_concurrency", table="serve", maximum=64)
    #: How long a crawl in progress at shutdown may take to finish and commit.
    shutdown_grace: timedelta = setting(timedelta(seconds=10), duration_or_zero,
                                        env="NEXUS_AUDIT_SHUTDOWN_GRACE", blank_is_unset=True)
    web: WebConfig = field(default_factory=WebConfig)
    #: This replica's share of the accounts (``--shard i/n``); None: every account.
    shard: Shard | None = setting(None, Shard.parse, env="NEXUS_AUDIT_SHARD", blank_is_unset=True)
    #: The declared settings (field names) the environment gave, for a command that takes
    #: those but not the file's (``demo``'s database).
    from_env: frozenset[str] = field(default=frozenset(), compare=False)

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


def _keys(*classes: type, table: str = "") -> frozenset[str]:
    """The TOML keys of the settings declared on ``classes`` in ``table``."""
    return frozenset(s.key for cls in classes for s in declared(cls).values()
                     if s.key is not None and s.table == table)


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
        value = read_bounded(path).decode("utf-8").strip()
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
    return _secret(value, f"{setting}: {path}")


def _secret(value: str, where: str) -> Secret:
    """``value`` as a :class:`Secret` if it can travel in an HTTP header: a control, format
    or other unprintable character (ESC, NUL, a bidi mark, a byte the environment could not
    decode) is refused here, never repeated; aiohttp refused it mid-crawl, with a
    traceback."""
    if not value.isprintable():
        raise ConfigError(f"{where}: holds a control or unprintable character; a key or token "
                          "is one word of printable characters (not repeated here)")
    return Secret(value)


def load_toml(path: Path) -> dict[str, Any]:
    """Read the config file; syntax errors name the line and column."""
    try:
        return tomllib.loads(read_bounded(path).decode("utf-8"))
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"NEXUS_AUDIT_CONFIG: cannot read {path}: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        # tomllib decodes the bytes itself; a binary or Latin-1 file is not TOML either.
        raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8 text") from None


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(allowed))})")


def _load(cls: type, env: Mapping[str, str], tables: Mapping[str, Mapping[str, Any]],
          base: Path, *, prefix: str = "", defaults: Mapping[str, Any] | None = None,
          ) -> dict[str, Any]:
    """The settings declared on ``cls``, each from its variable, else from its table of the
    file (a relative path there is taken from the file's folder, ``base``), else from
    ``defaults``, else its declared default. ``prefix`` starts the file's names in errors."""
    values: dict[str, Any] = {}
    for name, spec in declared(cls).items():
        table = tables.get(spec.table, {})
        if (raw := spec.from_env(env)) is not None:
            values[name] = spec.read(raw, str(spec.env))
        elif spec.key is not None and spec.key in table:
            where = f"{prefix}{spec.table}.{spec.key}" if spec.table else prefix + spec.key
            value = spec.read(table[spec.key], where)
            values[name] = base / value if isinstance(value, Path) else value
        elif defaults is not None and name in defaults:
            values[name] = defaults[name]
    return values


def _env_key(env: Mapping[str, str]) -> Secret | None:
    """The key ``NEXUS_API_KEY`` or ``NEXUS_API_KEY_FILE`` gives, if any."""
    if env.get("NEXUS_API_KEY") and env.get("NEXUS_API_KEY_FILE"):
        raise ConfigError("set NEXUS_API_KEY or NEXUS_API_KEY_FILE, not both")
    if env.get("NEXUS_API_KEY"):
        value = env["NEXUS_API_KEY"].strip()
        if not value or any(ch.isspace() for ch in value):
            raise ConfigError("NEXUS_API_KEY: empty or contains white space")
        return _secret(value, "NEXUS_API_KEY")
    if env.get("NEXUS_API_KEY_FILE"):
        return read_secret_file(env["NEXUS_API_KEY_FILE"], "NEXUS_API_KEY_FILE")
    return None


def _accounts(env: Mapping[str, str], data: Mapping[str, Any], base: Path, where: str,
              ) -> tuple[AccountConfig, ...]:
    """The file's ``[[accounts]]``, or the one account of the environment's key."""
    defaults = _load(AccountConfig, env, {"": data}, base)
    env_key = _env_key(env)
    tables = data.get("accounts", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: 'accounts' must be an array of tables ([[accounts]])")
    accounts: list[AccountConfig] = []
    for index, table in enumerate(tables):
        label = f"{where}: accounts[{index}]"
        _check_keys(table, _keys(AccountConfig) | {"name", "api_key_file", "api_key_env"},
                    label)
        name = text(table.get("name"), f"{label}.name")
        key: Secret | None = None
        if "api_key_file" in table:
            key = read_secret_file(base / _path(table["api_key_file"], f"{label}.api_key_file"),
                                   f"{label}.api_key_file", given=str(table["api_key_file"]))
        elif "api_key_env" in table:
            var = text(table["api_key_env"], f"{label}.api_key_env")
            if not env.get(var):
                raise ConfigError(f"{label}.api_key_env: the variable {var} is not set")
            key = _secret(env[var].strip(), f"{label}.api_key_env ({var})")
        if env_key is not None and len(tables) == 1:
            key = env_key  # the environment wins
        if key is None:
            raise ConfigError(f"{label}: no key (set api_key_file or api_key_env)")
        own = _load(AccountConfig, env, {"": table}, base, prefix=f"{label}.", defaults=defaults)
        accounts.append(AccountConfig(**(own | {"name": name}), api_key=key))
    if env_key is not None and len(tables) > 1:
        raise ConfigError(f"{where}: NEXUS_API_KEY applies to one account, but {len(tables)} "
                          "are configured; give each its api_key_file or api_key_env")
    if not tables and env_key is not None:
        accounts.append(AccountConfig(**defaults, api_key=env_key))
    names = [a.name for a in accounts]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: account names must be unique, got {names}")
    return tuple(accounts)


def _web(env: Mapping[str, str], serve: Mapping[str, Any], base: Path) -> WebConfig:
    """``serve``'s listen address, credentials and TLS files."""
    token = None
    if env.get("NEXUS_AUDIT_BEARER_TOKEN_FILE") or "bearer_token_file" in serve:
        token_given = env.get("NEXUS_AUDIT_BEARER_TOKEN_FILE", serve.get("bearer_token_file"))
        token = read_secret_file(base / _path(token_given, "bearer_token_file"),
                                 "bearer_token_file", given=str(token_given))
    user = serve.get("basic_auth_user")
    password = None
    if user is not None:
        user = text(user, "serve.basic_auth_user")
        if ":" in user:  # basic auth sends "user:password": a colon ends the user name
            raise ConfigError("serve.basic_auth_user: must not contain ':' (no client could "
                              "log in)", parameter="basic_auth_user")
        if "basic_auth_password_file" not in serve:
            raise ConfigError("serve.basic_auth_user needs serve.basic_auth_password_file")
        given = serve["basic_auth_password_file"]
        password = read_secret_file(base / _path(given, "basic_auth_password_file"),
                                    "basic_auth_password_file", given=str(given))
    cert = serve.get("tls_cert_file")
    key_file = serve.get("tls_key_file")
    if (cert is None) != (key_file is None):
        raise ConfigError("serve: tls_cert_file and tls_key_file go together")
    return WebConfig(
        **_load(WebConfig, env, {"serve": serve}, base),
        bearer_token=token,
        basic_auth_user=user,
        basic_auth_password=password,
        tls_cert_file=base / _path(cert, "tls_cert_file") if cert else None,
        tls_key_file=base / _path(key_file, "tls_key_file") if key_file else None,
    )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and its config file.

    Without any account configured (no key at all), ``accounts`` is empty: commands that
    need one say so themselves, so ``report`` works on a database alone.
    """
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    base = Path.cwd()
    where = "config"
    if env.get("NEXUS_AUDIT_CONFIG"):
        where = env["NEXUS_AUDIT_CONFIG"]
        path = Path(where).expanduser()
        data = load_toml(path)
        base = path.parent
        _check_keys(data, _keys(Settings, AccountConfig) | {"accounts", "serve"}, str(path))
    accounts = _accounts(env, data, base, where)
    serve = data.get("serve", {})
    if not isinstance(serve, dict):
        raise ConfigError(f"{where}: [serve] must be a table")
    _check_keys(serve, _keys(Settings, WebConfig, table="serve") | {
        "bearer_token_file", "basic_auth_user", "basic_auth_password_file", "tls_cert_file",
        "tls_key_file"}, f"{where}: [serve]")
    return Settings(
        **_load(Settings, env, {"": data, "serve": serve}, base),
        accounts=accounts,
        web=_web(env, serve, base),
        from_env=frozenset(name for name, spec in declared(Settings).items()
                           if spec.from_env(env) is not None),
    )
