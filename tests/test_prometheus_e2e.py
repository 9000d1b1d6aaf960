"""A real Prometheus scraping a real ``nexus-audit serve`` against the simulator, with churn.

This is what proves the Grafana dashboards (Grafana itself cannot run here): every query of
every panel of every dashboard is evaluated through Prometheus' HTTP API with the template
variables set to values the variable queries really return, and none may fail or come back
empty. It also proves that the live exposition passes ``promtool check metrics``, that the
NexusPublicBucketAppeared alert of the real rules file fires when a bucket turns public,
and that the image's HEALTHCHECK command passes against the real /healthz.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from nexus_audit.simulator import SimulatorConfig, SimulatorThread
from tests.prom_fixtures import (
    PANEL_COUNTS,
    PrometheusServer,
    answers,
    dashboard_targets,
    http_get,
    listening_port,
    load_dashboards,
    stop_process,
    wait_for,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "rules" / "nexus-audit.rules.yml"
#: Grafana's built-in interval variables, as concrete durations covering the whole test.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
DEADLINE = 45.0  # seconds for the fleet to show up everywhere; the test takes ~20


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's interval variables and the template variables replaced."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    for name, value in variables.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def variable_values(prom: PrometheusServer, query: str, variables: dict[str, str]) -> list[str]:
    """Evaluate a Grafana ``label_values(selector, label)`` variable query in Prometheus."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, f"not a label_values query: {query}"
    selector, label = substitute(match.group(1), variables), match.group(2)
    values: list[str] = prom.api(f"label/{label}/values", **{"match[]": selector})
    return values


@pytest.fixture
def simulator_fleet() -> Iterator[SimulatorThread]:
    """A simulator (its own thread, free port) with a small seeded fleet; no random faults."""
    sim = SimulatorThread(SimulatorConfig(instances=80, buckets=16, seed=11))
    sim.start_thread()
    try:
        yield sim
    finally:
        sim.stop_thread()


@pytest.fixture
def serve(
    simulator_fleet: SimulatorThread, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``nexus-audit serve`` crawling the simulator every second or two, on a free port,
    with a policy (so nexus_findings has data; every public bucket's exception expired)."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[baseline]\nrequired_tags = ["team"]\n[[exceptions]]\nbucket = "*"\n'
                      'reason = "e2e"\nowner = "e2e"\nexpires = 2020-01-01\n', encoding="utf-8")
    env = {**os.environ, "NEXUS_API_URL": simulator_fleet.url, "NEXUS_AUDIT_POLICY": str(policy),
           "NEXUS_API_KEY": simulator_fleet.key, "NEXUS_AUDIT_DB": str(tmp_path / "e2e.duckdb"),
           "NEXUS_RATE_BUDGET": "6000", "NEXUS_AUDIT_SHUTDOWN_GRACE": "2s"}
    for name in ("NEXUS_API_KEY_FILE", "NEXUS_AUDIT_CONFIG", "NEXUS_AUDIT_LISTEN"):
        env.pop(name, None)
    log = (tmp_path / "serve.log").open("w", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexus_audit", "serve", "--listen", "127.0.0.1:0",
         "--interval", "2s", "--bucket-interval", "1s"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        port = listening_port(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{url}/readyz"), timeout=DEADLINE,
                 what="serve /readyz", proc=proc)
        yield url, proc
    finally:
        stop_process(proc)
        log.close()


def empty_or_failing(prom: PrometheusServer, exprs: Sequence[tuple[str, str]]) -> list[str]:
    """The panels whose query comes back empty (an API error fails the test at once)."""
    return [f"{title}: {expr}" for title, expr in exprs if not prom.query(expr)]


def firing(prom: PrometheusServer, alertname: str, **labels: str) -> dict[str, Any] | None:
    """The firing alert ``alertname`` with ``labels``, if Prometheus has one."""
    for alert in prom.api("alerts")["alerts"]:
        if (alert["labels"].get("alertname") == alertname and alert["state"] == "firing"
                and all(alert["labels"].get(k) == v for k, v in labels.items())):
            found: dict[str, Any] = alert
            return found
    return None


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    simulator_fleet: SimulatorThread,
    serve: tuple[str, subprocess.Popen[str]],
    start_prometheus: Callable[[Sequence[str], Sequence[Path]], PrometheusServer],
    promtool: str,
    tmp_path: Path,
) -> None:
    """With variables set to real values, every panel query of every dashboard returns
    data; the exposition passes promtool; a bucket turning public fires the alert."""
    sim = simulator_fleet
    url, serve_proc = serve
    prom = start_prometheus([url.removeprefix("http://")], [RULES])

    def scraped() -> bool | None:
        result = prom.query('count_over_time(nexus_audit_build_info{job="nexus-audit"}[1m])')
        return (bool(result) and float(result[0]["value"][1]) >= 3) or None

    wait_for(scraped, timeout=DEADLINE, what="three scrapes of serve", proc=prom.proc)

    # The region with buckets and the most running instances; a private bucket there turns
    # public, and the API answers one 429 and one 500 (each retried) to show in the panels.
    fleet = sim.fleet
    bucket_regions = {b.region for b in fleet.query_buckets()}
    running = [i.region for i in fleet.query_instances() if i.status == "running"]
    region = max(sorted(bucket_regions), key=running.count)
    exposed = next(b for b in fleet.query_buckets()
                   if b.region == region and b.access == "private")
    sim.set_bucket_access(exposed.id, "public")
    sim.faults.script("429", path="/v2/buckets*", times=1, retry_after=1)
    sim.faults.script("500", path="/v2/instances*", times=1)

    # Churn: a few seeded steps of creates, stops, deletes and flips, until the change is
    # visible in Prometheus (the instance counts moved).
    def churned() -> bool | None:
        sim.churn_step()
        result = prom.query("sum(changes(nexus_instances[5m]))")
        return (bool(result) and float(result[0]["value"][1]) > 0) or None

    wait_for(churned, timeout=DEADLINE, what="churn to show in Prometheus", poll=1.0)
    # The churn may flip our bucket back; it must stay public for the alert to fire.
    sim.set_bucket_access(exposed.id, "public")

    alert = wait_for(lambda: firing(prom, "NexusPublicBucketAppeared", bucket=exposed.id),
                     timeout=DEADLINE, what="NexusPublicBucketAppeared to fire",
                     proc=prom.proc)
    assert alert["labels"]["access"] == "public"
    assert alert["labels"]["region"] == region
    assert alert["labels"]["severity"] == "critical"

    boards = load_dashboards()
    variables = boards["security"]["templating"]["list"]
    account_query = next(v for v in variables if v["name"] == "account")["query"]["query"]
    region_query = next(v for v in variables if v["name"] == "region")["query"]["query"]
    accounts = variable_values(prom, account_query, {})
    assert accounts == ["default"]
    chosen = {"account": accounts[0]}
    assert region in variable_values(prom, region_query, chosen)
    chosen["region"] = region

    exprs = [(f"{name} / {title}", substitute(expr, chosen))
             for name, board in boards.items() for title, expr in dashboard_targets(board)]
    assert len(exprs) == sum(targets for _, targets in PANEL_COUNTS.values())
    missing: list[str] = []

    def all_have_data() -> bool | None:
        missing[:] = empty_or_failing(prom, exprs)
        return not missing or None

    try:
        wait_for(all_have_data, timeout=DEADLINE, what="data in every panel", poll=1.0)
    except pytest.fail.Exception:
        pytest.fail("panels without data:\n" + "\n".join(missing))

    # The live exposition, checked by promtool's linter.
    status, body = http_get(f"{url}/metrics")
    assert status == 200
    lint = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                          text=True, timeout=60, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr

    # The image's HEALTHCHECK command against the real /healthz.
    healthcheck = _healthcheck_command()
    probe = subprocess.run([sys.executable, *healthcheck[1:]], capture_output=True, timeout=30,
                           env={**os.environ, "NEXUS_AUDIT_LISTEN": url.removeprefix("http://")},
                           check=False)
    assert probe.returncode == 0, probe.stderr

    # serve stops cleanly on SIGTERM.
    stop_process(serve_proc, sig=signal.SIGTERM)
    assert serve_proc.returncode == 0


def _healthcheck_command() -> list[str]:
    """The exec-form HEALTHCHECK command of the Dockerfile."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text.replace("\\\n", " "),
                      flags=re.MULTILINE)
    assert match, "no exec-form HEALTHCHECK in the Dockerfile"
    command: list[str] = json.loads(match.group(1))
    return command


def test_substitute_replaces_every_variable() -> None:
    """Template and interval variables become concrete values; a leftover one is an error."""
    expr = 'sum(rate(x{account=~"$account", region=~"${region}"}[$__rate_interval]))'
    assert substitute(expr, {"account": "prod", "region": "eu-west-1"}) == (
        'sum(rate(x{account=~"prod", region=~"eu-west-1"}[1m]))')
    with pytest.raises(AssertionError):
        substitute('x{account=~"$account"}', {})
