"""Findings as OCSF Compliance Finding events (``report --format ocsf``), JSON lines.

Schema: OCSF 1.1.0 (https://schema.ocsf.io/1.1.0/classes/compliance_finding), class
Compliance Finding (``class_uid`` 2003) in category Findings (``category_uid`` 2), with
the ``cloud`` profile. One event per finding entry of the report (an interval with one
status), so security data lakes and SIEMs take them as they are. Fields used:

- ``activity_id``/``activity_name``: 1 Create while the finding is current at the
  window's end, 3 Close when its interval ended inside the window;
  ``type_uid`` = 2003 x 100 + ``activity_id``, ``type_name``;
- ``category_uid``/``category_name``, ``class_uid``/``class_name``;
- ``severity_id``/``severity``: low 2 Low, medium 3 Medium, high 4 High, critical 5
  Critical (an expired exception's raised severity);
- ``status_id``/``status`` (the finding's workflow): accepted 3 Suppressed; open or
  expired 1 New while current, 4 Resolved once the interval ended;
- ``time``: the finding's ``last_seen`` (the crawl whose observation the event reports),
  ``message``: title and detail; every time is OCSF ``timestamp_t``, milliseconds since
  the Unix epoch;
- ``finding_info``: ``uid`` (sha256 of rule, account, resource and first_seen: stable
  across runs), ``title``, ``desc``, ``types`` [rule], ``first_seen_time``,
  ``last_seen_time``;
- ``compliance``: ``control`` (the rule id), ``standards`` ["nexus-audit policy"],
  ``status_id`` 3 / ``status`` Fail (the check failed; an accepted exception does not
  make it pass), ``status_detail`` (the detail, and the exception: pattern, owner,
  reason, expiry);
- ``resources`` [{``uid``, ``type`` (``CloudNexus Instance`` or ``CloudNexus Bucket``),
  ``region``}]: CloudNexus has no partitions, so no ``cloud_partition``;
- ``cloud``: ``provider`` "CloudNexus", ``region``, ``account`` {``uid``, ``name``}: the
  account's configured name, the only identifier nexus-audit knows;
- ``metadata``: ``version`` "1.1.0", ``profiles`` ["cloud"], ``product`` {``name``
  "nexus-audit", ``vendor_name`` "nexus-audit", ``version``};
- ``unmapped.nexus_audit``: the report's own ``status`` (open, accepted, expired),
  ``current`` and ``exception``, which OCSF has no field for, and ``chain_head``: the
  evidence chain's head the report cites (``nexus-audit verify``), also in
  ``metadata.labels`` as ``nexus-audit-chain-head:<hash>`` for tools that drop ``unmapped``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final

from nexus_audit.audit.findings import Finding
from nexus_audit.domain import escape
from nexus_audit.domain.policy import RULES
from nexus_audit.domain.timeutil import isoformat

OCSF_VERSION: Final = "1.1.0"
CLASS_UID: Final = 2003
CLASS_NAME: Final = "Compliance Finding"
CATEGORY_UID: Final = 2
CATEGORY_NAME: Final = "Findings"
PRODUCT: Final = "nexus-audit"
VENDOR: Final = "nexus-audit"
STANDARD: Final = "nexus-audit policy"
SEVERITY_ID: Final = {"low": (2, "Low"), "medium": (3, "Medium"), "high": (4, "High"),
                      "critical": (5, "Critical")}
ACTIVITY_CREATE: Final = (1, "Create")
ACTIVITY_CLOSE: Final = (3, "Close")
STATUS_NEW: Final = (1, "New")
STATUS_SUPPRESSED: Final = (3, "Suppressed")
STATUS_RESOLVED: Final = (4, "Resolved")
COMPLIANCE_FAIL: Final = (3, "Fail")
RESOURCE_TYPE: Final = {"instance": "CloudNexus Instance", "bucket": "CloudNexus Bucket"}


def timestamp(moment: datetime) -> int:
    """OCSF ``timestamp_t``: milliseconds since the Unix epoch."""
    return int(moment.timestamp() * 1000)


def finding_uid(finding: Finding) -> str:
    """A stable id: sha256 of rule, account, resource and first_seen (ISO 8601)."""
    text = "\x1f".join((finding.rule, finding.account, finding.resource,
                        isoformat(finding.first_seen) or ""))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _status_detail(finding: Finding) -> str:
    exc = finding.exception
    if exc is None:
        return finding.detail
    who = f"'{exc.pattern}' (owner {exc.owner}; reason: {exc.reason})"
    if finding.status == "accepted":
        return f"{finding.detail}; accepted by exception {who} until {isoformat(exc.expires)}"
    return f"{finding.detail}; exception {who} expired at {isoformat(exc.expires)}"


def event(finding: Finding, *, product_version: str,
          chain_head: str | None = None) -> dict[str, Any]:
    """The OCSF Compliance Finding event of one finding (``chain_head``: the evidence
    chain's head the report cites, if any)."""
    activity = ACTIVITY_CREATE if finding.current else ACTIVITY_CLOSE
    if finding.status == "accepted":
        status = STATUS_SUPPRESSED
    else:
        status = STATUS_NEW if finding.current else STATUS_RESOLVED
    severity_id, severity = SEVERITY_ID[finding.severity]
    title = RULES[finding.rule].title
    kind = finding.kind
    return {
        "activity_id": activity[0],
        "activity_name": activity[1],
        "category_uid": CATEGORY_UID,
        "category_name": CATEGORY_NAME,
        "class_uid": CLASS_UID,
        "class_name": CLASS_NAME,
        "type_uid": CLASS_UID * 100 + activity[0],
        "type_name": f"{CLASS_NAME}: {activity[1]}",
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status[0],
        "status": status[1],
        "time": timestamp(finding.last_seen),
        "message": f"{title}: {kind} {finding.resource} of {finding.account} "
                   f"({finding.detail})",
        "finding_info": {
            "uid": finding_uid(finding),
            "title": title,
            "desc": f"{title} ({finding.rule}): {finding.detail}",
            "types": [finding.rule],
            "first_seen_time": timestamp(finding.first_seen),
            "last_seen_time": timestamp(finding.last_seen),
        },
        "compliance": {
            "control": finding.rule,
            "standards": [STANDARD],
            "status_id": COMPLIANCE_FAIL[0],
            "status": COMPLIANCE_FAIL[1],
            "status_detail": _status_detail(finding),
        },
        "resources": [{"uid": finding.resource, "type": RESOURCE_TYPE[kind],
                       "region": finding.region}],
        "cloud": {"provider": "CloudNexus", "region": finding.region,
                  "account": {"uid": finding.account, "name": finding.account}},
        "metadata": {
            "version": OCSF_VERSION,
            "profiles": ["cloud"],
            "product": {"name": PRODUCT, "vendor_name": VENDOR, "version": product_version},
            **({"labels": [f"nexus-audit-chain-head:{chain_head}"]} if chain_head else {}),
        },
        "unmapped": {"nexus_audit": {
            "status": finding.status,
            "current": finding.current,
            "exception": finding.exception.to_json_dict() if finding.exception else None,
            **({"chain_head": chain_head} if chain_head else {}),
        }},
    }


def render_ocsf(findings: Iterable[Finding], *, product_version: str,
                chain_head: str | None = None) -> str:
    """One compact JSON event per line (JSON lines); empty when there is no finding. No
    event holds a raw line separator or C1 control (:func:`nexus_audit.domain.escape.json_text`),
    so readers that split on any Unicode line break still see one event per line."""
    return "".join(escape.json_text(json.dumps(event(f, product_version=product_version,
                                                     chain_head=chain_head),
                                               ensure_ascii=False, separators=(",", ":")))
                   + "\n" for f in findings)
