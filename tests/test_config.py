"""Configuration from the environment and a TOML file; the environment wins."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from nexus_audit.config import (
    DEFAULT_RATE_BUDGET,
    PRODUCTION_API_URL,
    AccountConfig,
    Secret,
    Setting,
    Settings,
    WebConfig,
    declared,
    load_settings,
)
from nexus_audit.domain.tolerance import TotalTolerance
from nexus_audit.domain.values import validate_listen
from nexus_audit.errors import ConfigError, UsageError

KEY = "nx_live_sk_configtest0001"


def test_environment_alone_makes_one_default_account() -> None:
    """NEXUS_API_KEY alone gives the 'default' account on the production URL."""
    settings = load_settings({"NEXUS_API_KEY": KEY})
    (account,) = settings.accounts
    assert account.name == "default"
    assert account.api_url == PRODUCTION_API_URL
    assert account.api_key.reveal() == KEY
    assert account.rate_budget == DEFAULT_RATE_BUDGET


def test_no_key_means_no_accounts() -> None:
    """Without a key there is no account; report still works on the database alone."""
    assert load_settings({}).accounts == ()


def test_secret_never_shows_itself() -> None:
    """Neither repr nor str of a key, nor of settings holding it, reveal the key."""
    settings = load_settings({"NEXUS_API_KEY": KEY})
    assert KEY not in repr(settings)
    assert KEY not in str(Secret(KEY))


def test_key_file_is_read_and_errors_never_quote_it(tmp_path: Path) -> None:
    """NEXUS_API_KEY_FILE is read; unreadable or empty files give a clear ConfigError."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert load_settings({"NEXUS_API_KEY_FILE": str(key_file)}).accounts[0].api_key.reveal() == KEY
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"NEXUS_API_KEY_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_settings({"NEXUS_API_KEY_FILE": str(tmp_path / "empty")})
    (tmp_path / "two").write_text(f"{KEY} other\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"NEXUS_API_KEY_FILE": str(tmp_path / "two")})
    assert KEY not in str(info.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [({"NEXUS_RATE_BUDGET": "lots"}, "NEXUS_RATE_BUDGET"),
     ({"NEXUS_RATE_BUDGET": "0"}, "NEXUS_RATE_BUDGET"),
     ({"NEXUS_RATE_BUDGET": "\u0662\u0665\u0660"}, "NEXUS_RATE_BUDGET"),
     ({"NEXUS_RATE_BUDGET": "1_000"}, "NEXUS_RATE_BUDGET"),
     ({"NEXUS_API_URL": "ftp://x"}, "NEXUS_API_URL"),
     ({"NEXUS_API_KEY": KEY, "NEXUS_API_KEY_FILE": "/x"}, "not both"),
     ({"NEXUS_API_URL": "http://"}, "NEXUS_API_URL: 'http://' is not"),
     ({"NEXUS_API_URL": "http://[::1/v2"}, "NEXUS_API_URL"),
     ({"NEXUS_AUDIT_INTERVAL": "often"}, "NEXUS_AUDIT_INTERVAL"),
     ({"NEXUS_AUDIT_BUCKET_INTERVAL": "0s"}, "NEXUS_AUDIT_BUCKET_INTERVAL"),
     ({"NEXUS_AUDIT_LISTEN": "nowhere"}, "NEXUS_AUDIT_LISTEN")],
)
def test_bad_environment_names_the_setting(env: dict[str, str], message: str) -> None:
    """Each bad value is a usage error that names what to fix."""
    with pytest.raises(UsageError, match=message):
        load_settings(env)


def test_toml_accounts_and_environment_precedence(tmp_path: Path) -> None:
    """The file configures accounts; NEXUS_RATE_BUDGET and NEXUS_API_URL override it."""
    (tmp_path / "prod.key").write_text("nx_live_sk_prod")
    config = tmp_path / "nexus.toml"
    config.write_text(
        'db = "hist.duckdb"\ninterval = "30m"\n\n'
        '[[accounts]]\nname = "prod"\napi_key_file = "prod.key"\nrate_budget = 100\n\n'
        '[[accounts]]\nname = "dev"\napi_key_env = "DEV_KEY"\n'
        'api_url = "http://127.0.0.1:1/v2"\n'
    )
    settings = load_settings({"NEXUS_AUDIT_CONFIG": str(config), "DEV_KEY": "nx_dev_key"})
    prod, dev = settings.accounts
    assert (prod.name, prod.rate_budget, prod.api_key.reveal()) == ("prod", 100, "nx_live_sk_prod")
    assert dev.api_url == "http://127.0.0.1:1/v2"
    assert settings.db_path == tmp_path / "hist.duckdb"
    assert settings.interval.total_seconds() == 1800
    overridden = load_settings({"NEXUS_AUDIT_CONFIG": str(config), "DEV_KEY": "nx_dev_key",
                                "NEXUS_RATE_BUDGET": "50", "NEXUS_API_URL": "http://h/v2"})
    assert {a.rate_budget for a in overridden.accounts} == {50}
    assert {a.api_url for a in overridden.accounts} == {"http://h/v2"}
    assert settings.account("dev") == (dev,)
    with pytest.raises(UsageError, match="unknown account 'qa'"):
        settings.account("qa")


@pytest.mark.parametrize(
    ("text", "message"),
    [("db = [", "invalid TOML"),
     ("colour = 'blue'", "unknown setting"),
     ("[[accounts]]\nname = 'a'\n", "no key"),
     ("[[accounts]]\nname = 'a'\napi_key_env = 'NOPE'\n", "NOPE is not set"),
     ("accounts = 3", "array of tables"),
     ("[serve]\ntls_cert_file = 'c.pem'\n", "go together"),
     ("[serve]\nper_bucket_metrics = 'maybe'\n", "true or false"),
     ("request_timeout = -1", "request_timeout"),
     ("[serve]\nbasic_auth_user = 'ops:team'\nbasic_auth_password_file = 'pw'\n",
      "basic_auth_user: must not contain ':'")],
)
def test_broken_config_file_gives_a_precise_error(tmp_path: Path, text: str, message: str) -> None:
    """A config file with a mistake names the mistake."""
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings({"NEXUS_AUDIT_CONFIG": str(config)})


def test_several_accounts_refuse_a_global_key(tmp_path: Path) -> None:
    """NEXUS_API_KEY is ambiguous with several accounts configured."""
    config = tmp_path / "c.toml"
    config.write_text('[[accounts]]\nname = "a"\napi_key_env = "K"\n'
                      '[[accounts]]\nname = "b"\napi_key_env = "K"\n')
    with pytest.raises(ConfigError, match="one account"):
        load_settings({"NEXUS_AUDIT_CONFIG": str(config), "K": "x" * 8, "NEXUS_API_KEY": KEY})


@pytest.mark.parametrize(("text", "expected"), [("127.0.0.1:9747", ("127.0.0.1", 9747)),
                                                 ("[::1]:80", ("::1", 80)),
                                                 ("0.0.0.0:0", ("0.0.0.0", 0))])
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT parses, IPv6 in brackets included."""
    assert validate_listen(text) == expected


@pytest.mark.parametrize("text", ["9747", "host:", ":80", "h:99999", "h:port",
                                  "h:\u0669\u0667\u0664\u0667"])
def test_bad_listen_addresses(text: str) -> None:
    """Malformed listen addresses are usage errors."""
    with pytest.raises(UsageError):
        validate_listen(text)


def test_the_readme_example_configuration_loads(tmp_path: Path) -> None:
    """The configuration file shown in the README is accepted as written (its secret files
    moved into a temp dir), with every setting it names taking effect."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("A configuration file for several accounts:", 1)[1]
    toml = example.split("```toml\n", 1)[1].split("```", 1)[0]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("cloudnexus-prod", "nexus-audit-token"):
        (secrets / name).write_text(KEY + "\n", encoding="utf-8")
    config = tmp_path / "nexus-audit.toml"
    config.write_text(toml.replace("/run/secrets/", f"{secrets}/"), encoding="utf-8")
    settings = load_settings({"NEXUS_AUDIT_CONFIG": str(config),
                              "CLOUDNEXUS_STAGING_KEY": KEY})
    assert [a.name for a in settings.accounts] == ["prod", "staging"]
    assert [a.rate_budget for a in settings.accounts] == [250, 100]
    assert settings.request_timeout == 30.0
    assert settings.pricing_file == tmp_path / "prices.toml"


def test_crawl_limits_from_file_and_environment(tmp_path: Path) -> None:
    """total_tolerance, max_response_bytes and max_server_wait have documented defaults,
    come from the file or the environment (which wins), and bad values name the setting."""
    defaults = load_settings({})
    assert defaults.total_tolerance == TotalTolerance(records=10, percent=1.0)
    assert defaults.total_tolerance.records_for(300) == 10
    assert defaults.total_tolerance.records_for(100_000) == 1000
    assert defaults.max_response_bytes == 64 * 1024 * 1024
    assert defaults.max_server_wait.total_seconds() == 120
    config = tmp_path / "c.toml"
    config.write_text('total_tolerance = "2%"\nmax_response_bytes = 1048576\n'
                      'max_server_wait = "5m"\n')
    settings = load_settings({"NEXUS_AUDIT_CONFIG": str(config)})
    assert settings.total_tolerance == TotalTolerance(records=0, percent=2.0)
    assert settings.max_response_bytes == 1048576
    assert settings.max_server_wait.total_seconds() == 300
    env = {"NEXUS_AUDIT_CONFIG": str(config), "NEXUS_AUDIT_TOTAL_TOLERANCE": "25, 0.5%",
           "NEXUS_AUDIT_MAX_SERVER_WAIT": "30s"}
    overridden = load_settings(env)
    assert overridden.total_tolerance == TotalTolerance(records=25, percent=0.5)
    assert str(overridden.total_tolerance) == "25,0.5%"
    assert overridden.max_server_wait.total_seconds() == 30
    for bad in ("ten", "1%,2%", "-5", "150%", "\u0661%"):
        with pytest.raises(ConfigError, match="NEXUS_AUDIT_TOTAL_TOLERANCE"):
            load_settings({"NEXUS_AUDIT_TOTAL_TOLERANCE": bad})
    with pytest.raises(ConfigError, match="NEXUS_AUDIT_MAX_RESPONSE_BYTES"):
        load_settings({"NEXUS_AUDIT_MAX_RESPONSE_BYTES": "0"})


def test_shutdown_grace_defaults_to_ten_seconds_and_parses_durations() -> None:
    """The grace is 10s unless NEXUS_AUDIT_SHUTDOWN_GRACE says otherwise (0 allowed, an
    empty variable is unset); a bad one is a one-line error naming the variable."""
    def grace(value: str | None) -> float:
        env = {} if value is None else {"NEXUS_AUDIT_SHUTDOWN_GRACE": value}
        return load_settings(env).shutdown_grace.total_seconds()

    assert (grace(None), grace(" "), grace("1m"), grace("0"), grace(" 0s ")) == (
        10.0, 10.0, 60.0, 0.0, 0.0)
    with pytest.raises(ConfigError) as info:
        load_settings({"NEXUS_AUDIT_SHUTDOWN_GRACE": "later"})
    assert str(info.value) == ("NEXUS_AUDIT_SHUTDOWN_GRACE: 'later' is not a duration "
                               "(use e.g. 45s, 90m, 12h, 30d, 2w)")


def test_declared_defaults_are_the_only_defaults() -> None:
    """Settings loaded from nothing equal the dataclasses' own defaults: the loader adds
    no default of its own, and an empty path or shard variable counts as unset while an
    empty interval is refused."""
    assert load_settings({}) == Settings()
    blank = {"NEXUS_AUDIT_DB": "", "NEXUS_AUDIT_PRICING": " ", "NEXUS_AUDIT_SHARD": ""}
    assert load_settings(blank) == Settings()
    with pytest.raises(ConfigError, match="NEXUS_AUDIT_INTERVAL"):
        load_settings({"NEXUS_AUDIT_INTERVAL": ""})


def test_maximums_name_where_the_value_came_from(tmp_path: Path) -> None:
    """A value above its declared maximum is refused, naming the variable, the file's key
    or the account's key that gave it."""
    with pytest.raises(ConfigError) as info:
        load_settings({"NEXUS_RATE_BUDGET": "1000001"})
    assert str(info.value) == "NEXUS_RATE_BUDGET: 1000001 is above the maximum of 1000000"
    config = tmp_path / "c.toml"
    config.write_text("[serve]\nreport_concurrency = 65\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"NEXUS_AUDIT_CONFIG": str(config)})
    assert str(info.value) == "serve.report_concurrency: 65 is above the maximum of 64"
    config.write_text('[[accounts]]\nname = "a"\napi_key_env = "K"\nrate_budget = 2000000\n')
    with pytest.raises(ConfigError) as info:
        load_settings({"NEXUS_AUDIT_CONFIG": str(config), "K": KEY})
    assert str(info.value) == (f"{config}: accounts[0].rate_budget: 2000000 is above the "
                               "maximum of 1000000")
    assert load_settings({"NEXUS_AUDIT_REPORT_CONCURRENCY": "64"}).report_concurrency == 64


def test_account_name_of_the_environment_key() -> None:
    """NEXUS_ACCOUNT names the environment's account; empty, it is 'default'."""
    assert load_settings({"NEXUS_API_KEY": KEY, "NEXUS_ACCOUNT": "prod"}).accounts[0].name == (
        "prod")
    assert load_settings({"NEXUS_API_KEY": KEY, "NEXUS_ACCOUNT": ""}).accounts[0].name == (
        "default")


#: Every variable and TOML key that configures nexus-audit: a contract (deployments,
#: compose files and Helm values name them), so a change here is a breaking change.
VARIABLES = {
    "NEXUS_ACCOUNT", "NEXUS_API_URL", "NEXUS_RATE_BUDGET", "NEXUS_AUDIT_LISTEN",
    "NEXUS_AUDIT_DB", "NEXUS_AUDIT_INTERVAL", "NEXUS_AUDIT_BUCKET_INTERVAL",
    "NEXUS_AUDIT_PRICING", "NEXUS_AUDIT_POLICY", "NEXUS_AUDIT_TOTAL_TOLERANCE",
    "NEXUS_AUDIT_MAX_RESPONSE_BYTES", "NEXUS_AUDIT_MAX_SERVER_WAIT",
    "NEXUS_AUDIT_REPORT_CONCURRENCY", "NEXUS_AUDIT_SHUTDOWN_GRACE", "NEXUS_AUDIT_SHARD",
}
KEYS = {
    "api_url", "rate_budget", "db", "interval", "bucket_interval", "max_gap", "stale_after",
    "pending_stale_after", "pricing", "policy", "request_timeout", "total_tolerance",
    "max_response_bytes", "max_server_wait", "serve.listen", "serve.per_instance_metrics",
    "serve.per_bucket_metrics", "serve.report_concurrency",
}


def _declared() -> list[Setting]:
    return [s for cls in (Settings, WebConfig, AccountConfig) for s in declared(cls).values()]


def _file_name(spec: Setting) -> str:
    return f"{spec.table}.{spec.key}" if spec.table else str(spec.key)


def test_the_declared_variables_and_keys_are_the_contract() -> None:
    """The declarations name exactly the variables and keys users rely on."""
    assert {s.env for s in _declared() if s.env} == VARIABLES
    assert {_file_name(s) for s in _declared() if s.key} == KEYS


def _readme_configuration() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    return readme.split("### Configuration", 1)[1].split("\n### ", 1)[0]


def test_every_setting_is_documented_with_its_default() -> None:
    """README's "Configuration" names each declared variable in its table and each TOML
    key in its example file (in the right table), and every default its table states in
    code style is the declared default, read by the setting's own parser."""
    section = _readme_configuration()
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 3:
            for name, default in zip(cells[0].split(" / "), cells[2].split(" / "), strict=False):
                rows[name.strip("`")] = default
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    top, _, serve = example.partition("[serve]\n")
    serve = serve.split("\n[", 1)[0]
    for cls in (Settings, WebConfig, AccountConfig):
        for field_name, spec in declared(cls).items():
            if spec.env:
                assert spec.env in rows, f"{spec.env} is not in README's Configuration table"
                stated = re.match(r"`([^`]+)`", rows[spec.env])
                default = next(f.default for f in fields(cls) if f.name == field_name)
                if stated:
                    assert spec.parse(stated[1], spec.env) == default, spec.env
            if spec.key:
                text = serve if spec.table == "serve" else top
                assert re.search(rf"^(# )?{spec.key} = ", text, re.MULTILINE), (
                    f"{_file_name(spec)} is not in README's example configuration")
