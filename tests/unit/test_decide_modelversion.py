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
from whetstone_operator.api.platformpolicy import ApprovalRules, PlatformPolicySpec
from whetstone_operator.approval import (
    APPROVAL_ANNOTATION,
    Subject,
    assess,
    is_verified,
    sign_approval,
    sign_verification,
    with_record,
)
from whetstone_operator.reconcile.core import Create, Obj, Patch, apply_merge_patch
from whetstone_operator.reconcile.finetunejob import JobView, PodView
from whetstone_operator.reconcile.modelversion import (
    Observed,
    decide_modelversion,
    evaluate_gate,
)
from whetstone_operator.reconcile.policy import Policy
from whetstone_operator.render.workload import TrainerDefaults
from whetstone_operator.webhooks import decide_approval_request, decide_created_by, self_approval

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


UID, GEN = "uid-4", 1
AT = "2026-11-22T20:00:00Z"


def _body(
    spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    uid: str = UID,
    generation: int = GEN,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "grader-v4",
            "namespace": "ml",
            "uid": uid,
            "generation": generation,
            "annotations": annotations or {},
        },
        "spec": spec if spec is not None else SPEC,
        "status": status or {},
    }


def _approved(
    *users: str | tuple[str, list[str]], spec: dict[str, Any] | None = None, generation: int = GEN
) -> dict[str, str]:
    """The approval annotation as the webhook writes it for `users` ((user, groups) pairs)."""
    annotations: dict[str, str] = {}
    subject = Subject.of(_body(spec, generation=generation))
    for entry in users:
        user, groups = entry if isinstance(entry, tuple) else (entry, ["reviewers"])
        record = sign_approval(KEY, subject, user, groups, AT)
        annotations[APPROVAL_ANNOTATION] = with_record(annotations, record)
    return annotations


def _verification(spec: dict[str, Any] | None = None, uid: str = UID) -> dict[str, Any]:
    record = sign_verification(KEY, Subject.of(_body(spec, uid=uid)), AT)
    assert record is not None
    return record


RULES = ApprovalRules()


def test_signed_approval_verifies_and_is_counted() -> None:
    trust = assess(KEY, _body(annotations=_approved("alice")), RULES, verified=True)
    assert [a.user for a in trust.approvers] == ["alice"] and trust.approved
    assert trust.stale == 0


OTHER_SPEC_CHANGES = {
    "gates edited": {"gates": [{"metric": "exactMatch", "min": 0.1}]},
    "metrics edited": {"metrics": {**SPEC["metrics"], "exactMatch": 0.99}},
    "base model moved": {"baseModel": {"uri": "hf://someone/else"}},
    "artifact moved": {"artifact": {**SPEC["artifact"], "uri": "s3://evil/bucket/"}},
    "other digest": {"artifact": {**SPEC["artifact"], "digest": "sha256:" + "0" * 64}},
    "lineage edited": {"source": {"fineTuneJob": "someone-else"}},
}


@pytest.mark.parametrize("change", OTHER_SPEC_CHANGES, ids=list(OTHER_SPEC_CHANGES))
def test_an_approval_does_not_survive_a_change_to_what_it_covers(change: str) -> None:
    spec = {**SPEC, **OTHER_SPEC_CHANGES[change]}
    body = _body(spec, annotations=_approved("alice"))
    trust = assess(KEY, body, RULES, verified=True)
    assert not trust.approved and trust.stale == 1


@pytest.mark.parametrize(
    "tamper",
    ["other key", "edited user", "added group", "other object", "newer generation", "garbage"],
)
def test_forged_approval_does_not_verify(tamper: str) -> None:
    annotations = _approved("alice")
    body = _body(annotations=annotations)
    key = KEY
    if tamper == "other key":
        key = b"another-key"
    elif tamper in ("edited user", "added group"):
        records = json.loads(annotations[APPROVAL_ANNOTATION])
        if tamper == "edited user":
            records[0]["user"] = "mallory"
        else:
            records[0]["groups"] = ["reviewers", "system:masters"]
        body["metadata"]["annotations"][APPROVAL_ANNOTATION] = json.dumps(records)
    elif tamper == "other object":
        body["metadata"]["uid"] = "uid-5"
    elif tamper == "newer generation":
        body["metadata"]["generation"] = GEN + 1
    else:
        body["metadata"]["annotations"][APPROVAL_ANNOTATION] = "{not json"
    assert assess(key, body, RULES, verified=True).approvers == ()


TRUST = {
    # name: (rules, spec approval, approvers, counted, required)
    "one approver is enough by default": (RULES, None, ["alice"], ["alice"], 1),
    "two-person rule waits for a second person": (
        ApprovalRules(min_approvers=2),
        None,
        ["alice"],
        ["alice"],
        2,
    ),
    "two distinct people pass the two-person rule": (
        ApprovalRules(min_approvers=2),
        None,
        ["alice", "bob"],
        ["alice", "bob"],
        2,
    ),
    "a service account does not count": (
        RULES,
        None,
        ["system:serviceaccount:argocd:argocd-application-controller"],
        [],
        1,
    ),
    "a service account counts where the policy allows it": (
        ApprovalRules(allow_service_accounts=True),
        None,
        ["system:serviceaccount:ml:bot"],
        ["system:serviceaccount:ml:bot"],
        1,
    ),
    "outside the approver groups does not count": (
        ApprovalRules(approver_groups=["sme"]),
        None,
        [("alice", ["reviewers"]), ("carol", ["sme"])],
        ["carol"],
        1,
    ),
    "the tenant cannot lift a required approval": (
        RULES,
        {"required": False},
        [],
        [],
        1,
    ),
    "lifted where the policy does not require one": (
        ApprovalRules(required=False),
        {"required": False},
        [],
        [],
        0,
    ),
    "a tenant may require one the policy does not": (
        ApprovalRules(required=False),
        {"required": True},
        [],
        [],
        1,
    ),
}


@pytest.mark.parametrize("name", TRUST, ids=list(TRUST))
def test_trust_under_the_policy(name: str) -> None:
    rules, approval, users, counted, required = TRUST[name]
    spec = {**SPEC, "approval": approval} if approval is not None else SPEC
    trust = assess(KEY, _body(spec, annotations=_approved(*users, spec=spec)), rules, verified=True)
    assert [a.user for a in trust.approvers] == counted
    assert trust.required == required
    assert trust.approved is (len(counted) >= required)


def test_verification_record_binds_object_and_artifact() -> None:
    good = _body(status={"verification": _verification()})
    assert is_verified(KEY, good)
    forged = {"digest": DIGEST, "at": AT, "sig": "forged"}
    assert not is_verified(KEY, _body(status={"verification": forged}))
    assert not is_verified(KEY, _body(status={"verification": _verification(uid="uid-5")}))
    moved = {**SPEC, "artifact": {**SPEC["artifact"], "uri": "s3://evil/bucket/"}}
    assert not is_verified(KEY, _body(moved, status={"verification": _verification()}))
    assert not is_verified(b"other", good)


def _verify_job(ok: bool, message: str = "", owner: str = UID) -> JobView:
    pod = PodView(
        name="v", phase="Succeeded" if ok else "Failed", exit_code=0 if ok else 4, message=message
    )
    if ok:
        return JobView(
            name="grader-v4-verify", succeeded=1, complete=True, pods=(pod,), owner_uid=owner
        )
    return JobView(
        name="grader-v4-verify",
        failed=1,
        failed_reason="BackoffLimitExceeded",
        pods=(pod,),
        owner_uid=owner,
    )


VERIFIED = {"verifiedDigest": DIGEST, "conditions": [], "verification": "signed"}
RESULT = json.dumps({"ok": True, "digest": DIGEST})
NOT_REQUIRED = Policy(name="open", spec=PlatformPolicySpec(approval=ApprovalRules(required=False)))

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
        "verify": _verify_job(True, RESULT),
        "phase": "Verified",
        "check": lambda s: (
            s["verifiedDigest"] == DIGEST
            and s["verification"]["digest"] == DIGEST
            and len(s["gateResults"]) == 2
        ),
    },
    "a result without the digest it was asked to check is no verification": {
        "status": {},
        "verify": _verify_job(True, json.dumps({"ok": True})),
        "phase": "Rejected",
        "check": lambda s: "no digest" in s["message"] and "verification" not in s,
    },
    "a verify Job someone else made is never read": {
        "status": {},
        "verify": _verify_job(True, RESULT, owner="uid-of-something-else"),
        "phase": "Pending",
        "check": lambda s: (
            "verification" not in s
            and _cond(s, "ChildConflict")["status"] == "True"
            and "not owned" in _cond(s, "ChildConflict")["message"]
        ),
        "events": ["ChildConflict"],
    },
    "a forged status is not a verification": {
        "status": {
            "verifiedDigest": DIGEST,
            "phase": "Approved",
            "verification": {"digest": DIGEST, "at": AT, "sig": "forged"},
            "approvedBy": "mallory",
        },
        "verify": None,
        "phase": "Pending",
        "creates": ["Job/grader-v4-verify"],
        "check": lambda s: "verification" not in s and s.get("approvedBy") is None,
    },
    "failing gate rejects with the gate results": {
        "status": VERIFIED,
        "spec": {**SPEC, "gates": [{"metric": "exactMatch", "min": 0.95}]},
        "phase": "Rejected",
        "check": lambda s: s["gateResults"][0]["passed"] is False and "exactMatch" in s["message"],
    },
    "approval recorded with identity": {
        "status": VERIFIED,
        "approvers": ["alice"],
        "phase": "Approved",
        "check": lambda s: (
            s["approvedBy"] == "alice" and s["approvedAt"] and s["approvals"][0]["user"] == "alice"
        ),
        "events": ["Approved"],
    },
    "two-person rule: one approval waits": {
        "status": VERIFIED,
        "approvers": ["alice"],
        "policy": Policy(
            name="strict", spec=PlatformPolicySpec(approval=ApprovalRules(min_approvers=2))
        ),
        "phase": "Verified",
        "check": lambda s: (
            _cond(s, "Approved")["reason"] == "AwaitingApprovers"
            and "1 of 2" in _cond(s, "Approved")["message"]
            and "PlatformPolicy strict spec.approval.minApprovers"
            in _cond(s, "Approved")["message"]
        ),
    },
    "two-person rule: two people approve": {
        "status": VERIFIED,
        "approvers": ["alice", "bob"],
        "policy": Policy(
            name="strict", spec=PlatformPolicySpec(approval=ApprovalRules(min_approvers=2))
        ),
        "phase": "Approved",
        "check": lambda s: [a["user"] for a in s["approvals"]] == ["alice", "bob"],
    },
    "a service account's approval does not count": {
        "status": VERIFIED,
        "approvers": ["system:serviceaccount:argocd:argocd-application-controller"],
        "phase": "Verified",
        "check": lambda s: "allowServiceAccounts" in _cond(s, "Approved")["message"],
        "events": ["ApproverNotCounted"],
    },
    "changed after approval revokes it": {
        "status": {
            **VERIFIED,
            "phase": "Approved",
            "approvedBy": "alice",
            "approvals": [{"user": "alice", "time": AT}],
        },
        "approvers": ["alice"],
        "approved_spec": SPEC,
        "spec": {**SPEC, "gates": [{"metric": "exactMatch", "min": 0.1}]},
        "phase": "Verified",
        "check": lambda s: (
            _cond(s, "Approved")["reason"] == "ChangedAfterApproval" and s.get("approvedBy") is None
        ),
        "events": ["ChangedAfterApproval"],
    },
    "a verified record asserts ArtifactVerified even after a stale status write": {
        "status": {
            **VERIFIED,
            "conditions": [
                {"type": "ArtifactVerified", "status": "Unknown", "reason": "Verifying"}
            ],
        },
        "spec": {**SPEC, "approval": {"required": False}},
        "policy": NOT_REQUIRED,
        "phase": "Approved",
        "check": lambda s: _cond(s, "ArtifactVerified")["status"] == "True",
    },
    "approval not required where the policy lifts it": {
        "status": VERIFIED,
        "spec": {**SPEC, "approval": {"required": False}},
        "policy": NOT_REQUIRED,
        "phase": "Approved",
        "check": lambda s: _cond(s, "Approved")["reason"] == "NotRequired",
    },
    "a tenant switching approval off changes nothing": {
        "status": VERIFIED,
        "spec": {**SPEC, "approval": {"required": False}},
        "phase": "Verified",
        "check": lambda s: _cond(s, "Approved")["status"] == "False",
    },
    "revoked approval goes back to Verified": {
        "status": {
            **VERIFIED,
            "phase": "Approved",
            "approvedBy": "alice",
            "approvals": [{"user": "alice", "time": AT}],
        },
        "phase": "Verified",
        "check": lambda s: s.get("approvedBy") is None,
        "events": ["ApprovalRevoked"],
    },
    "deployed is Serving": {
        "status": {
            **VERIFIED,
            "phase": "Approved",
            "deployments": [
                {"rollout": "g", "inferenceService": "g", "trafficPercent": 25, "role": "canary"}
            ],
        },
        "approvers": ["alice"],
        "phase": "Serving",
    },
    "stopped serving returns to Approved": {
        "status": {**VERIFIED, "phase": "Serving", "deployments": []},
        "approvers": ["alice"],
        "phase": "Approved",
    },
    "superseded while briefly at 0% is still Retired": {
        "status": {**VERIFIED, "phase": "Approved", "supersededBy": "grader-v5"},
        "approvers": ["alice"],
        "phase": "Retired",
    },
    "superseded after a promotion is Retired": {
        "status": {**VERIFIED, "phase": "Serving", "supersededBy": "grader-v5"},
        "approvers": ["alice"],
        "phase": "Retired",
    },
    "changed digest is verified again": {
        "status": {**VERIFIED, "phase": "Approved"},
        "verified_spec": SPEC,
        "spec": {**SPEC, "artifact": {**SPEC["artifact"], "digest": "sha256:" + "1" * 64}},
        "phase": "Pending",
        "creates": ["Job/grader-v4-verify"],
    },
}


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_decide_modelversion(name: str) -> None:
    case = CASES[name]
    spec = case.get("spec", SPEC)
    status = copy.deepcopy(case["status"])
    if status.get("verification") == "signed":
        status["verification"] = _verification(case.get("verified_spec", spec))
    annotations = _approved(*case.get("approvers", []), spec=case.get("approved_spec", spec))
    mv = Obj("grader-v4", "ml", UID, GEN, spec, status, annotations=annotations)
    observed = Observed(
        key=KEY,
        verify_job=case.get("verify"),
        policy=case.get("policy", Policy()),
        defaults=DEFAULTS,
    )
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
    reasons = {e.reason for e in decision.events}
    for reason in case.get("events", []):
        assert reason in reasons, decision.events


def test_verify_job_runs_the_trainer_verify_mode_without_api_access() -> None:
    mv = Obj("grader-v4", "ml", "uid-4", 1, SPEC, {})
    actions = decide_modelversion(mv, Observed(key=KEY, defaults=DEFAULTS), NOW).actions
    (action,) = [a for a in actions if isinstance(a, Create)]
    pod = action.body["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["verify", SPEC["artifact"]["uri"], "--digest", DIGEST]
    assert pod["automountServiceAccountToken"] is False
    assert action.body["metadata"]["ownerReferences"][0]["kind"] == "ModelVersion"


def test_registry_labels_are_patched_onto_the_version_until_they_are_right() -> None:
    unlabelled = Obj("grader-v4", "ml", "uid-4", 1, SPEC, {})
    patches = [
        a
        for a in decide_modelversion(unlabelled, Observed(key=KEY), NOW).actions
        if isinstance(a, Patch)
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
    actions = decide_modelversion(labelled, Observed(key=KEY), NOW).actions
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
    "approve while changing the spec": (
        "UPDATE",
        {"whetstone.dev/approve": "true"},
        {"spec-changed": "yes"},
        "without changing the spec",
    ),
}


@pytest.mark.parametrize("name", APPROVAL_REQUESTS, ids=list(APPROVAL_REQUESTS))
def test_approval_request(name: str) -> None:
    operation, new_ann, old_ann, want = APPROVAL_REQUESTS[name]
    new = {"metadata": {"annotations": new_ann}, "spec": SPEC}
    old = None
    if old_ann is not None:
        changed = old_ann.pop("spec-changed", None) if old_ann else None
        old = {
            "metadata": {"annotations": old_ann},
            "spec": {**SPEC, "version": 99} if changed else SPEC,
        }
    if want in (None, "approve", "revoke"):
        assert decide_approval_request(operation, new, old) == want
    else:
        with pytest.raises(kopf.AdmissionError, match=want):
            decide_approval_request(operation, new, old)


CREATED_BY = {
    "stamped at creation, whatever the manifest says": (
        "CREATE",
        {"whetstone.dev/created-by": "someone-else"},
        None,
        "mallory",
    ),
    "kept on update": (
        "UPDATE",
        {"whetstone.dev/created-by": "alice"},
        {"whetstone.dev/created-by": "alice"},
        None,
    ),
    "changed on update": (
        "UPDATE",
        {"whetstone.dev/created-by": "mallory"},
        {"whetstone.dev/created-by": "alice"},
        "cannot be changed",
    ),
    "removed on update": ("UPDATE", {}, {"whetstone.dev/created-by": "alice"}, "cannot be changed"),
}


@pytest.mark.parametrize("name", CREATED_BY, ids=list(CREATED_BY))
def test_created_by_is_stamped_once_and_kept(name: str) -> None:
    operation, new_ann, old_ann, want = CREATED_BY[name]
    new = {"metadata": {"annotations": new_ann}}
    old = None if old_ann is None else {"metadata": {"annotations": old_ann}}
    if want is None or operation == "CREATE":
        assert decide_created_by(operation, "mallory", new, old) == want
    else:
        with pytest.raises(kopf.AdmissionError, match=want):
            decide_created_by(operation, "mallory", new, old)


def test_nobody_approves_what_they_made_where_the_policy_forbids_it() -> None:
    strict = Policy(name="p", spec=PlatformPolicySpec())
    assert "forbidSelfApproval" in (self_approval("alice", ["op", "alice"], strict) or "")
    assert self_approval("bob", ["op", "alice"], strict) is None
    lax = Policy(
        name="p", spec=PlatformPolicySpec(approval=ApprovalRules(forbid_self_approval=False))
    )
    assert self_approval("alice", ["op", "alice"], lax) is None
