"""Approvals that cannot be forged: the approval webhook signs who approved what, the
operator (and the Rollout controller) only trust a signature they can verify.

The signature (HMAC-SHA256 with the operator's approval key) binds the approver, the time,
the object's namespace, name and uid, and the artifact digest, so an approval copied to
another object or left on a changed artifact does not verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from whetstone_operator.api.names import (
    APPROVAL_ANNOTATION,
    APPROVE_ANNOTATION,
    REVOKE_ANNOTATION,
)

__all__ = ["APPROVAL_ANNOTATION", "APPROVE_ANNOTATION", "REVOKE_ANNOTATION", "Approval"]
APPROVE_VERB = "approve"


@dataclass(frozen=True)
class Approval:
    """A verified approval."""

    by: str
    at: str


def _payload(namespace: str, name: str, uid: str, digest: str, by: str, at: str) -> bytes:
    return json.dumps([namespace, name, uid, digest, by, at], separators=(",", ":")).encode()


def sign(key: bytes, namespace: str, name: str, uid: str, digest: str, by: str, at: str) -> str:
    """The annotation value recording that `by` approved this object's artifact at `at`."""
    mac = hmac.new(key, _payload(namespace, name, uid, digest, by, at), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    return json.dumps({"by": by, "at": at, "sig": sig}, separators=(",", ":"))


def verify(key: bytes | None, body: dict[str, Any]) -> Approval | None:
    """The approval recorded on a ModelVersion body, if its signature holds."""
    if key is None:
        return None
    meta = body.get("metadata", {})
    raw = (meta.get("annotations") or {}).get(APPROVAL_ANNOTATION)
    if not raw:
        return None
    try:
        record = json.loads(raw)
        by, at, sig = str(record["by"]), str(record["at"]), str(record["sig"])
    except (ValueError, KeyError, TypeError):
        return None
    digest = str(((body.get("spec") or {}).get("artifact") or {}).get("digest", ""))
    expected = json.loads(
        sign(
            key,
            meta.get("namespace", ""),
            meta.get("name", ""),
            meta.get("uid", ""),
            digest,
            by,
            at,
        )
    )["sig"]
    return Approval(by=by, at=at) if hmac.compare_digest(expected, sig) else None
