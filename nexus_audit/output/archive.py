"""Evidence archive: a rendered report uploaded to CloudNexus object storage, verified.

``PUT /objects/{bucket}/{key}`` carries the body with ``X-Object-Metadata`` (category
``audit-report``, retention, format, window, SHA-256 of the body). CloudNexus answers an
ETag (MD5) and a content hash (SHA-256); both must equal our own digests, or the upload
fails loudly (:class:`IntegrityError`) and nothing is claimed.

Bodies over :data:`MULTIPART_THRESHOLD` (the reference: "multipart uploads for files >
100MB") go up in parts, with the protocol written down in README.md and implemented by
the simulator (``nexus_audit/simulator/multipart.py``). Every request goes through the
client, so uploads share the crawler's rate budget and retry policy; a part that fails
past the retries aborts the upload. Memory stays bounded by one part: parts are read
from the source (bytes or a file) as they are sent.

Evidence must not leak: :func:`check_bucket` refuses a bucket that the account's latest
successful bucket crawl saw exposed (:func:`nexus_audit.domain.exposure.is_exposed`, fail closed on
unknown access values). A bucket no crawl has seen is allowed with a warning: the store
cannot say anything about it, and refusing would block every new evidence bucket until
the next crawl. Run ``nexus-audit crawl --kinds buckets`` first to have it checked.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TextIO

import aiohttp

from nexus_audit.api.budget import RateBudget
from nexus_audit.api.client import ApiStats, CloudNexusClient, Reply, object_path
from nexus_audit.audit.report import Report
from nexus_audit.config import AccountConfig, Settings
from nexus_audit.domain import escape
from nexus_audit.domain.exposure import is_exposed
from nexus_audit.domain.timeutil import Clock, SystemClock, Window, isoformat, parse_duration
from nexus_audit.domain.values import utf8
from nexus_audit.errors import (
    ApiError,
    ConfigError,
    NexusAuditError,
    NoDataError,
    ProtocolError,
    UsageError,
)
from nexus_audit.history.store import AccountState
from nexus_audit.logs import get_logger

log = get_logger(__name__)

#: Content-Type of each report format.
CONTENT_TYPES: Final[Mapping[str, str]] = {
    "json": "application/json",
    "markdown": "text/markdown",
    "csv": "text/csv",
    "table": "text/plain",
    # An evidence bundle (`report --bundle FILE --upload BUCKET/KEY`): a gzip tar archive.
    "bundle": "application/gzip",
}
CATEGORY: Final = "audit-report"
DEFAULT_RETENTION: Final = "400d"
#: Bodies larger than this go up as multipart uploads (100 MiB: the simulator's, and our
#: reading of the reference's, largest single request).
MULTIPART_THRESHOLD: Final = 100 * 1024 * 1024
#: Part size (the protocol wants 8 MiB at least, but the last; at most the threshold).
DEFAULT_PART_SIZE: Final = 16 * 1024 * 1024
MAX_PARTS: Final = 10_000
_READ_BLOCK: Final = 1024 * 1024

Source = bytes | Path


class IntegrityError(NexusAuditError):
    """CloudNexus reported digests that differ from ours: the stored object is not ours."""

    hint = ("do not cite this object as evidence; upload again, and report the request id "
            "to CloudNexus support if it repeats")


class ExposedBucketError(NexusAuditError):
    """The target bucket was exposed at the latest crawl: evidence must not go there."""

    hint = "choose a private bucket, or make this one private and crawl again"


class ObjectClient(Protocol):
    """The part of :class:`~nexus_audit.api.client.CloudNexusClient` uploads use."""

    async def send(self, method: str, path: str, endpoint: str, *,
                   params: Mapping[str, str] | None = None, data: bytes | None = None,
                   headers: Mapping[str, str] | None = None) -> Reply:
        """One request through the budget and the retry policy."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where an object goes: ``BUCKET/KEY``."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str, *, parameter: str = "--upload") -> Target:
        """``BUCKET/KEY`` (the key may hold more slashes); :class:`UsageError` otherwise.

        Dot segments (``.``, ``..``) and empty parts are refused in the bucket and in every
        part of the key: an HTTP client normalises ``/objects/../instances`` into
        ``/instances``, so ``--upload ../instances`` would become ``PUT /v2/instances``.
        """
        # Percent-encoded into the path: a byte the command line could not decode (a
        # lone surrogate) failed there, with a traceback, after the report was printed.
        utf8(text, parameter, UsageError)
        bucket, sep, key = text.strip().partition("/")
        if not sep or not bucket or not key or key.endswith("/"):
            raise UsageError(f"{parameter}: {text!r} is not BUCKET/KEY "
                             "(e.g. bk_evidence/audit/2026-11.json)", parameter=parameter)
        for part in (bucket, *key.split("/")):
            if part in {"", ".", ".."}:
                what = "an empty part" if not part else f"the dot segment {part!r}"
                raise UsageError(f"{parameter}: {text!r} has {what}; bucket and key parts "
                                 "must be names (e.g. bk_evidence/audit/2026-11.json)",
                                 parameter=parameter)
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{self.bucket}/{self.key}"


def parse_retention(text: str) -> str:
    """A retention like ``400d``, validated as a duration and kept as written."""
    parse_duration(text, parameter="--retention")
    return text.strip().lower()


@dataclass(frozen=True, slots=True)
class Digest:
    """Size, MD5 (what ETags are) and SHA-256 of a body."""

    size: int
    md5: str
    sha256: str

    @classmethod
    def of(cls, source: Source) -> Digest:
        """Digest bytes, or a file read block by block."""
        md5 = hashlib.md5(usedforsecurity=False)  # ETags are MD5; not used for security
        sha = hashlib.sha256()
        size = 0
        for block in _blocks(source, _READ_BLOCK):
            md5.update(block)
            sha.update(block)
            size += len(block)
        return cls(size, md5.hexdigest(), sha.hexdigest())

    @property
    def content_hash(self) -> str:
        """The API's form of the SHA-256: ``sha256:<hex>``."""
        return "sha256:" + self.sha256


def _blocks(source: Source, size: int) -> Iterator[bytes]:
    """The source in blocks of ``size`` bytes (the last may be shorter; none if empty)."""
    if isinstance(source, bytes):
        view = memoryview(source)
        for start in range(0, len(view), size):
            yield bytes(view[start:start + size])
        return
    try:
        with source.open("rb") as handle:
            while block := handle.read(size):
                yield block
    except OSError as exc:
        raise NexusAuditError(f"cannot read {source}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class UploadResult:
    """A verified upload: where, how big, and the digests CloudNexus confirmed."""

    target: Target
    size: int
    etag: str
    content_hash: str
    #: Number of parts, 0 for a single request.
    parts: int = 0
    upload_id: str | None = None


# -- pure checks --------------------------------------------------------------------------

BucketVerdict = Literal["private", "exposed", "unknown"]


def bucket_verdict(states: Sequence[AccountState], account: str,
                   bucket: str) -> tuple[BucketVerdict, str | None]:
    """What the account's latest successful bucket crawl saw of ``bucket``, and its access."""
    for state in states:
        if state.account != account:
            continue
        for seen in state.buckets:
            if seen.id == bucket:
                return ("exposed" if is_exposed(seen.access) else "private"), seen.access
    return "unknown", None


def check_bucket(states: Sequence[AccountState], account: str, bucket: str) -> BucketVerdict:
    """Refuse an exposed bucket (:class:`ExposedBucketError`); otherwise the verdict.

    ``"unknown"`` (no bucket crawl has seen it) is the caller's to warn about, once: the
    command checks before it opens a session and :func:`upload_report` checks again.
    """
    verdict, access = bucket_verdict(states, account, bucket)
    if verdict == "exposed":
        as_of = next((s.buckets_as_of for s in states if s.account == account), None)
        raise ExposedBucketError(
            f"refusing to upload evidence to bucket {bucket} of account {account}: the "
            f"latest bucket crawl ({isoformat(as_of)}) saw its access as {access!r} "
            "(anything but exactly 'private' is exposed); evidence must not leak")
    return verdict


def report_metadata(*, fmt: str, retention: str, window: Window, sha256: str,
                    accounts: Sequence[str] = ()) -> dict[str, Any]:
    """``X-Object-Metadata`` of an uploaded report."""
    return {
        "category": CATEGORY,
        "retention": retention,
        "format": fmt,
        "window": {"since": isoformat(window.since), "until": isoformat(window.until)},
        "sha256": sha256,
        "accounts": list(accounts),
    }


def _unquote_etag(value: str) -> str:
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    return text.strip('"').lower()


def verify_reply(reply: Reply, expected: Digest, what: str) -> tuple[str, str]:
    """Check the answer's ETag (header and body) and content hash against ``expected``.

    Returns (etag, content_hash); raises :class:`IntegrityError` on any difference, or
    when the answer carries no ETag or no content hash to check.
    """
    problems = []
    etags = []
    header = reply.headers.get("ETag")
    if header is not None:
        etags.append(("ETag header", _unquote_etag(header)))
    body_etag = reply.payload.get("etag")
    if isinstance(body_etag, str):
        etags.append(("etag", _unquote_etag(body_etag)))
    if not etags:
        problems.append("the answer carries no ETag")
    for label, value in etags:
        if value != expected.md5:
            problems.append(f"{label} {value} != local MD5 {expected.md5}")
    content_hash = reply.payload.get("content_hash")
    if not isinstance(content_hash, str):
        problems.append("the answer carries no content_hash")
    elif content_hash.strip().lower() != expected.content_hash:
        problems.append(f"content_hash {content_hash} != local {expected.content_hash}")
    size = reply.payload.get("size")
    if isinstance(size, int) and size != expected.size:
        problems.append(f"size {size} != local {expected.size} bytes")
    if problems:
        raise IntegrityError(f"{what}: CloudNexus's digests do not match what was sent: "
                             + "; ".join(problems))
    return etags[0][1], expected.content_hash


# -- uploads ------------------------------------------------------------------------------


def _check_part_size(part_size: int, threshold: int) -> None:
    if part_size < 1 or part_size > max(threshold, 1):
        raise UsageError(f"part size {part_size} must be between 1 and the multipart "
                         f"threshold ({threshold} bytes)", parameter="part_size")


async def upload_object(
    client: ObjectClient,
    target: Target,
    source: Source,
    *,
    content_type: str,
    metadata: Mapping[str, Any],
    digest: Digest | None = None,
    threshold: int = MULTIPART_THRESHOLD,
    part_size: int = DEFAULT_PART_SIZE,
) -> UploadResult:
    """Upload ``source`` to ``target`` and verify what CloudNexus stored.

    One ``PUT`` up to ``threshold`` bytes, a multipart upload above it. ``threshold`` and
    ``part_size`` are parameters so tests use small values; the defaults follow the
    reference. Raises :class:`IntegrityError` when the digests differ, and the client's
    :class:`~nexus_audit.errors.ApiError` when a request fails past its retries.
    """
    _check_part_size(part_size, threshold)
    digest = digest or Digest.of(source)
    headers = {
        "Content-Type": content_type,
        "X-Object-Metadata": json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True),
    }
    path = object_path(target.bucket, target.key)
    if digest.size <= threshold:
        body = source if isinstance(source, bytes) else b"".join(_blocks(source, _READ_BLOCK))
        reply = await client.send("PUT", path, "PUT /objects", data=body, headers=headers)
        etag, content_hash = verify_reply(reply, digest, f"upload of {target}")
        log.info("archive.uploaded", target=str(target), size=digest.size, etag=etag)
        return UploadResult(target, digest.size, etag, content_hash)
    return await _multipart(client, target, source, path, headers, digest, part_size)


async def _multipart(client: ObjectClient, target: Target, source: Source, path: str,
                     headers: Mapping[str, str], digest: Digest,
                     part_size: int) -> UploadResult:
    count = -(-digest.size // part_size)
    if count > MAX_PARTS:
        raise UsageError(f"{digest.size} bytes in parts of {part_size} make {count} parts, "
                         f"more than the {MAX_PARTS} allowed; use larger parts",
                         parameter="part_size")
    started = await client.send("POST", path, "POST /objects?uploads",
                                params={"uploads": ""}, headers=headers)
    upload_id = started.payload.get("upload_id")
    if not isinstance(upload_id, str) or not upload_id:
        raise ProtocolError("CloudNexus started a multipart upload without an upload_id",
                            endpoint="POST /objects?uploads")
    log.info("archive.multipart_started", target=str(target), upload_id=upload_id,
             size=digest.size, parts=count)
    try:
        listed = []
        whole = hashlib.sha256()
        for number, chunk in enumerate(_blocks(source, part_size), start=1):
            whole.update(chunk)
            reply = await client.send(
                "PUT", path, "PUT /objects?part", data=chunk,
                params={"upload_id": upload_id, "part": str(number)},
                headers={"Content-Type": "application/octet-stream"})
            md5 = hashlib.md5(chunk, usedforsecurity=False).hexdigest()
            part = Digest(len(chunk), md5, hashlib.sha256(chunk).hexdigest())
            etag, _ = verify_reply(reply, part, f"part {number} of {target}")
            listed.append({"part": number, "etag": etag})
        if whole.hexdigest() != digest.sha256:
            raise NexusAuditError(f"{target}: the source changed while it was uploaded; "
                                  "the upload was aborted")
        body = json.dumps({"parts": listed}, separators=(",", ":")).encode()
        done = await client.send(
            "POST", path, "POST /objects?complete", data=body,
            params={"upload_id": upload_id, "complete": ""},
            headers={"Content-Type": "application/json"})
    except BaseException as exc:
        await _abort(client, path, upload_id, target, exc)
        raise
    # Completed: the object exists now, so a mismatch can only be reported, not undone.
    etag, content_hash = verify_reply(done, digest, f"multipart upload of {target}")
    log.info("archive.uploaded", target=str(target), size=digest.size, etag=etag,
             parts=count, upload_id=upload_id)
    return UploadResult(target, digest.size, etag, content_hash, parts=count,
                        upload_id=upload_id)


async def _abort(client: ObjectClient, path: str, upload_id: str, target: Target,
                 cause: BaseException) -> None:
    """Abort an upload after a failure; a failing abort is logged, the cause still raised."""
    try:
        # Shielded: an interrupted upload still tells the server to drop its parts.
        await asyncio.shield(client.send("DELETE", path, "DELETE /objects?upload_id",
                                         params={"upload_id": upload_id}))
    except (ApiError, asyncio.CancelledError) as exc:
        log.warning("archive.abort_failed", target=str(target), upload_id=upload_id,
                    error=str(exc), cause=type(cause).__name__)
    else:
        log.info("archive.multipart_aborted", target=str(target), upload_id=upload_id,
                 cause=type(cause).__name__)


async def upload_report(
    client: ObjectClient,
    states: Sequence[AccountState],
    *,
    account: str,
    target: Target,
    body: bytes,
    fmt: str,
    window: Window,
    retention: str = DEFAULT_RETENTION,
    accounts: Sequence[str] = (),
    threshold: int = MULTIPART_THRESHOLD,
    part_size: int = DEFAULT_PART_SIZE,
) -> UploadResult:
    """Check the bucket, then upload a rendered report with its metadata, verified.

    ``states`` is the store's latest state (:meth:`nexus_audit.history.store.Store.latest`).
    """
    if fmt not in CONTENT_TYPES:
        raise UsageError(f"--format: cannot upload format {fmt!r}", parameter="format")
    check_bucket(states, account, target.bucket)
    digest = Digest.of(body)
    metadata = report_metadata(fmt=fmt, retention=retention, window=window,
                               sha256=digest.sha256, accounts=accounts)
    return await upload_object(client, target, body, content_type=CONTENT_TYPES[fmt],
                               metadata=metadata, digest=digest, threshold=threshold,
                               part_size=part_size)


# -- the command's side: `nexus-audit report ... --upload BUCKET/KEY` ----------------------


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """A report's ``--upload``/``--retention``/``--account`` flags, validated up front."""

    target: Target
    retention: str
    fmt: str
    account: str | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> UploadRequest | None:
        """The request, or None without ``--upload``; :class:`UsageError` for bad flags.

        ``--retention`` is checked even without ``--upload``: a bad flag is an error
        wherever it stands, not something silently ignored.
        """
        retention = parse_retention(getattr(args, "retention", None) or DEFAULT_RETENTION)
        if not getattr(args, "upload", None):
            return None
        fmt = "bundle" if getattr(args, "bundle", None) else args.format
        return cls(target=Target.parse(args.upload), retention=retention, fmt=fmt,
                   account=getattr(args, "account", None))

    def run(self, settings: Settings, body: bytes, report: Report, *,
            clock: Clock | None = None, stream: TextIO | None = None,
            threshold: int = MULTIPART_THRESHOLD,
            part_size: int = DEFAULT_PART_SIZE) -> UploadResult:
        """Upload the rendered ``body`` with the account's key; one line on ``stream``."""
        from nexus_audit.history.store import Store

        configured = settings.account(self.account)
        if not configured:
            raise ConfigError("--upload needs a CloudNexus account with a key: set "
                              "NEXUS_API_KEY (or NEXUS_API_KEY_FILE), or [[accounts]] in the "
                              "NEXUS_AUDIT_CONFIG file")
        account = configured[0]
        try:
            states = Store(settings.db_path).latest()
        except NoDataError:
            states = []
        # Before any request: an exposed bucket gets nothing, not even a session.
        verdict = check_bucket(states, account.name, self.target.bucket)
        stream = stream or sys.stderr
        if verdict == "unknown":
            stream.write(escape.terminal(
                f"nexus-audit: warning: no bucket crawl of account {account.name} has seen "
                f"bucket {self.target.bucket}; its access is unchecked (run `nexus-audit "
                "crawl --kinds buckets` first)") + "\n")
        clock = clock or SystemClock()
        result = asyncio.run(self._upload(account, settings.request_timeout, clock, states,
                                          body, report, threshold, part_size))
        # The object key is the user's text and the names come from configuration:
        # escaped like every other line this tool prints.
        stream.write(escape.terminal(
            f"nexus-audit: uploaded {result.target} ({result.size:,} bytes"
            f"{f', {result.parts} parts' if result.parts else ''}; etag {result.etag}, "
            f"{result.content_hash}, verified)") + "\n")
        return result

    async def _upload(self, account: AccountConfig, request_timeout: float, clock: Clock,
                      states: Sequence[AccountState], body: bytes, report: Report,
                      threshold: int, part_size: int) -> UploadResult:
        async with aiohttp.ClientSession() as session:
            client = CloudNexusClient(account, session,
                                      RateBudget(account.rate_budget, clock=clock),
                                      stats=ApiStats(), timeout=request_timeout, clock=clock)
            return await upload_report(
                client, states, account=account.name, target=self.target, body=body,
                fmt=self.fmt, window=report.window, retention=self.retention,
                accounts=report.accounts, threshold=threshold, part_size=part_size)
