"""Archive logic without a server: targets, metadata, digest checks, bucket refusal, tampering."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aioresponses import aioresponses

from nexus_audit.api import ApiStats, CloudNexusClient, RateBudget, RetryPolicy
from nexus_audit.api.client import Reply
from nexus_audit.config import AccountConfig, Secret
from nexus_audit.domain.timeutil import FakeClock, Window
from nexus_audit.errors import UsageError
from nexus_audit.history.store import AccountState
from nexus_audit.output.archive import (
    Digest,
    ExposedBucketError,
    IntegrityError,
    Target,
    bucket_verdict,
    check_bucket,
    parse_retention,
    report_metadata,
    upload_report,
    verify_reply,
)
from tests.test_store import bucket

URL = "https://api.example.test/v2"
WINDOW = Window(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC))
BODY = b'{"report": true}\n'


def state(account: str, *buckets: tuple[str, str]) -> AccountState:
    """An account whose latest bucket crawl saw ``(id, access)`` pairs."""
    return AccountState(account=account, instances=(), last_crawl={}, last_success={},
                        buckets=tuple(bucket(b, access=a) for b, a in buckets),
                        instances_as_of=None, crawls_by_status={"succeeded": 1},
                        buckets_as_of=datetime(2026, 3, 30, tzinfo=UTC))


def answer(data: bytes = BODY, *, etag: str | None = None,
           content_hash: str | None = None) -> dict[str, object]:
    """What CloudNexus answers for ``data`` (fields overridable to tamper)."""
    return {"bucket": "bk", "key": "k", "size": len(data),
            "etag": etag or hashlib.md5(data, usedforsecurity=False).hexdigest(),
            "content_hash": content_hash or "sha256:" + hashlib.sha256(data).hexdigest()}


def test_target_and_retention_parsing() -> None:
    """BUCKET/KEY keeps slashes in the key; malformed targets and retentions are usage errors."""
    assert Target.parse("bk_ev/audit/2026/03.json") == Target("bk_ev", "audit/2026/03.json")
    for bad in ("bk_ev", "/key", "bk_ev/", "bk/dir/", ""):
        with pytest.raises(UsageError, match="BUCKET/KEY"):
            Target.parse(bad)
    assert parse_retention(" 400D ") == "400d"
    with pytest.raises(UsageError, match="--retention"):
        parse_retention("forever")


def test_digest_of_file_equals_digest_of_bytes(tmp_path: Path) -> None:
    """A file is digested block by block to the same values as its bytes."""
    data = bytes(range(256)) * 9000
    path = tmp_path / "r.bin"
    path.write_bytes(data)
    assert Digest.of(path) == Digest.of(data)
    assert Digest.of(data).content_hash == "sha256:" + hashlib.sha256(data).hexdigest()
    assert Digest.of(b"").size == 0


def test_metadata() -> None:
    """The metadata names the category, retention, format, window and body's SHA-256."""
    meta = report_metadata(fmt="csv", retention="400d", window=WINDOW, sha256="ab",
                           accounts=["acme"])
    assert meta == {"category": "audit-report", "retention": "400d", "format": "csv",
                    "window": {"since": "2026-03-01T00:00:00Z", "until": "2026-03-31T00:00:00Z"},
                    "sha256": "ab", "accounts": ["acme"]}


def test_verify_reply() -> None:
    """Matching digests pass; any differing or missing ETag or hash fails loudly."""
    digest = Digest.of(BODY)
    ok = Reply(answer(), {"ETag": f'"{digest.md5}"'})
    assert verify_reply(ok, digest, "upload") == (digest.md5, digest.content_hash)
    bad = [
        Reply(answer(etag="0" * 32), {}),
        Reply(answer(), {"ETag": '"' + "0" * 32 + '"'}),
        Reply(answer(content_hash="sha256:" + "0" * 64), {}),
        Reply({"content_hash": digest.content_hash}, {}),
        Reply({"etag": digest.md5}, {}),
        Reply({**answer(), "size": 1}, {}),
    ]
    for reply in bad:
        with pytest.raises(IntegrityError, match="do not match"):
            verify_reply(reply, digest, "upload")


def test_bucket_refusal_rules() -> None:
    """Exposed (any non-private access) is refused; unknown is allowed with a warning."""
    states = [state("acme", ("bk-priv", "private"), ("bk-pub", "public-read"),
                    ("bk-odd", "Authenticated-Read")), state("beta", ("bk-x", "public"))]
    assert bucket_verdict(states, "acme", "bk-priv") == ("private", "private")
    for name in ("bk-pub", "bk-odd"):
        with pytest.raises(ExposedBucketError, match="evidence must not leak"):
            check_bucket(states, "acme", name)
    assert check_bucket(states, "acme", "bk-x") == "unknown"  # beta's bucket, not acme's
    assert check_bucket([], "acme", "bk-priv") == "unknown"


@pytest.fixture
async def client() -> AsyncIterator[CloudNexusClient]:
    """A client against a mocked URL, fast retries on a fake clock."""
    clock = FakeClock()
    account = AccountConfig(name="acme", api_url=URL, api_key=Secret("nx_test_sk_secret"))
    async with aiohttp.ClientSession() as session:
        yield CloudNexusClient(account, session, RateBudget(1000, clock=clock),
                               stats=ApiStats(), clock=clock,
                               policy=RetryPolicy(max_retries=1, base_delay=0.0))


async def test_tampered_answer_fails_loudly(client: CloudNexusClient) -> None:
    """An answer whose content hash is not our body's raises IntegrityError (nothing claimed)."""
    digest = Digest.of(BODY)
    with aioresponses() as mock:
        mock.put(re.compile(r".*/objects/bk/k$"), status=200,
                 payload=answer(content_hash="sha256:" + "f" * 64),
                 headers={"ETag": f'"{digest.md5}"'})
        with pytest.raises(IntegrityError) as info:
            await upload_report(client, [], account="acme", target=Target("bk", "k"),
                                body=BODY, fmt="json", window=WINDOW)
    assert "content_hash sha256:fff" in str(info.value)
    assert "nx_test_sk_secret" not in str(info.value)


async def test_exposed_bucket_sends_nothing(client: CloudNexusClient) -> None:
    """A bucket the latest crawl saw public is refused before any request."""
    with aioresponses() as mock:
        with pytest.raises(ExposedBucketError):
            await upload_report(client, [state("acme", ("bk", "public"))], account="acme",
                                target=Target("bk", "k"), body=BODY, fmt="json",
                                window=WINDOW)
        assert mock.requests == {}
    assert client.stats.total_requests == 0
