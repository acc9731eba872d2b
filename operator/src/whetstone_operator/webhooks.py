"""Admission webhooks served by the operator (only imported when the webhook is enabled).

- approval: `kubectl annotate mv X whetstone.dev/approve=true` (or `whetstone.dev/revoke`) is
  checked against the RBAC verb `approve` with a SubjectAccessReview; an allowed approval is
  stamped as a signed `whetstone.dev/approval` record, a denied one is refused with the reason.
  Nobody can write that record by hand.
- spec validation (optional): the same pydantic models as the operator, so `kubectl apply` of a
  bad object fails at once; and ModelVersion `spec.artifact` / `spec.source` stay immutable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from whetstone_operator import k8s, settings
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.api.common import format_time
from whetstone_operator.api.errors import SpecError, parse_spec
from whetstone_operator.approval import (
    APPROVAL_ANNOTATION,
    APPROVE_ANNOTATION,
    REVOKE_ANNOTATION,
    sign,
)
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
    return "approve" if asks[0] == APPROVE_ANNOTATION else "revoke"


@kopf.on.mutate(
    GROUP, VERSION, "modelversions", id="whetstone-approval", operations=["CREATE", "UPDATE"]
)
def approval(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    userinfo: dict[str, Any] = dict(kwargs.get("userinfo") or {})
    operation = str(kwargs.get("operation", "UPDATE"))
    old = kwargs.get("old")
    ask = decide_approval_request(operation, dict(body), dict(old) if old else None)
    if ask is None:
        return
    meta = body["metadata"]
    user = str(userinfo.get("username", "unknown"))
    allowed, reason = k8s.can_approve(userinfo, meta["namespace"], meta["name"])
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
    key = settings.OPTIONS.approval_key
    if key is None:
        raise kopf.AdmissionError("approvals are not configured: the operator has no key", 500)
    digest = str(((body.get("spec") or {}).get("artifact") or {}).get("digest", ""))
    at = format_time(datetime.now(UTC))
    annotations[APPROVAL_ANNOTATION] = sign(
        key, meta["namespace"], meta["name"], meta.get("uid", ""), digest, user, at
    )
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
def validate_spec(body: kopf.Body, resource: kopf.Resource, **kwargs: Any) -> None:
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
