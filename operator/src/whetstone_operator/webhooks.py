"""Admission webhooks served by the operator (only imported when the webhook is enabled).

- approval: `kubectl annotate mv X whetstone.dev/approve=true` (or `whetstone.dev/revoke`) is
  checked against the RBAC verb `approve` with a SubjectAccessReview and against the
  namespace's PlatformPolicy (no ServiceAccounts unless allowed, approver groups, nobody
  approves what they created); an allowed approval is added as a signed record to
  `whetstone.dev/approval`, a denied one is refused with the reason. Nobody can write that
  record by hand.
- created-by: who created a FineTuneJob or ModelVersion is stamped at creation
  (`whetstone.dev/created-by`) and can never be changed.
- spec validation (optional): the same pydantic models as the operator, so `kubectl apply` of a
  bad object fails at once; and ModelVersion `spec.artifact` / `spec.source` stay immutable.

Every handler is a coroutine with its API calls in threads of their own: admission answers never
queue behind reconciles in kopf's handler threads, whatever those are waiting on.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import kopf

from whetstone_operator import k8s, settings
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.api.common import format_time
from whetstone_operator.api.errors import SpecError, parse_spec
from whetstone_operator.api.names import CREATED_BY_ANNOTATION
from whetstone_operator.approval import (
    APPROVAL_ANNOTATION,
    APPROVE_ANNOTATION,
    REVOKE_ANNOTATION,
    Subject,
    approver_refusal,
    sign_approval,
    with_record,
)
from whetstone_operator.reconcile.policy import Policy, PolicyEntry, policy_for
from whetstone_operator.reconcile.validation import spec_model

_KINDS = {"finetunejobs": "FineTuneJob", "modelversions": "ModelVersion", "rollouts": "Rollout"}


def _annotations(obj: Any) -> dict[str, str]:
    if not obj:
        return {}
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def decide_approval_request(
    operation: str,
    new: dict[str, Any],
    old: dict[str, Any] | None,
) -> str | None:
    """What the request asks of the approval webhook: "approve", "revoke", or None; raises
    AdmissionError for a hand-written approval record or an approval at creation."""
    ann, old_ann = _annotations(new), _annotations(old)
    asks = [a for a in (APPROVE_ANNOTATION, REVOKE_ANNOTATION) if a in ann]
    if ann.get(APPROVAL_ANNOTATION) != old_ann.get(APPROVAL_ANNOTATION) and not asks:
        raise kopf.AdmissionError(
            f"{APPROVAL_ANNOTATION} is written only by the approval webhook: annotate "
            f"{APPROVE_ANNOTATION}=true to approve (needs the approve verb)",
            code=403,
        )
    if not asks:
        return None
    if operation == "CREATE":
        raise kopf.AdmissionError(
            "a ModelVersion is approved after it is created and verified: remove "
            f"{asks[0]} from the manifest and annotate the object instead",
            code=400,
        )
    if len(asks) == 2:
        raise kopf.AdmissionError("approve and revoke at once: choose one", code=400)
    if old is not None and (new.get("spec") or {}) != (old.get("spec") or {}):
        raise kopf.AdmissionError(
            "an approval covers the spec as it is: approve without changing the spec in the "
            "same request",
            code=400,
        )
    return "approve" if asks[0] == APPROVE_ANNOTATION else "revoke"


def decide_created_by(
    operation: str, user: str, new: dict[str, Any], old: dict[str, Any] | None
) -> str | None:
    """The created-by annotation to stamp (on CREATE), None to leave it; raises
    AdmissionError for a change to it afterwards."""
    if operation == "CREATE":
        return user
    before = _annotations(old).get(CREATED_BY_ANNOTATION)
    if _annotations(new).get(CREATED_BY_ANNOTATION) != before:
        raise kopf.AdmissionError(
            f"{CREATED_BY_ANNOTATION} records who created the object and cannot be changed",
            code=403,
        )
    return None


def self_approval(user: str, creators: list[str | None], policy: Policy) -> str | None:
    """Why `user` may not approve what they created (None when they may)."""
    if not policy.spec.approval.forbid_self_approval or user not in creators:
        return None
    return (
        f"{user} created this ModelVersion or the FineTuneJob that made it, and "
        f"{policy.field('approval.forbidSelfApproval')} is true: someone else must approve"
    )


def _namespace_policy(namespace: str) -> Policy:
    ns = k8s.get("v1", "Namespace", None, namespace) or {}
    labels = dict((ns.get("metadata") or {}).get("labels") or {})
    entries = [
        PolicyEntry(
            name=p["metadata"]["name"], spec=p.get("spec") or {}, status=p.get("status") or {}
        )
        for p in k8s.list_objects(GROUP + "/" + VERSION, "PlatformPolicy", None)
    ]
    return policy_for(namespace, labels, entries)


def _creators(body: dict[str, Any]) -> list[str | None]:
    meta = body["metadata"]
    found = [_annotations(body).get(CREATED_BY_ANNOTATION)]
    job = ((body.get("spec") or {}).get("source") or {}).get("fineTuneJob")
    if job:
        ftj = k8s.get(GROUP + "/" + VERSION, "FineTuneJob", meta["namespace"], job)
        found.append(_annotations(ftj).get(CREATED_BY_ANNOTATION))
    return found


@kopf.on.mutate(
    GROUP,
    VERSION,
    "finetunejobs",
    id="whetstone-created-by-finetunejob",
    operations=["CREATE", "UPDATE"],
)
@kopf.on.mutate(
    GROUP,
    VERSION,
    "modelversions",
    id="whetstone-created-by-modelversion",
    operations=["CREATE", "UPDATE"],
)
async def created_by(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    user = str((kwargs.get("userinfo") or {}).get("username", "unknown"))
    old = kwargs.get("old")
    stamp = decide_created_by(
        str(kwargs.get("operation", "UPDATE")), user, dict(body), dict(old) if old else None
    )
    if stamp is not None:
        patch.setdefault("metadata", {}).setdefault("annotations", {})[CREATED_BY_ANNOTATION] = (
            stamp
        )


@kopf.on.mutate(
    GROUP, VERSION, "modelversions", id="whetstone-approval", operations=["CREATE", "UPDATE"]
)
async def approval(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    userinfo: dict[str, Any] = dict(kwargs.get("userinfo") or {})
    operation = str(kwargs.get("operation", "UPDATE"))
    old = kwargs.get("old")
    ask = decide_approval_request(operation, dict(body), dict(old) if old else None)
    if ask is None:
        return
    meta = body["metadata"]
    user = str(userinfo.get("username", "unknown"))
    groups = [str(g) for g in userinfo.get("groups") or []]
    allowed, reason = await asyncio.to_thread(
        k8s.can_approve, userinfo, meta["namespace"], meta["name"]
    )
    if not allowed:
        raise kopf.AdmissionError(
            f"{user} may not {ask} ModelVersion {meta['name']}: that needs the 'approve' verb "
            f"on modelversions.{GROUP} in namespace {meta['namespace']} (bind the "
            f"whetstone-approver ClusterRole)" + (f"; authorizer: {reason}" if reason else ""),
            code=403,
        )
    annotations = patch.setdefault("metadata", {}).setdefault("annotations", {})
    if ask == "revoke":
        annotations[APPROVAL_ANNOTATION] = None
        annotations[REVOKE_ANNOTATION] = None
        return
    policy = await asyncio.to_thread(_namespace_policy, meta["namespace"])
    refusal = approver_refusal(user, groups, policy.spec.approval, policy.name)
    if refusal is not None:
        raise kopf.AdmissionError(refusal, code=403)
    creators = await asyncio.to_thread(_creators, dict(body))
    refusal = self_approval(user, creators, policy)
    if refusal is not None:
        raise kopf.AdmissionError(refusal, code=403)
    record = sign_approval(
        settings.signing_key(),
        Subject.of(dict(body)),
        user,
        groups,
        format_time(datetime.now(UTC)),
    )
    annotations[APPROVAL_ANNOTATION] = with_record(_annotations(body), record)
    annotations[APPROVE_ANNOTATION] = None


@kopf.on.validate(
    GROUP,
    VERSION,
    "finetunejobs",
    id="whetstone-validate-finetunejob",
    operations=["CREATE", "UPDATE"],
)
@kopf.on.validate(
    GROUP,
    VERSION,
    "modelversions",
    id="whetstone-validate-modelversion",
    operations=["CREATE", "UPDATE"],
)
@kopf.on.validate(
    GROUP, VERSION, "rollouts", id="whetstone-validate-rollout", operations=["CREATE", "UPDATE"]
)
async def validate_spec(body: kopf.Body, resource: kopf.Resource, **kwargs: Any) -> None:
    old = kwargs.get("old")
    if resource.plural == "modelversions" and old:
        for part in ("artifact", "source"):
            before = (old.get("spec") or {}).get(part)
            after = (body.get("spec") or {}).get(part)
            if before is not None and before != after:
                raise kopf.AdmissionError(
                    f"spec.{part} is immutable: register a new ModelVersion instead", code=422
                )
    if not settings.OPTIONS.webhook_validate_specs:
        return
    try:
        parse_spec(spec_model(_KINDS[resource.plural]), dict(body.get("spec") or {}))
    except SpecError as exc:
        raise kopf.AdmissionError("; ".join(exc.messages), code=422) from exc
