"""Evidence bundles: written by ``report --bundle``, checked offline by ``verify-bundle``
and by standard tools, every altered file named, bad input one line."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nexus_audit.cli import main
from nexus_audit.output.archive import CONTENT_TYPES, UploadRequest
from nexus_audit.output.bundle import BundleError, check_bundle, read_bundle
from tests.test_verify import build_history

WINDOW = ["--since", "2026-03-01T00:00:00Z", "--until", "2026-03-02T00:00:00Z"]


def write_key(path: Path) -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair: the private key PEM at ``path``; returns (private, public
    PEM) bytes."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.write_bytes(private)
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    path.with_suffix(".pub").write_bytes(public)
    return private, public


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A history database named by NEXUS_AUDIT_DB; the working directory is ``tmp_path``."""
    db = tmp_path / "history.duckdb"
    build_history(db)
    monkeypatch.setenv("NEXUS_AUDIT_DB", str(db))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def signed(env: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, bytes]:
    """A signed bundle of a markdown report: (bundle, public key file, private key PEM)."""
    private, _public = write_key(env / "key.pem")
    bundle = env / "evidence.tar.gz"
    assert main(["report", *WINDOW, "--format", "markdown", "--bundle", str(bundle),
                 "--sign-key", str(env / "key.pem")]) == 0
    captured = capsys.readouterr()
    assert "public key ed25519:" in captured.err
    assert private.decode() not in captured.err + captured.out
    return bundle, env / "key.pub", private


def test_bundle_verifies_with_standard_tools(signed: tuple[Path, Path, bytes],
                                             tmp_path: Path) -> None:
    """`sha256sum -c` and `openssl pkeyutl -verify` accept the bundle as VERIFY.md says."""
    bundle, public, _ = signed
    out = tmp_path / "x"
    out.mkdir()
    with tarfile.open(bundle) as tar:
        tar.extractall(out, filter="data")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["SHA256SUMS", "SHA256SUMS.sig", "VERIFY.md", "manifests.jsonl",
                     "pricing.toml", "public-key.pem", "report.json", "report.md"]
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=out, check=True)
    subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(public),
                    "-rawin", "-in", "SHA256SUMS", "-sigfile", "SHA256SUMS.sig"],
                   cwd=out, check=True, capture_output=True)
    assert (out / "public-key.pem").read_bytes() == public.read_bytes()
    report = json.loads((out / "report.json").read_text())
    lines = (out / "manifests.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["hash"] == report["evidence"]["chain_head"]
    assert "openssl pkeyutl -verify" in (out / "VERIFY.md").read_text()


def test_private_key_never_in_the_bundle(signed: tuple[Path, Path, bytes]) -> None:
    """Neither the private key's PEM nor its raw bytes appear in any file of the bundle."""
    bundle, _, private = signed
    key = serialization.load_pem_private_key(private, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    for name, data in read_bundle(bundle).items():
        assert raw not in data, name
        assert private not in data, name


def test_verify_bundle_command(signed: tuple[Path, Path, bytes],
                               capsys: pytest.CaptureFixture[str]) -> None:
    """verify-bundle accepts an untouched bundle, with and without the public key given."""
    bundle, public, _ = signed
    assert main(["verify-bundle", str(bundle), "--public-key", str(public)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bundle verified: 8 files, signed by ed25519:")
    assert main(["verify-bundle", str(bundle)]) == 0


def repack(bundle: Path, target: Path, name: str, data: bytes) -> None:
    """``bundle`` with file ``name`` replaced by ``data``, written to ``target``."""
    files = read_bundle(bundle)
    files[name] = data
    with tarfile.open(target, "w:gz") as tar:
        for each in sorted(files):
            info = tarfile.TarInfo(each)
            info.size = len(files[each])
            tar.addfile(info, io.BytesIO(files[each]))


@pytest.mark.parametrize("sign", [True, False], ids=["signed", "unsigned"])
def test_each_flipped_byte_names_its_file(env: Path, sign: bool) -> None:
    """One byte flipped in any file of the bundle: verify-bundle fails naming that file
    (unsigned, SHA256SUMS itself has nothing to be checked against but its files)."""
    write_key(env / "key.pem")
    bundle = env / "b.tar.gz"
    args = ["report", *WINDOW, "--format", "csv", "--bundle", str(bundle)]
    assert main([*args, "--sign-key", str(env / "key.pem")] if sign else args) == 0
    public = (env / "key.pub").read_bytes() if sign else None
    check_bundle(bundle, public_key=public)
    files = read_bundle(bundle)
    assert len(files) == (8 if sign else 6)
    for name, data in files.items():
        if name == "SHA256SUMS" and not sign:
            continue
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        altered = env / f"altered-{name}.tar.gz"
        repack(bundle, altered, name, bytes(flipped))
        with pytest.raises(BundleError) as caught:
            check_bundle(altered, public_key=public)
        assert str(caught.value).startswith(f"{name}:"), (name, str(caught.value))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and standard error of the CLI."""
    code = main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return code, err


def test_bad_input_is_one_line(signed: tuple[Path, Path, bytes], env: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """Not a bundle, a wrong public key, a signature over other bytes, missing or bad key
    files (a huge one too): one line, exit 1 (the bundle) or 2 (the flags), no traceback."""
    bundle, public, private = signed
    (env / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    assert run(["verify-bundle", str(env / "junk.tar.gz")], capsys)[0] == 1
    (env / "text.tar.gz").write_text("hello")
    assert run(["verify-bundle", str(env / "text.tar.gz")], capsys)[0] == 1
    with tarfile.open(env / "other.tar.gz", "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("README"), io.BytesIO(b""))
    code, err = run(["verify-bundle", str(env / "other.tar.gz")], capsys)
    assert code == 1
    assert "not an evidence bundle" in err
    assert run(["verify-bundle", str(env / "missing.tar.gz")], capsys)[0] == 1
    write_key(env / "other.pem")
    code, err = run(["verify-bundle", str(bundle), "--public-key", str(env / "other.pub")],
                    capsys)
    assert code == 1
    assert "public-key.pem: not the public key given" in err
    key = serialization.load_pem_private_key(private, password=None)
    assert isinstance(key, Ed25519PrivateKey)
    repack(bundle, env / "resigned.tar.gz", "SHA256SUMS.sig", key.sign(b"other bytes"))
    code, err = run(["verify-bundle", str(env / "resigned.tar.gz"), "--public-key",
                     str(public)], capsys)
    assert code == 1
    assert err.startswith("nexus-audit: error: SHA256SUMS.sig:")
    assert run(["verify-bundle", str(bundle), "--public-key", str(env / "nope.pub")],
               capsys)[0] == 2
    assert run(["verify-bundle", str(bundle), "--public-key", str(env / "key.pem")],
               capsys)[0] == 2
    code, err = run(["report", *WINDOW, "--bundle", "x.tar.gz", "--sign-key",
                     str(env / "nope.pem")], capsys)
    assert code == 2
    assert not (env / "x.tar.gz").exists()
    code, err = run(["report", *WINDOW, "--bundle", "x.tar.gz", "--sign-key",
                     str(env / "key.pub")], capsys)
    assert code == 2
    assert "not an unencrypted Ed25519 private key" in err
    assert private.decode().splitlines()[1] not in err
    assert run(["report", *WINDOW, "--sign-key", str(env / "key.pem")], capsys)[0] == 2
    # A key flag naming a huge or endless file (a disk image, /dev/zero): refused, not
    # read whole or for ever (a sparse file of 17 MiB).
    with (env / "disk.img").open("wb") as image:
        image.truncate(17 * 1024 * 1024)
    for argv in (["report", *WINDOW, "--bundle", "y.tar.gz", "--sign-key", "disk.img"],
                 ["verify-bundle", str(bundle), "--public-key", "disk.img"]):
        code, err = run(argv, capsys)
        assert (code, "not a settings file" in err) == (2, True), err
    assert not (env / "y.tar.gz").exists()
    # A bundle in a directory that does not exist: refused before the report is written.
    code = main(["report", *WINDOW, "--bundle", str(env / "missing" / "z.tar.gz")])
    out, err = capsys.readouterr()
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert "--bundle: no directory" in err


def test_bundle_never_replaces_what_is_not_a_bundle(env: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """--bundle naming the history database, a symlink to it, a key, a directory or a
    device is a usage error before the report is printed, and the file keeps every byte
    (the bundle was renamed over the database, exit 0); an earlier bundle is replaced."""
    db = env / "history.duckdb"
    write_key(env / "key.pem")
    (env / "dir").mkdir()
    (env / "link.tar.gz").symlink_to(db)
    os.mkfifo(env / "fifo")  # a device stands in for /dev/null (replaced, as root)
    before = {p: p.read_bytes() for p in (db, env / "key.pem")}
    for target in (db, env / "link.tar.gz", env / "key.pem", env / "dir", env / "fifo"):
        code = main(["report", *WINDOW, "--bundle", str(target)])
        out, err = capsys.readouterr()
        assert (code, out, err.count("\n")) == (2, "", 1), (target, err)
        assert err.startswith("nexus-audit: error: --bundle: "), err
    assert {p: p.read_bytes() for p in before} == before
    assert (env / "link.tar.gz").is_symlink()
    assert (env / "fifo").is_fifo()
    for _ in range(2):  # written, then replaced: an earlier bundle may be
        assert main(["report", *WINDOW, "--bundle", "again.tar.gz"]) == 0
        capsys.readouterr()
        assert main(["verify-bundle", "again.tar.gz"]) == 0
        capsys.readouterr()


def test_upload_takes_a_bundle() -> None:
    """`--upload` with `--bundle` uploads the bundle, as a gzip archive."""
    args = argparse.Namespace(upload="evidence/q3.tar.gz", retention="400d", format="json",
                              account=None, bundle="q3.tar.gz")
    request = UploadRequest.from_args(args)
    assert request is not None
    assert request.fmt == "bundle"
    assert CONTENT_TYPES["bundle"] == "application/gzip"
