"""ModelVersion: gates, signed approvals and the lifecycle decision, as tables."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
import yaml

from whetstone_operator.api.modelversion import Gate, ModelVersionSpec
from whetstone_operator.approval import APPROVAL_ANNOTATION, Approval, sign, verify
from whetstone_operator.reconcile.core import Create, Obj, Patch, apply_merge_patch
from whetstone_operator.reconcile.finetunejob import JobView, PodView
from whetstone_operator.reconcile.modelversion import (
    Observed,
    decide_modelversion,
    evaluate_gate,
)
from whetstone_operator.render.workload import TrainerDefaults
from whetstone_operator.webhooks import decide_approval_request

from tests.conftest import REPO_ROOT

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
DEFAULTS = TrainerDefaults(image="registry.local/trainer:1")
SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/modelversion.yaml").read_text())
SPEC = SAMPLE["spec"]
DIGEST = SPEC["artifact"]["digest"]
KEY = b"test-approval-key"

GATES = {
    "min holds": ({"metric": "exactMatch", "min": 0.8}, True, "passed"),
    "min fails": ({"metric": "exactMatch", "min": 0.9}, False, "0.86 < min 0.9"),
    "max fails": ({"metric": "rougeL", "max": 0.5}, False, "0.71 > max 0.5"),
    "delta holds": ({"metric": "rougeL", "minDeltaVsBaseline": 0.1}, True, "passed"),
    "delta fails": ({"metric": "exactMatch", "minDeltaVsBaseline": 0.3}, False, "+0.24 < +0.3"),
    "max delta fails": ({"metric": "exactMatch", "maxDeltaVsBaseline": 0.1}, False, "> +0.1"),
    "missing metric": ({"metric": "accuracy", "min": 0.5}, False, "metric accuracy is missing"),
    "missing baseline": (
        {"metric": "perplexity", "maxDeltaVsBaseline": 0},
        False,
        "metric perplexity is missing",
    ),
    "custom metric": ({"metric": "f1", "min": 0.5}, False, "metric f1 is missing"),
}


@pytest.mark.parametrize("name", GATES, ids=list(GATES))
def test_gate(name: str) -> None:
    gate, passed, text = GATES[name]
    result = evaluate_gate(Gate.model_validate(gate), ModelVersionSpec.model_validate(SPEC))
    assert result.passed is passed
    assert text in result.message


def test_custom_metrics_are_gateable() -> None:
    spec = ModelVersionSpec.model_validate(
        {**SPEC, "metrics": {**SPEC["metrics"], "custom": {"f1": 0.7}}}
    )
    assert evaluate_gate(Gate(metric="f1", min=0.5), spec).passed


def _body(annotations: dict[str, str] | None = None, digest: str = DIGEST) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "grader-v4",
            "namespace": "ml",
            "uid": "uid-4",
            "annotations": annotations or {},
        },
        "spec": {**SPEC, "artifact": {**SPEC["artifact"], "digest": digest}},
    }


def _signed(by: str = "alice", uid: str = "uid-4", digest: str = DIGEST) -> dict[str, str]:
    return {
        APPROVAL_ANNOTATION: sign(KEY, "ml", "grader-v4", uid, digest, by, "2026-11-22T20:00:00Z")
    }


def test_signed_approval_verifies() -> None:
    assert verify(KEY, _body(_signed())) == Approval("alice", "2026-11-22T20:00:00Z")


@pytest.mark.parametrize(
    "tamper",
    ["other key", "edited approver", "other object", "other digest", "garbage", "no key"],
)
def test_forged_approval_does_not_verify(tamper: str) -> None:
    body = _body(_signed())
    key: bytes | None = KEY
    if tamper == "other key":
        key = b"another-key"
    elif tamper == "edited approver":
        record = json.loads(body["metadata"]["annotations"][APPROVAL_ANNOTATION])
        record["by"] = "mallory"
        body["metadata"]["annotations"][APPROVAL_ANNOTATION] = json.dumps(record)
    elif tamper == "other object":
        body["metadata"]["uid"] = "uid-5"
    elif tamper == "other digest":
        body = _body(_signed(), digest="sha256:" + "0" * 64)
    elif tamper == "garbage":
        body["metadata"]["annotations"][APPROVAL_ANNOTATION] = "{not json"
    else:
        key = None
    assert verify(key, body) is None


def _verify_job(ok: bool, message: str = "") -> JobView:
    pod = PodView(
        name="v", phase="Succeeded" if ok else "Failed", exit_code=0 if ok else 4, message=message
    )
    if ok:
        return JobView(name="grader-v4-verify", succeeded=1, complete=True, pods=(pod,))
    return JobView(
        name="grader-v4-verify", failed=1, failed_reason="BackoffLimitExceeded", pods=(pod,)
    )


VERIFIED = {"verifiedDigest": DIGEST, "conditions": []}

CASES: dict[str, dict[str, Any]] = {
    "new version starts the verify pod": {
        "status": {},
        "verify": None,
        "phase": "Pending",
        "creates": ["Job/grader-v4-verify"],
    },
    "digest mismatch rejects": {
        "status": {},
        "verify": _verify_job(False, '{"ok": false, "reason": "digest mismatch: manifest.json"}'),
        "phase": "Rejected",
        "check": lambda s: "digest mismatch" in s["message"],
    },
    "missing artifact rejects with the reason": {
        "status": {},
        "verify": _verify_job(False, "artifact s3://models/x/ not found"),
        "phase": "Rejected",
        "check": lambda s: "not found" in s["message"],
    },
    "verified, gates pass, awaiting approval": {
        "status": {},
        "verify": _verify_job(True, json.dumps({"ok": True, "digest": DIGEST})),
        "phase": "Verified",
        "check": lambda s: s["verifiedDigest"] == DIGEST and len(s["gateResults"]) == 2,
    },
    "failing gate rejects with the gate results": {
        "status": VERIFIED,
        "spec": {**SPEC, "gates": [{"metric": "exactMatch", "min": 0.95}]},
        "phase": "Rejected",
        "check": lambda s: s["gateResults"][0]["passed"] is False and "exactMatch" in s["message"],
    },
    "approval recorded with identity": {
        "status": VERIFIED,
        "approval": Approval("alice", "2026-11-22T20:00:00Z"),
        "phase": "Approved",
        "check": lambda s: s["approvedBy"] == "alice" and s["approvedAt"],
    },
    "a verified digest asserts ArtifactVerified even after a stale status write": {
        "status": {
            **VERIFIED,
            "conditions": [
                {"type": "ArtifactVerified", "status": "Unknown", "reason": "Verifying"}
            ],
        },
        "spec": {**SPEC, "approval": {"required": False}},
        "phase": "Approved",
        "check": lambda s: (
            next(c for c in s["conditions"] if c["type"] == "ArtifactVerified")["status"] == "True"
        ),
    },
    "approval not required": {
        "status": VERIFIED,
        "spec": {**SPEC, "approval": {"required": False}},
        "phase": "Approved",
    },
    "revoked approval goes back to Verified": {
        "status": {**VERIFIED, "phase": "Approved", "approvedBy": "alice"},
        "phase": "Verified",
        "check": lambda s: s.get("approvedBy") is None,
    },
    "deployed is Serving": {
        "status": {
            **VERIFIED,
            "phase": "Approved",
            "deployments": [
                {"rollout": "g", "inferenceService": "g", "trafficPercent": 25, "role": "canary"}
            ],
        },
        "approval": Approval("alice", "t"),
        "phase": "Serving",
    },
    "stopped serving returns to Approved": {
        "status": {**VERIFIED, "phase": "Serving", "deployments": []},
        "approval": Approval("alice", "t"),
        "phase": "Approved",
    },
    "superseded while briefly at 0% is still Retired": {
        "status": {**VERIFIED, "phase": "Approved", "supersededBy": "grader-v5"},
        "approval": Approval("alice", "t"),
        "phase": "Retired",
    },
    "superseded after a promotion is Retired": {
        "status": {**VERIFIED, "phase": "Serving", "supersededBy": "grader-v5"},
        "approval": Approval("alice", "t"),
        "phase": "Retired",
    },
    "changed digest is verified again": {
        "status": {**VERIFIED, "verifiedDigest": "sha256:" + "1" * 64, "phase": "Approved"},
        "phase": "Pending",
        "creates": ["Job/grader-v4-verify"],
    },
}


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_decide_modelversion(name: str) -> None:
    case = CASES[name]
    status = copy.deepcopy(case["status"])
    mv = Obj("grader-v4", "ml", "uid-4", 1, case.get("spec", SPEC), status)
    observed = Observed(case.get("verify"), case.get("approval"), DEFAULTS)
    decision = decide_modelversion(mv, observed, NOW)
    merged = apply_merge_patch(status, decision.status)
    assert merged["phase"] == case["phase"]
    creates = [
        f"{a.body['kind']}/{a.body['metadata']['name']}"
        for a in decision.actions
        if isinstance(a, Create)
    ]
    assert creates == case.get("creates", [])
    if "check" in case:
        assert case["check"](merged), merged


def test_verify_job_runs_the_trainer_verify_mode_without_api_access() -> None:
    mv = Obj("grader-v4", "ml", "uid-4", 1, SPEC, {})
    actions = decide_modelversion(mv, Observed(defaults=DEFAULTS), NOW).actions
    (action,) = [a for a in actions if isinstance(a, Create)]
    pod = action.body["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["verify", SPEC["artifact"]["uri"], "--digest", DIGEST]
    assert pod["automountServiceAccountToken"] is False
    assert action.body["metadata"]["ownerReferences"][0]["kind"] == "ModelVersion"


def test_registry_labels_are_patched_onto_the_version_until_they_are_right() -> None:
    unlabelled = Obj("grader-v4", "ml", "uid-4", 1, SPEC, {})
    patches = [
        a for a in decide_modelversion(unlabelled, Observed(), NOW).actions if isinstance(a, Patch)
    ]
    labels = {
        "whetstone.dev/model": str(SPEC["model"]),
        "whetstone.dev/version": str(SPEC["version"]),
    }
    assert patches == [
        Patch(
            "whetstone.dev/v1alpha1", "ModelVersion", "grader-v4", {"metadata": {"labels": labels}}
        )
    ]
    labelled = Obj("grader-v4", "ml", "uid-4", 1, SPEC, {}, labels=labels)
    actions = decide_modelversion(labelled, Observed(), NOW).actions
    assert not [a for a in actions if isinstance(a, Patch)]


APPROVAL_REQUESTS = {
    "plain update": ("UPDATE", {}, {}, None),
    "approve": ("UPDATE", {"whetstone.dev/approve": "true"}, {}, "approve"),
    "revoke": ("UPDATE", {"whetstone.dev/revoke": "true"}, {}, "revoke"),
    "hand-written record": ("UPDATE", {APPROVAL_ANNOTATION: "{}"}, {}, "written only by"),
    "approve at creation": (
        "CREATE",
        {"whetstone.dev/approve": "true"},
        None,
        "after it is created",
    ),
    "both at once": (
        "UPDATE",
        {"whetstone.dev/approve": "1", "whetstone.dev/revoke": "1"},
        {},
        "choose one",
    ),
}


@pytest.mark.parametrize("name", APPROVAL_REQUESTS, ids=list(APPROVAL_REQUESTS))
def test_approval_request(name: str) -> None:
    operation, new_ann, old_ann, want = APPROVAL_REQUESTS[name]
    new = {"metadata": {"annotations": new_ann}}
    old = None if old_ann is None else {"metadata": {"annotations": old_ann}}
    if want in (None, "approve", "revoke"):
        assert decide_approval_request(operation, new, old) == want
    else:
        with pytest.raises(kopf.AdmissionError, match=want):
            decide_approval_request(operation, new, old)
