"""Records the operator trusts because it can check them: approvals (signed by the approval
webhook) and artifact verifications (signed by the operator after a verify pod it owns
reported the digest it was asked to check). Pure.

An approval's signature (HMAC-SHA256 with the operator's approval key) binds the approver,
their groups, the time, the object's namespace, name, uid and generation, and everything a
Rollout serves or a gate judged (artifact, base model, gates, metrics, source): an approval
copied to another object, or left on an object whose spec changed since, does not verify.
A verification binds the object and its artifact (URI, format, digest).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from whetstone_operator.api.modelversion import ModelVersionSpec
from whetstone_operator.api.names import (
    APPROVAL_ANNOTATION,
    APPROVE_ANNOTATION,
    REVOKE_ANNOTATION,
)
from whetstone_operator.api.platformpolicy import ApprovalRules

__all__ = [
    "APPROVAL_ANNOTATION",
    "APPROVE_ANNOTATION",
    "REVOKE_ANNOTATION",
    "Approver",
    "Trust",
    "assess",
]
APPROVE_VERB = "approve"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
_SERVED = {"artifact", "base_model", "gates", "metrics", "source"}


@dataclass(frozen=True)
class Approver:
    """An approval whose signature holds."""

    user: str
    groups: tuple[str, ...]
    at: str


@dataclass(frozen=True)
class Trust:
    """What a ModelVersion's signed records establish under a policy's approval rules."""

    verified: bool
    approvers: tuple[Approver, ...]  # the approvals that count
    required: int  # distinct approvers needed (0: no approval required)
    refused: tuple[str, ...] = ()  # why some valid approvals do not count
    stale: int = 0  # approval records that no longer verify (changed after approval)

    @property
    def approved(self) -> bool:
        return len(self.approvers) >= self.required


def is_service_account(user: str) -> bool:
    return user.startswith(SERVICE_ACCOUNT_PREFIX)


def _mac(key: bytes, parts: Sequence[Any]) -> str:
    payload = json.dumps(list(parts), separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


@dataclass(frozen=True)
class Subject:
    """The ModelVersion a record is about; its spec is parsed once, however many records
    are checked."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]

    @cached_property
    def parsed(self) -> ModelVersionSpec | None:
        try:
            return ModelVersionSpec.model_validate(dict(self.spec))
        except ValidationError:
            return None

    @cached_property
    def served(self) -> dict[str, Any] | None:
        """The parts of the spec an approval covers, normalised (defaults filled, so the API
        server's defaulting never changes them); None when the spec does not parse."""
        if self.parsed is None:
            return None
        return self.parsed.model_dump(
            mode="json", by_alias=True, exclude_none=True, include=_SERVED
        )

    @cached_property
    def artifact(self) -> dict[str, Any] | None:
        """The artifact's URI, format and digest (what a verification covers)."""
        if self.parsed is None:
            return None
        return self.parsed.artifact.model_dump(mode="json", include={"uri", "format", "digest"})

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Subject:
        meta = body.get("metadata") or {}
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            spec=body.get("spec") or {},
        )


def signed_parts(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a ModelVersion body the records are checked on (small: kept in an index)."""
    meta = body.get("metadata") or {}
    verification = (body.get("status") or {}).get("verification")
    approval = (meta.get("annotations") or {}).get(APPROVAL_ANNOTATION)
    return {
        "metadata": {
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "generation": meta.get("generation"),
            "annotations": {APPROVAL_ANNOTATION: approval} if approval else {},
        },
        "spec": dict(body.get("spec") or {}),
        "status": {"verification": verification} if verification else {},
    }


# ----------------------------------------------------------------------------- approvals


def _approval_mac(key: bytes, subject: Subject, user: str, groups: Sequence[str], at: str) -> str:
    parts = [
        "approval",
        subject.namespace,
        subject.name,
        subject.uid,
        subject.generation,
        subject.served,
        user,
        sorted(groups),
        at,
    ]
    return _mac(key, parts)


def sign_approval(
    key: bytes, subject: Subject, user: str, groups: Sequence[str], at: str
) -> dict[str, Any]:
    """One approval record."""
    sig = _approval_mac(key, subject, user, groups, at)
    return {"user": user, "groups": sorted(groups), "at": at, "sig": sig}


def records(annotations: Mapping[str, str]) -> list[dict[str, Any]]:
    """The approval records in the annotation (a JSON list; anything else counts as none)."""
    raw = annotations.get(APPROVAL_ANNOTATION)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    return [r for r in items if isinstance(r, dict)]


def with_record(annotations: Mapping[str, str], record: Mapping[str, Any]) -> str:
    """The annotation value with `record` added (replacing that user's earlier record)."""
    kept = [r for r in records(annotations) if r.get("user") != record["user"]]
    return json.dumps([*kept, dict(record)], separators=(",", ":"))


def valid_approvals(
    key: bytes, subject: Subject, annotations: Mapping[str, str]
) -> tuple[list[Approver], int]:
    """(approvals whose signature holds, one per user; how many records do not verify)."""
    valid: dict[str, Approver] = {}
    stale = 0
    for record in records(annotations):
        try:
            user, at, sig = str(record["user"]), str(record["at"]), str(record["sig"])
            groups = tuple(str(g) for g in record.get("groups") or [])
        except (KeyError, TypeError):
            stale += 1
            continue
        if hmac.compare_digest(_approval_mac(key, subject, user, groups, at), sig):
            valid[user] = Approver(user, tuple(sorted(groups)), at)
        else:
            stale += 1
    return sorted(valid.values(), key=lambda a: a.at), stale


def approver_refusal(
    user: str, groups: Sequence[str], rules: ApprovalRules, policy: str = ""
) -> str | None:
    """Why `user` may not count as an approver under `rules` (None when they may); `policy`
    names the PlatformPolicy the rules are from."""
    where = f"PlatformPolicy {policy} spec.approval" if policy else "spec.approval"
    if is_service_account(user) and not rules.allow_service_accounts:
        return (
            f"{user} is a ServiceAccount and {where}.allowServiceAccounts is false: "
            "only people approve"
        )
    if rules.approver_groups and not set(groups) & set(rules.approver_groups):
        return f"{user} is in none of {where}.approverGroups ({', '.join(rules.approver_groups)})"
    return None


def assess(
    key: bytes,
    body: Mapping[str, Any],
    rules: ApprovalRules,
    verified: bool | None = None,
    policy: str = "",
) -> Trust:
    """The trust a ModelVersion's records establish: verified artifact, and the approvals
    that count under `rules` (a spec's approval.required can add the requirement, never
    lift it)."""
    subject = Subject.of(body)
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    parsed = subject.parsed
    wanted = rules.required or (parsed is None or parsed.approval.required)
    valid, stale = valid_approvals(key, subject, annotations)
    counted: list[Approver] = []
    refused: list[str] = []
    for approver in valid:
        why = approver_refusal(approver.user, approver.groups, rules, policy)
        if why is None:
            counted.append(approver)
        else:
            refused.append(why)
    if verified is None:
        verified = _verified(key, subject, (body.get("status") or {}).get("verification"))
    return Trust(
        verified=verified,
        approvers=tuple(counted),
        required=rules.min_approvers if wanted else 0,
        refused=tuple(refused),
        stale=stale,
    )


# ----------------------------------------------------------------------------- verification


def sign_verification(key: bytes, subject: Subject, at: str) -> dict[str, Any] | None:
    """The status.verification record for a verified artifact (None for a bad spec)."""
    artifact = subject.artifact
    if artifact is None:
        return None
    sig = _mac(key, ["verified", subject.namespace, subject.name, subject.uid, artifact, at])
    return {"digest": artifact["digest"], "at": at, "sig": sig}


def is_verified(key: bytes, body: Mapping[str, Any]) -> bool:
    """Whether status.verification is the operator's signed record for this artifact."""
    return _verified(key, Subject.of(body), (body.get("status") or {}).get("verification"))


def _verified(key: bytes, subject: Subject, record: Any) -> bool:
    if not isinstance(record, Mapping) or subject.artifact is None:
        return False
    parts = ["verified", subject.namespace, subject.name, subject.uid, subject.artifact]
    expected = _mac(key, [*parts, str(record.get("at"))])
    return hmac.compare_digest(expected, str(record.get("sig", "")))
