"""ModelVersion decisions: verify the artifact, evaluate the gates, honour the approval, and
derive the lifecycle phase from what Rollouts report. Pure: `now` is a parameter."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime

from pydantic import ValidationError

from whetstone_contract.result import EXIT_VERIFY_FAILED
from whetstone_operator.api import API_VERSION
from whetstone_operator.api.common import format_time, get_condition
from whetstone_operator.api.modelversion import (
    ApprovalEntry,
    Gate,
    GateResult,
    ModelVersionSpec,
    ModelVersionStatus,
    Verification,
)
from whetstone_operator.api.names import APPROVE_ANNOTATION, LABEL_MODEL, LABEL_MODEL_VERSION
from whetstone_operator.approval import Subject, Trust, assess, sign_verification
from whetstone_operator.reconcile.core import Create, Decision, Draft, Obj, Patch
from whetstone_operator.reconcile.finetunejob import JobView, recently
from whetstone_operator.reconcile.policy import Policy
from whetstone_operator.reconcile.validation import check_spec
from whetstone_operator.render.verify import VersionOwner, build_verify_job
from whetstone_operator.render.workload import TrainerDefaults


@dataclass(frozen=True)
class Observed:
    """What a ModelVersion's decision sees besides the object: its verify Job, the key that
    signs and checks records, the namespace's PlatformPolicy and the platform's pod defaults."""

    key: bytes = field(repr=False)
    verify_job: JobView | None = None
    policy: Policy = field(default_factory=Policy)
    defaults: TrainerDefaults = field(default_factory=TrainerDefaults)


def evaluate_gate(gate: Gate, spec: ModelVersionSpec) -> GateResult:
    """One gate against the spec's metrics; a missing metric fails with a message naming it."""
    value = spec.metrics.get(gate.metric)
    if value is None:
        return GateResult(
            metric=gate.metric,
            passed=False,
            message=f"metric {gate.metric} is missing from spec.metrics",
        )
    failures: list[str] = []
    if gate.min is not None and value < gate.min:
        failures.append(f"{value:g} < min {gate.min:g}")
    if gate.max is not None and value > gate.max:
        failures.append(f"{value:g} > max {gate.max:g}")
    if gate.min_delta_vs_baseline is not None or gate.max_delta_vs_baseline is not None:
        base = spec.metrics.baseline.get(gate.metric) if spec.metrics.baseline else None
        if base is None:
            return GateResult(
                metric=gate.metric,
                value=value,
                passed=False,
                message=f"baseline metric {gate.metric} is missing from spec.metrics.baseline",
            )
        delta = value - base
        if gate.min_delta_vs_baseline is not None and delta < gate.min_delta_vs_baseline:
            failures.append(f"delta vs baseline {delta:+g} < {gate.min_delta_vs_baseline:+g}")
        if gate.max_delta_vs_baseline is not None and delta > gate.max_delta_vs_baseline:
            failures.append(f"delta vs baseline {delta:+g} > {gate.max_delta_vs_baseline:+g}")
    return GateResult(
        metric=gate.metric,
        value=value,
        passed=not failures,
        message="; ".join(failures) if failures else "passed",
    )


def registry_labels(spec: dict[str, object], labels: dict[str, str]) -> dict[str, str]:
    """Labels to add so `kubectl get mv -l whetstone.dev/model=NAME` lists a model's versions;
    empty when they are already right."""
    want = {
        LABEL_MODEL: str(spec.get("model", "")),
        LABEL_MODEL_VERSION: str(spec.get("version", "")),
    }
    return {k: v for k, v in want.items() if v and labels.get(k) != v}


def parse_verify_message(text: str | None) -> tuple[str | None, str]:
    """(digest, detail) from the verify pod's termination message (JSON or plain text)."""
    if not text:
        return None, ""
    for line in reversed(text.strip().splitlines()):
        if line.strip().startswith("{"):
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(raw, dict):
                digest = raw.get("digest") or raw.get("manifestDigest")
                problems = raw.get("problems") or []
                detail = (
                    raw.get("reason")
                    or raw.get("message")
                    or "; ".join(str(p) for p in problems[:5])
                )
                return (str(digest) if digest else None), str(detail)
    return None, text.strip().splitlines()[-1][:500]


def _status(raw: dict[str, object]) -> ModelVersionStatus:
    try:
        return ModelVersionStatus.model_validate(raw)
    except ValidationError:
        return ModelVersionStatus()


def decide_modelversion(mv: Obj, observed: Observed, now: datetime) -> Decision:
    """The next actions and status of a ModelVersion."""
    d = Draft(mv, _status(mv.status), now)
    labels = registry_labels(mv.spec, dict(mv.labels))
    if labels:
        d.act(Patch(API_VERSION, "ModelVersion", mv.name, {"metadata": {"labels": labels}}))
    spec = check_spec(d, "ModelVersion")
    if not isinstance(spec, ModelVersionSpec):
        return d.finish()
    _decide(d, spec, observed)
    return d.finish()


def body_of(mv: Obj) -> dict[str, object]:
    """The object as the signed records see it."""
    return {
        "metadata": {
            "namespace": mv.namespace,
            "name": mv.name,
            "uid": mv.uid,
            "generation": mv.generation,
            "annotations": dict(mv.annotations),
        },
        "spec": mv.spec,
        "status": mv.status,
    }


def _verify(d: Draft[ModelVersionStatus], spec: ModelVersionSpec, observed: Observed) -> bool:
    """Check the artifact with a verify Job this ModelVersion owns; True once its signed
    record is in the status."""
    status, now, mv = d.status, d.now, d.obj
    job = observed.verify_job
    if job is not None and job.owner_uid != mv.uid:
        message = (
            f"Job {job.name} exists and is not this ModelVersion's verify Job (not owned by "
            f"uid {mv.uid}): its result is ignored; delete it to let the artifact be verified"
        )
        if d.condition("ChildConflict", True, "ChildConflict", message):
            d.event("Warning", "ChildConflict", message)
        d.condition("ArtifactVerified", False, "ChildConflict", message)
        d.phase("Pending", "ChildConflict", message, warning=True)
        return False
    if any(c.type == "ChildConflict" for c in status.conditions):
        d.condition("ChildConflict", False, "NoConflict", "every child is owned by this object")
    pending = get_condition(status.conditions, "ArtifactVerified")
    if job is None and recently(pending, "Verifying", now):
        return False
    if job is None:
        owner = VersionOwner(mv.name, mv.namespace, mv.uid)
        d.act(Create(build_verify_job(owner, spec, observed.defaults)))
        d.condition("ArtifactVerified", None, "Verifying", "a verify pod checks the digests")
        d.phase("Pending", "VerificationStarted", "verifying the artifact's digests")
        return False
    # A pod that exits EXIT_VERIFY_FAILED is a definite answer; other failures are retried
    # by the Job (storage hiccups) until its backoff limit.
    definite = [p for p in job.pods if p.exit_code == EXIT_VERIFY_FAILED]
    pod = definite[-1] if definite else (job.pods[-1] if job.pods else None)
    digest, detail = parse_verify_message(pod.message if pod else None)
    if job.complete:
        if digest == spec.artifact.digest:
            record = sign_verification(observed.key, Subject.of(body_of(mv)), format_time(now))
            if record is not None:
                status.verification = Verification.model_validate(record)
            status.verified_digest = spec.artifact.digest
            d.condition("ArtifactVerified", True, "DigestMatches", f"{spec.artifact.uri} verified")
            return True
        message = (
            f"artifact digest is {digest}, spec.artifact.digest is {spec.artifact.digest}"
            if digest is not None
            else f"the verify pod reported no digest for {spec.artifact.uri}: a result must "
            "carry the digest it was asked to check"
        )
        reason = "DigestMismatch" if digest is not None else "VerificationFailed"
        d.condition("ArtifactVerified", False, reason, message)
        d.phase("Rejected", reason, message, warning=True)
        return False
    if job.failed_reason is not None or definite:
        reason = "DigestMismatch" if "mismatch" in detail.lower() else "VerificationFailed"
        message = f"artifact {spec.artifact.uri} failed verification: {detail or 'no detail'}"
        d.condition("ArtifactVerified", False, reason, message)
        d.phase("Rejected", reason, message, warning=True)
        return False
    d.phase("Pending", "VerificationStarted", "verifying the artifact's digests")
    return False


def _approval(d: Draft[ModelVersionStatus], trust: Trust, policy: Policy) -> bool:
    """Set the Approved condition and status.approvals from the signed records; True when
    the version counts as approved."""
    status, mv = d.status, d.obj
    before = [a.user for a in status.approvals if a.counted]
    if trust.required == 0:
        status.approvals = []
        status.approved_by = status.approved_at = None
        d.condition(
            "Approved",
            True,
            "NotRequired",
            f"no approval required ({policy.field('approval.required')} is false and "
            "spec.approval.required is false)",
        )
        return True
    counted = {a.user for a in trust.approvers}
    entries = [
        ApprovalEntry(user=a.user, groups=list(a.groups), time=a.at, counted=True)
        for a in trust.approvers
    ]
    status.approvals = entries
    last = entries[-1] if entries else None
    status.approved_by = last.user if last else None
    status.approved_at = last.time if last else None
    if trust.approved:
        names = ", ".join(a.user for a in trust.approvers)
        if sorted(before) != sorted(counted):
            d.event("Normal", "Approved", f"approved by {names}")
        d.condition("Approved", True, "ApprovedByUser", f"approved by {names}")
        return True
    was = get_condition(status.conditions, "Approved")
    if trust.stale and (before or (was is not None and was.reason == "ChangedAfterApproval")):
        message = (
            "the approval no longer holds: what it covered (artifact, base model, gates, "
            "metrics, source) changed after it was given; approve again: kubectl annotate "
            f"modelversion {mv.name} {APPROVE_HINT}"
        )
        if d.condition("Approved", False, "ChangedAfterApproval", message):
            d.event("Warning", "ChangedAfterApproval", message)
        return False
    if before and not counted:
        d.event("Normal", "ApprovalRevoked", "approval revoked")
    have = len(trust.approvers)
    parts = [f"{have} of {trust.required} approval(s)"]
    if trust.approvers:
        parts.append("by " + ", ".join(a.user for a in trust.approvers))
    if trust.required > 1:
        parts.append(f"{policy.field('approval.minApprovers')} asks for distinct people")
    parts.extend(trust.refused)
    message = (
        "; ".join(parts)
        + f"; waiting for an approver: kubectl annotate modelversion {mv.name} {APPROVE_HINT}"
    )
    reason = "AwaitingApproval" if have == 0 else "AwaitingApprovers"
    if d.condition("Approved", False, reason, message) and trust.refused:
        d.event("Warning", "ApproverNotCounted", "; ".join(trust.refused))
    return False


def _decide(d: Draft[ModelVersionStatus], spec: ModelVersionSpec, observed: Observed) -> None:
    status, mv = d.status, d.obj

    # 1. The artifact must exist and match its digest before anything else: the signed record
    # counts, not status.verifiedDigest (anyone with modelversions/status can write that).
    policy = observed.policy
    trust = assess(observed.key, body_of(mv), policy.spec.approval, policy=policy.name)
    if trust.verified:
        d.condition("ArtifactVerified", True, "DigestMatches", f"{spec.artifact.uri} verified")
    else:
        # A record that does not hold (forged, or of another artifact) goes, with the digest
        # it claims.
        status.verification = None
        status.verified_digest = None
        if not _verify(d, spec, observed):
            status.approvals = []
            status.approved_by = status.approved_at = None
            return
        # The approvals do not depend on the verification: only the flag changes.
        trust = replace(trust, verified=True)

    # 2. Gates on the recorded metrics.
    results = [evaluate_gate(g, spec) for g in spec.gates]
    status.gate_results = results
    failed = [r for r in results if not r.passed]
    if failed:
        message = "; ".join(f"{r.metric}: {r.message}" for r in failed)
        d.condition("GatesPassed", False, "GateFailed", message)
        d.phase("Rejected", "GateFailed", f"gates failed: {message}", warning=True)
        return
    d.condition("GatesPassed", True, "AllGatesPassed", f"{len(results)} gate(s) passed")

    # 3. Approval: the signed records, counted under the namespace's policy.
    is_approved = _approval(d, trust, policy)

    # 4. Serving is reported by Rollouts through status.deployments.
    serving = [dep for dep in status.deployments if dep.traffic_percent > 0]
    d.condition(
        "Serving",
        bool(serving),
        "Deployed" if serving else "NotDeployed",
        ", ".join(f"{x.inference_service} {x.traffic_percent}% ({x.role})" for x in serving)
        or "not serving traffic",
    )
    if serving:
        d.phase("Serving", "Serving", f"serving on {serving[0].inference_service}")
    elif status.superseded_by:
        d.phase("Retired", "Retired", f"superseded by {status.superseded_by}")
    elif is_approved:
        d.phase("Approved", "Approved", "approved; ready to roll out")
    else:
        d.phase("Verified", "Verified", "verified and gates passed; awaiting approval")


APPROVE_HINT = f"{APPROVE_ANNOTATION}=true"
