"""A real ``nexus-audit serve`` process against the simulator, over loopback.

Each test waits for what it needs by polling with a deadline, never by sleeping a fixed
time; every process is stopped by its pid (the ``start_serve`` fixture).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus_audit.history.store import Store
from nexus_audit.simulator import FaultKind, SimulatorThread
from tests.ci import skip_or_fail
from tests.serve_fixtures import ServeProcess, StartServe, wait_until

CHANGE_TIMEOUT = 20.0
#: The backstop of a held API answer: tests release it as soon as they are done, and it
#: stays below the client's 30 s request timeout (a held answer is never retried).
HOLD = 25.0


def samples(serve: ServeProcess, headers: dict[str, str] | None = None
            ) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The scrape's samples by name."""
    status, _, body = serve.get("/metrics", headers)
    assert status == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(serve: ServeProcess, name: str, **match: str) -> float:
    """The sum of ``name``'s samples whose labels include ``match``."""
    return sum(value for labels, value in samples(serve).get(name, [])
               if all(labels.get(k) == v for k, v in match.items()))


def test_metrics_appear_after_the_first_crawl_and_follow_churn(
        serve_sim: SimulatorThread, start_serve: StartServe) -> None:
    """After the first crawls /metrics shows the fleet; deletions and exposures show up next."""
    serve = start_serve(serve_sim)
    serve.wait_ready()
    assert total(serve, "nexus_instances", account="default") == 120
    assert total(serve, "nexus_buckets", account="default") == 12
    assert total(serve, "nexus_audit_crawl_success", kind="instances") == 1
    assert total(serve, "nexus_audit_build_info") == 1

    victim = serve_sim.fleet.instance_ids()[0]
    serve_sim.delete_instance(victim)
    private = next(b for b in serve_sim.fleet.query_buckets() if b.access == "private")
    serve_sim.set_bucket_access(private.id, "public")

    wait_until(lambda: True if total(serve, "nexus_instances") == 119 else None,
               timeout=CHANGE_TIMEOUT, what="the deleted instance to leave the metrics")
    wait_until(lambda: True if total(serve, "nexus_bucket_public", bucket=private.id) == 1
               else None, timeout=CHANGE_TIMEOUT, what="the bucket to show as public")
    assert total(serve, "nexus_audit_crawls_total", kind="buckets", status="succeeded") >= 2


def test_the_key_never_appears_in_responses_or_logs(
        serve_sim: SimulatorThread, start_serve: StartServe) -> None:
    """With the key revoked mid-run, crawls fail and say so, but no output quotes the key."""
    serve = start_serve(serve_sim)
    serve.wait_ready()
    serve_sim.revoke_key()
    wait_until(lambda: True if total(serve, "nexus_audit_crawl_success", kind="buckets") == 0
               else None, timeout=CHANGE_TIMEOUT, what="a failed bucket crawl")
    assert total(serve, "nexus_audit_api_requests_total", code="401") >= 1
    bodies = [serve.get(path)[2] for path in ("/metrics", "/readyz", "/healthz", "/report",
                                              "/report?since=bogus", "/nope")]
    assert serve.stop() == 0
    key = serve_sim.key.encode()
    for body in bodies:
        assert key not in body
    assert serve.events_named("api.error"), "the 401 is logged"
    assert serve_sim.key not in serve.log_text()


def test_bad_report_parameters_are_400_naming_the_parameter(
        serve_sim: SimulatorThread, start_serve: StartServe) -> None:
    """A bad since, until, account or stale_after gets 400 BAD_PARAMETER naming it."""
    serve = start_serve(serve_sim)
    for query, parameter in [("since=yesterday", "since"), ("until=soon", "until"),
                             ("account=nobody", "account"), ("stale_after=-1d", "stale_after"),
                             ("sinse=30d", "sinse")]:
        status, body = serve.get_json(f"/report?{query}")
        assert status == 400, query
        assert body["error"]["code"] == "BAD_PARAMETER"
        assert body["error"]["parameter"] == parameter


def instance_crawls_finished(serve: ServeProcess) -> int:
    """How many instance crawls the process has logged as finished."""
    return len([e for e in serve.events_named("crawl.finished") if e["kinds"] == ["instances"]])


def test_report_answers_while_a_crawl_runs(
        serve_sim: SimulatorThread, start_serve: StartServe) -> None:
    """/report is served while an instance crawl is held on an API answer (until the test
    releases it; the crawl then finishes)."""
    serve = start_serve(serve_sim)
    serve.wait_ready()
    slow = serve_sim.faults.script(FaultKind.SLOW, path="/v2/instances", seconds=HOLD)
    try:
        wait_until(lambda: True if slow.fired else None, timeout=CHANGE_TIMEOUT,
                   what="an instance crawl to reach the held answer")
        finished_before = instance_crawls_finished(serve)
        status, report = serve.get_json("/report?since=1h")
        assert status == 200
        assert report["inventory"]["instances"]["total"] == 120
        assert instance_crawls_finished(serve) == finished_before, "the held crawl finished"
    finally:
        slow.release()
    wait_until(lambda: True if instance_crawls_finished(serve) > finished_before else None,
               timeout=CHANGE_TIMEOUT, what="the released crawl to finish")


def is_json(line: str) -> bool:
    """Whether a log line is one JSON object."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def crawl_rows(db: Path) -> list[tuple[int, list[str], str]]:
    """Every crawl row of the database: id, kinds, status."""
    with Store(db).read() as con:
        return [(int(c), list(k), s) for c, k, s in con.execute(
            "SELECT crawl_id, kinds, status FROM crawls ORDER BY crawl_id").fetchall()]


def test_sigterm_during_a_crawl_abandons_it_and_commits_nothing_of_it(
        serve_sim: SimulatorThread, start_serve: StartServe, tmp_path: Path) -> None:
    """SIGTERM with a crawl held past the grace: exit 0, the crawl leaves no trace."""
    serve = start_serve(serve_sim, env={"NEXUS_AUDIT_SHUTDOWN_GRACE": "1s"})
    serve.wait_ready()
    slow = serve_sim.faults.script(FaultKind.SLOW, path="/v2/instances", seconds=HOLD)
    try:
        wait_until(lambda: True if slow.fired else None, timeout=CHANGE_TIMEOUT,
                   what="an instance crawl to reach the held answer")
        # The answer stays held until after the exit: the crawl cannot finish in time.
        assert serve.stop(signal.SIGTERM) == 0
    finally:
        slow.release()
    assert serve.events_named("crawl.abandoned")
    logged = [e for e in serve.events_named("crawl.finished") if e["status"] == "succeeded"]
    rows = crawl_rows(tmp_path / "serve.duckdb")
    assert {status for _, _, status in rows} <= {"succeeded", "failed"}
    # Every committed crawl is one that finished; the abandoned one is not among them.
    assert len(rows) == len(serve.events_named("crawl.finished"))
    assert sum(1 for _, _, status in rows if status == "succeeded") == len(logged)
    assert not list(tmp_path.glob("*.staging-*")), "no staging file is left behind"
    # The log stays JSON lines: no plain-text traceback of the cancelled job.
    assert serve.lines
    assert all(is_json(line) for line in serve.lines), serve.log_text()
    assert not [e for e in serve.events if e.get("level") == "error"], serve.log_text()


def test_sigterm_lets_a_crawl_in_progress_finish_within_the_grace(
        serve_sim: SimulatorThread, start_serve: StartServe, tmp_path: Path) -> None:
    """SIGINT while a crawl waits on the API: the answer comes only after the process
    logged that it is stopping, the crawl finishes and commits, then exit 0."""
    serve = start_serve(serve_sim, env={"NEXUS_AUDIT_SHUTDOWN_GRACE": "20s"})
    serve.wait_ready()
    slow = serve_sim.faults.script(FaultKind.SLOW, path="/v2/instances", seconds=HOLD)
    try:
        wait_until(lambda: True if slow.fired else None, timeout=CHANGE_TIMEOUT,
                   what="an instance crawl to reach the held answer")
        os.kill(serve.proc.pid, signal.SIGINT)
        wait_until(lambda: True if serve.events_named("serve.stopping") else None,
                   timeout=CHANGE_TIMEOUT, what="serve to begin stopping")
    finally:
        slow.release()
    assert serve.proc.wait(CHANGE_TIMEOUT) == 0
    assert serve.stop() == 0  # already exited: releases the pipe
    assert not serve.events_named("crawl.abandoned")
    events = serve.events
    stopping = next(i for i, e in enumerate(events) if e.get("event") == "serve.stopping")
    assert any(e.get("event") == "crawl.finished" and e["kinds"] == ["instances"]
               for e in events[stopping:]), "the held crawl finished after the signal"
    instance_rows = [r for r in crawl_rows(tmp_path / "serve.duckdb") if r[1] == ["instances"]]
    logged = [e for e in events if e.get("event") == "crawl.finished"
              and e["kinds"] == ["instances"]]
    assert len(instance_rows) == len(logged)
    assert instance_rows[-1][2] == "succeeded"


def test_ctrl_c_on_the_terminal_stops_serve_and_its_workers_without_a_traceback(
        serve_sim: SimulatorThread, start_serve: StartServe) -> None:
    """SIGINT to serve's whole process group (a terminal's Ctrl-C) after a report started
    a worker: exit 0, and the log stays JSON lines, no worker's KeyboardInterrupt."""
    serve = start_serve(serve_sim)
    serve.wait_ready()
    assert serve.get("/report?since=1h")[0] == 200  # a report worker now waits for jobs
    os.killpg(os.getpgid(serve.proc.pid), signal.SIGINT)
    assert serve.proc.wait(CHANGE_TIMEOUT) == 0
    assert serve.stop() == 0  # already exited: releases the pipe
    assert serve.events_named("serve.stopped")
    assert "Traceback" not in serve.log_text()
    assert all(is_json(line) for line in serve.lines), serve.log_text()


def test_sighup_to_the_process_group_reloads_and_leaves_the_workers_alone(
        serve_sim: SimulatorThread, start_serve: StartServe) -> None:
    """SIGHUP to serve's whole process group (a terminal's hangup, ``kill -HUP -PGID``)
    after a report started a worker: serve reloads, the worker lives on, and the next
    report answers (the worker used to die: a 500 and a failed reload)."""
    serve = start_serve(serve_sim)
    serve.wait_ready()
    assert serve.get("/report?since=1h")[0] == 200  # a report worker now waits for jobs
    os.killpg(os.getpgid(serve.proc.pid), signal.SIGHUP)
    wait_until(lambda: serve.events_named("serve.reloaded") or None, timeout=CHANGE_TIMEOUT,
               what="serve.reloaded")
    assert serve.get("/report?since=1h")[0] == 200
    assert serve.stop() == 0
    assert "Traceback" not in serve.log_text()
    assert "WorkerError" not in serve.log_text()


def test_sighup_reloads_the_policy_and_a_broken_file_keeps_it(
        serve_sim: SimulatorThread, start_serve: StartServe, tmp_path: Path) -> None:
    """SIGHUP re-reads the policy: findings follow the new file at once in /metrics and
    /report; a file that no longer loads keeps the policy in force, says why, and serve
    goes on."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[baseline]\nallowed_regions = ["eu-west-1"]\n', encoding="utf-8")
    serve = start_serve(serve_sim, env={"NEXUS_AUDIT_POLICY": str(policy)})
    serve.wait_ready()
    outside = total(serve, "nexus_findings", rule="instance.region")
    assert outside > 0  # the simulator spreads the fleet over eight regions

    # A tag no simulated instance has: every instance breaks the new rule.
    policy.write_text('[baseline]\nrequired_tags = ["nexus-test-owner"]\n', encoding="utf-8")
    serve.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: serve.events_named("serve.reloaded") or None, timeout=CHANGE_TIMEOUT,
               what="serve.reloaded")
    # The reload rebuilt the snapshot before it logged: the region rule is off (no series),
    # the tag rule on.
    rules = {labels["rule"] for labels, _ in samples(serve)["nexus_findings"]}
    assert "instance.region" not in rules
    assert total(serve, "nexus_findings", rule="instance.required_tags") == 120
    _, report = serve.get_json("/report?since=1h")
    assert {f["rule"] for f in report["findings"]} <= {"instance.required_tags",
                                                      "bucket.public",
                                                      "bucket.public_too_large"}

    policy.write_text("[baseline\n", encoding="utf-8")
    serve.proc.send_signal(signal.SIGHUP)
    (failed,) = wait_until(lambda: serve.events_named("serve.reload_failed") or None,
                           timeout=CHANGE_TIMEOUT, what="serve.reload_failed")
    assert str(policy) in failed["error"]
    assert total(serve, "nexus_findings", rule="instance.required_tags") == 120
    assert len(serve.events_named("serve.reloaded")) == 1
    assert serve.stop() == 0


def test_bearer_and_basic_auth_guard_everything_but_healthz(
        serve_sim: SimulatorThread, start_serve: StartServe, tmp_path: Path) -> None:
    """With a token and basic auth configured, either works; nothing else does; /healthz is open."""
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "password").write_text("pass-w0rd\n")
    config = tmp_path / "nexus.toml"
    config.write_text('[serve]\nbearer_token_file = "token"\nbasic_auth_user = "ops"\n'
                      'basic_auth_password_file = "password"\n')
    serve = start_serve(serve_sim, env={"NEXUS_AUDIT_CONFIG": str(config)})
    bearer = {"Authorization": "Bearer s3cret-token"}
    basic = {"Authorization": "Basic " + base64.b64encode(b"ops:pass-w0rd").decode()}
    serve.wait_ready(headers=bearer)
    assert serve.get("/healthz")[0] == 200
    for path in ("/metrics", "/report", "/readyz"):
        status, headers, _ = serve.get(path)
        assert status == 401, path
        assert "Bearer" in headers["WWW-Authenticate"]
        assert serve.get(path, {"Authorization": "Bearer wrong"})[0] == 401
    assert serve.get("/metrics", bearer)[0] == 200
    assert serve.get("/metrics", basic)[0] == 200
    assert serve.get("/report?since=1h", basic)[0] == 200
    assert "s3cret-token" not in serve.log_text()


def test_tls_serves_https_only(serve_sim: SimulatorThread, start_serve: StartServe,
                               tmp_path: Path) -> None:
    """With a certificate and key configured, the endpoints answer over HTTPS (TLS 1.2+)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        skip_or_fail("the openssl binary is not installed")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    config = tmp_path / "nexus.toml"
    config.write_text('[serve]\ntls_cert_file = "cert.pem"\ntls_key_file = "key.pem"\n')
    serve = start_serve(serve_sim, env={"NEXUS_AUDIT_CONFIG": str(config)},
                        tls_cafile=tmp_path / "cert.pem")
    serve.wait_ready()
    assert serve.get("/metrics")[0] == 200
    assert serve.events_named("serve.listening")[0]["tls"] is True
    plain = ServeProcess.__new__(ServeProcess)
    plain.scheme, plain.port, plain.ssl_context = "http", serve.port, None
    with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
        plain.get("/healthz", timeout=5)


@pytest.mark.prometheus
def test_promtool_accepts_the_real_exposition(
        serve_sim: SimulatorThread, start_serve: StartServe, promtool_path: str) -> None:
    """promtool check metrics is clean on what a running serve exposes."""
    serve = start_serve(serve_sim)
    serve.wait_ready()
    _, _, body = serve.get("/metrics")
    result = subprocess.run([promtool_path, "check", "metrics"], input=body,
                            capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.strip() == b""
    assert result.stderr.strip() == b""


def test_serve_without_an_account_exits_2_with_one_line(tmp_path: Path) -> None:
    """No key configured: a one-line usage error and exit 2, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env["NEXUS_AUDIT_DB"] = str(tmp_path / "db.duckdb")
    result = subprocess.run([sys.executable, "-m", "nexus_audit", "serve", "--listen",
                             "127.0.0.1:0"], env=env, capture_output=True, timeout=30,
                            check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert b"no CloudNexus account" in result.stderr


def test_serve_with_a_bad_interval_exits_2(serve_sim: SimulatorThread, tmp_path: Path) -> None:
    """--interval bogus is a usage error naming the flag."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}
    env.update({"NEXUS_API_KEY": serve_sim.key, "NEXUS_API_URL": serve_sim.url,
                "NEXUS_AUDIT_DB": str(tmp_path / "db.duckdb")})
    result = subprocess.run([sys.executable, "-m", "nexus_audit", "serve", "--interval",
                             "soon"], env=env, capture_output=True, timeout=30, check=False,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert b"--interval" in result.stderr
    assert serve_sim.key.encode() not in result.stderr

