"""Signed records as the platform writes them: the operator's verification of an artifact and
approvals from the approval webhook, signed with the operator's key (tests hold it, as the
platform team does), for tests that start from an already verified and approved version."""

from __future__ import annotations

from collections.abc import Sequence

from whetstone_operator.api.names import APPROVAL_ANNOTATION
from whetstone_operator.approval import Subject, sign_approval, sign_verification, with_record

from cluster import APPROVAL_KEY, Kube, now_rfc3339, resource_path

API = "whetstone.dev/v1alpha1"
KEY = APPROVAL_KEY.encode()


def sign_model_version(
    kube: Kube,
    namespace: str,
    name: str,
    approvers: Sequence[str] = ("alice",),
    groups: Sequence[str] = ("reviewers",),
) -> None:
    """Record a verified artifact on ModelVersion `name` and an approval by each of
    `approvers`, as the operator and the approval webhook would."""
    path = resource_path(API, "modelversions", namespace, name)
    body = kube.get(path)
    subject = Subject.of(body)
    stamp = now_rfc3339()
    verification = sign_verification(KEY, subject, stamp)
    kube.patch(
        resource_path(API, "modelversions", namespace, name, "status"),
        {"status": {"verification": verification}},
    )
    if not approvers:
        return
    annotations: dict[str, str] = dict(body["metadata"].get("annotations") or {})
    for user in approvers:
        record = sign_approval(KEY, subject, user, groups, stamp)
        annotations[APPROVAL_ANNOTATION] = with_record(annotations, record)
    kube.patch(
        path, {"metadata": {"annotations": {APPROVAL_ANNOTATION: annotations[APPROVAL_ANNOTATION]}}}
    )
