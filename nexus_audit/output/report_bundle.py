"""A report's evidence bundle: gathers what :func:`nexus_audit.output.bundle.write_bundle`
packs (the rendered report, the chain's manifests, the pricing and policy files)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from nexus_audit.audit.report import Report
from nexus_audit.config import Settings
from nexus_audit.errors import ConfigError
from nexus_audit.history.evidence import manifest_range
from nexus_audit.history.protocol import History
from nexus_audit.output.bundle import SigningKey, write_bundle
from nexus_audit.output.render import render_chunks


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None


def write_report_bundle(path: Path, history: History, report: Report,
                        rendered: Mapping[str, str], *, settings: Settings,
                        key: SigningKey | None = None) -> bytes:
    """Write ``report``'s bundle to ``path`` and return its bytes.

    ``rendered``: format → the text already written (JSON is rendered here if absent).
    The pricing file must still be the one the report used (its digest is compared).
    """
    reports = dict(rendered)
    if "json" not in reports:
        reports["json"] = "".join(render_chunks(report, "json"))
    if settings.pricing_file is None:
        pricing = resources.files("nexus_audit").joinpath("data/pricing.toml").read_bytes()
    else:
        pricing = _read(Path(settings.pricing_file), "pricing")
    if hashlib.sha256(pricing).hexdigest() != report.pricing.get("digest"):
        raise ConfigError("pricing: the price list changed while the report was written; "
                          "run the report again")
    policy = (None if settings.policy_file is None
              else _read(Path(settings.policy_file), "policy"))
    manifests = []
    if report.evidence is not None:
        with history.read() as con:
            manifests = manifest_range(con, report.evidence)
    write_bundle(path, reports=reports, manifests=manifests, pricing=pricing, policy=policy,
                 moment=report.generated_at, key=key)
    return Path(path).read_bytes()
