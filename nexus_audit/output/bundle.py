"""Evidence bundles: one self-contained ``.tar.gz`` an auditor checks offline.

A bundle holds the report (``report.json`` always, and the format asked for), the
manifests of the evidence chain from the first crawl the report cites to its chain head
(``manifests.jsonl``), the pricing and policy files the report used, ``VERIFY.md``, and
``SHA256SUMS`` (``sha256sum -c`` format) over all of them. Signed, it also holds
``SHA256SUMS.sig`` (a raw Ed25519 signature over ``SHA256SUMS``) and ``public-key.pem``.
The archive is deterministic: sorted names, mode 0644, owner 0, the report's time.

:func:`check_bundle` needs neither the database nor the network: the signature, every file
against ``SHA256SUMS``, no file left out, each manifest's hash and link to the one
before, and the report's citations against the manifests and the pricing file. Each
failure names the file at fault.

The signing key is read from a file and used once; it is never logged, printed or written
into the bundle (only the public key is).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from nexus_audit.domain.files import read_bounded
from nexus_audit.errors import ConfigError, NexusAuditError

SUMS: Final = "SHA256SUMS"
SIGNATURE: Final = "SHA256SUMS.sig"
PUBLIC_KEY: Final = "public-key.pem"
MANIFESTS: Final = "manifests.jsonl"
REPORT_JSON: Final = "report.json"
#: The file each report format is written to.
REPORT_FILES: Final[Mapping[str, str]] = {
    "json": REPORT_JSON, "table": "report.txt", "markdown": "report.md", "csv": "report.csv",
    "ocsf": "report.ocsf.jsonl", "html": "report.html"}
#: What a bundle may hold at most (a bundle is read whole into memory to be checked).
MAX_FILES: Final = 64
MAX_BYTES: Final = 1 << 30
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SUM_LINE: Final = re.compile(r"([0-9a-f]{64}) [ *]([A-Za-z0-9][A-Za-z0-9._-]*)")

VERIFY_MD: Final = """\
# Verifying this evidence bundle

Written by nexus-audit. Nothing here needs nexus-audit, its database or a network.

1. Every file is listed with its SHA-256 in `SHA256SUMS`:

       sha256sum -c SHA256SUMS

2. If the bundle is signed (`SHA256SUMS.sig`), check the Ed25519 signature over
   `SHA256SUMS` (OpenSSL 3), with the public key you were given, not only the one in
   the bundle (`public-key.pem`; compare them with `cmp`):

       openssl pkeyutl -verify -pubin -inkey public-key.pem -rawin \\
           -in SHA256SUMS -sigfile SHA256SUMS.sig

3. Each line of `manifests.jsonl` is one manifest of the evidence chain: `hash` is the
   SHA-256 of `body`, and each body's `prev` is the hash of the line before. The last
   hash is `evidence.chain_head` in `report.json`; `evidence.crawls` lists the crawls the
   report used, with their manifests. For example:

       python3 -c 'import hashlib,json,sys
       p=None
       for l in open("manifests.jsonl"):
           m=json.loads(l); b=json.loads(m["body"])
           assert hashlib.sha256(m["body"].encode()).hexdigest()==m["hash"]
           assert p is None or b["prev"]==p; p=m["hash"]
       print("chain head", p)'

4. `pricing.toml` hashes to `pricing.digest` in `report.json` (`sha256sum pricing.toml`).

5. Against the history itself: `nexus-audit verify` on the database (or a copy) recomputes
   every manifest from the stored rows and must print the same chain head (or one that
   follows it: the chain only grows).

Or all of the above at once: `nexus-audit verify-bundle BUNDLE.tar.gz --public-key KEY`.
"""


class BundleError(NexusAuditError):
    """An evidence bundle does not check out (or is not one); names the file at fault."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key read from a file (never shown: no repr of its bytes)."""

    key: Ed25519PrivateKey

    def __repr__(self) -> str:
        return "SigningKey(<Ed25519, hidden>)"

    @classmethod
    def load(cls, path: Path, *, parameter: str = "--sign-key") -> SigningKey:
        """Read an unencrypted PEM (PKCS#8) or OpenSSH Ed25519 private key; a missing or
        unreadable file, or another kind of key, is a :class:`ConfigError` (exit 2)."""
        try:
            raw = read_bounded(path)
        except OSError as exc:
            raise ConfigError(f"{parameter}: cannot read {path}: {exc.strerror or exc}",
                              parameter=parameter) from None
        key: object
        try:
            if raw.lstrip().startswith(b"-----BEGIN OPENSSH"):
                key = serialization.load_ssh_private_key(raw, password=None)
            else:
                key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            # Never quote the library's message: it may echo parts of the key.
            raise ConfigError(f"{parameter}: {path} is not an unencrypted Ed25519 private key "
                              "(make one with `openssl genpkey -algorithm ed25519`)",
                              parameter=parameter) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{parameter}: {path} is not an Ed25519 key",
                              parameter=parameter)
        return cls(key)

    def public_pem(self) -> bytes:
        """The public key, PEM (SubjectPublicKeyInfo)."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def public_id(self) -> str:
        """The public key as :func:`public_key_id` shows it."""
        return public_key_id(self.public_pem())

    def sign(self, data: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature of ``data``."""
        return self.key.sign(data)


def public_key_id(pem: bytes) -> str:
    """How a public key is shown: ``ed25519:`` and the base64 of its 32 raw bytes."""
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, Ed25519PublicKey)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode("ascii")


def load_public_key(path: Path, *, parameter: str = "--public-key") -> bytes:
    """A public key file (PEM) as canonical PEM; :class:`ConfigError` when it is not one."""
    try:
        raw = read_bounded(path)
    except OSError as exc:
        raise ConfigError(f"{parameter}: cannot read {path}: {exc.strerror or exc}",
                          parameter=parameter) from None
    pem = _public_pem(raw)
    if pem is None:
        raise ConfigError(f"{parameter}: {path} is not an Ed25519 public key (PEM)",
                          parameter=parameter)
    return pem


def _public_pem(raw: bytes) -> bytes | None:
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def sums_text(files: Mapping[str, bytes]) -> bytes:
    """``SHA256SUMS`` over ``files`` (``sha256sum`` text format, sorted by name)."""
    return "".join(f"{hashlib.sha256(files[name]).hexdigest()}  {name}\n"
                   for name in sorted(files)).encode("ascii")


def write_bundle(path: Path, *, reports: Mapping[str, str], manifests: Sequence[Mapping[str,
                 Any]], pricing: bytes, policy: bytes | None, moment: datetime,
                 key: SigningKey | None = None) -> dict[str, bytes]:
    """Write the bundle to ``path`` (atomically: a temporary file renamed into place).

    ``reports``: format → rendered text (must include ``json``); ``manifests``: rows of
    :func:`nexus_audit.history.evidence.manifest_range`. Returns the files written.
    """
    files: dict[str, bytes] = {REPORT_FILES[fmt]: text.encode("utf-8")
                               for fmt, text in reports.items()}
    files[MANIFESTS] = "".join(json.dumps(m, sort_keys=True, separators=(",", ":"),
                                          ensure_ascii=False) + "\n"
                               for m in manifests).encode("utf-8")
    files["pricing.toml"] = pricing
    if policy is not None:
        files["policy.toml"] = policy
    files["VERIFY.md"] = VERIFY_MD.encode("utf-8")
    sums = sums_text(files)
    files[SUMS] = sums
    if key is not None:
        files[PUBLIC_KEY] = key.public_pem()
        files[SIGNATURE] = key.sign(sums)
    buffer = io.BytesIO()
    mtime = int(moment.timestamp())
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), mtime, 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        # gzip's own header time is the report's too, so equal inputs give equal bytes.
        temporary.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=9, mtime=mtime))
        temporary.replace(target)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise NexusAuditError(f"--bundle: cannot write {target}: {exc.strerror or exc}"
                              ) from None
    return files


def read_bundle(path: Path) -> dict[str, bytes]:
    """The files of a bundle (regular files with plain names only), read whole."""
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            files: dict[str, bytes] = {}
            total = 0
            for info in tar:
                if not info.isfile() or not _NAME.fullmatch(info.name):
                    raise BundleError(f"{path}: {info.name!r} is not a plain file of an "
                                      "evidence bundle")
                if info.name in files:
                    raise BundleError(f"{path}: {info.name} appears twice")
                total += info.size
                if len(files) >= MAX_FILES or total > MAX_BYTES:
                    raise BundleError(f"{path}: too large for an evidence bundle")
                handle = tar.extractfile(info)
                files[info.name] = handle.read() if handle else b""
            return files
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except OSError as exc:
        if isinstance(exc, (tarfile.TarError, EOFError)) or "gzip" in str(exc).lower():
            raise BundleError(f"{path} is not an evidence bundle (not a gzip tar archive)"
                              ) from None
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (tarfile.TarError, EOFError, ValueError):
        raise BundleError(f"{path} is not an evidence bundle (not a gzip tar archive)"
                          ) from None


@dataclass(frozen=True, slots=True)
class BundleCheck:
    """What :func:`check_bundle` established."""

    files: int
    signed_by: str | None
    chain_head: str | None
    manifests: int


def _parse_sums(text: bytes) -> dict[str, str] | None:
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError:
        return None
    listed: dict[str, str] = {}
    for line in lines:
        match = _SUM_LINE.fullmatch(line)
        if match is None or match.group(2) in listed:
            return None
        listed[match.group(2)] = match.group(1)
    return listed


def _consistent(files: Mapping[str, bytes], listed: Mapping[str, str]) -> str | None:
    """The first file that does not match ``listed`` (or is missing or unlisted)."""
    for name, digest in sorted(listed.items()):
        if name not in files:
            return name
        if hashlib.sha256(files[name]).hexdigest() != digest:
            return name
    for name in sorted(files):
        if name not in listed and name not in (SUMS, SIGNATURE, PUBLIC_KEY):
            return name
    return None


def _check_signature(files: Mapping[str, bytes], listed: Mapping[str, str] | None,
                     expected_key: bytes | None) -> str | None:
    has_sig, has_key = SIGNATURE in files, PUBLIC_KEY in files
    if not has_sig and not has_key:
        if expected_key is not None:
            raise BundleError(f"{SIGNATURE}: missing (the bundle is not signed, but a public "
                              "key was given)")
        return None
    if not has_sig or not has_key:
        missing = SIGNATURE if not has_sig else PUBLIC_KEY
        raise BundleError(f"{missing}: missing (a signed bundle holds both {SIGNATURE} and "
                          f"{PUBLIC_KEY})")
    pem = _public_pem(files[PUBLIC_KEY])
    if pem is None:
        raise BundleError(f"{PUBLIC_KEY}: not an Ed25519 public key (PEM)")
    if expected_key is not None and pem != expected_key:
        raise BundleError(f"{PUBLIC_KEY}: not the public key given (the bundle was signed "
                          "by someone else, or its key was replaced)")
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, Ed25519PublicKey)
    try:
        key.verify(files[SIGNATURE], files[SUMS])
    except InvalidSignature:
        if listed is None or _consistent(files, listed) is not None:
            raise BundleError(f"{SUMS}: altered (it matches neither its signature nor the "
                              "files it lists)") from None
        raise BundleError(f"{SIGNATURE}: the signature does not verify over {SUMS} (the "
                          f"signature was altered, or {SUMS} rewritten with its files)"
                          ) from None
    return public_key_id(pem)


def _json(files: Mapping[str, bytes], name: str) -> Any:
    try:
        return json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BundleError(f"{name}: not valid JSON") from None


def _check_contents(files: Mapping[str, bytes]) -> tuple[str | None, int]:
    """The report's citations against the manifests and the pricing file."""
    report = _json(files, REPORT_JSON)
    if not isinstance(report, dict):
        raise BundleError(f"{REPORT_JSON}: not a report")
    hashes: list[str] = []
    prev: str | None = None
    for number, line in enumerate(files[MANIFESTS].decode("utf-8", "replace").splitlines(), 1):
        try:
            row = json.loads(line)
            body = json.loads(row["body"])
            digest = hashlib.sha256(row["body"].encode("utf-8")).hexdigest()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BundleError(f"{MANIFESTS}: line {number} is not a manifest") from None
        if digest != row.get("hash") or body.get("seq") != row.get("seq"):
            raise BundleError(f"{MANIFESTS}: line {number}'s body does not hash to its hash")
        if prev is not None and body.get("prev") != prev:
            raise BundleError(f"{MANIFESTS}: line {number} does not follow the line before")
        prev = digest
        hashes.append(digest)
    evidence = report.get("evidence") or {}
    head = evidence.get("chain_head")
    if head is not None and (not hashes or hashes[-1] != head):
        raise BundleError(f"{REPORT_JSON}: its chain head is not the last of {MANIFESTS}")
    known = set(hashes)
    for cited in evidence.get("crawls") or ():
        manifest = cited.get("manifest") if isinstance(cited, dict) else None
        if manifest is not None and manifest not in known:
            raise BundleError(f"{REPORT_JSON}: cites a manifest {MANIFESTS} does not hold")
    pricing = report.get("pricing") or {}
    if "pricing.toml" not in files or (
            hashlib.sha256(files["pricing.toml"]).hexdigest() != pricing.get("digest")):
        raise BundleError(f"pricing.toml: not the price list the report used (its digest "
                          f"differs from {REPORT_JSON})")
    return head, len(hashes)


def check_bundle(path: Path, *, public_key: bytes | None = None) -> BundleCheck:
    """Check a bundle offline; raises :class:`BundleError` naming the file at fault."""
    files = read_bundle(path)
    if SUMS not in files:
        raise BundleError(f"{path} is not an evidence bundle (no {SUMS})")
    listed = _parse_sums(files[SUMS])
    signed_by = _check_signature(files, listed, public_key)
    if listed is None:
        raise BundleError(f"{SUMS}: not a sha256sum list")
    bad = _consistent(files, listed)
    if bad is not None:
        why = ("missing" if bad not in files else
               f"not listed in {SUMS}" if bad not in listed else
               f"its SHA-256 differs from {SUMS}")
        raise BundleError(f"{bad}: {why}")
    for required in (REPORT_JSON, MANIFESTS):
        if required not in files:
            raise BundleError(f"{path} is not an evidence bundle (no {required})")
    head, count = _check_contents(files)
    return BundleCheck(files=len(files), signed_by=signed_by, chain_head=head,
                       manifests=count)
