"""ModelVersion decisions: verify the artifact, evaluate the gates, honour the approval, and
derive the lifecycle phase from what Rollouts report. Pure: `now` is a parameter."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from whetstone_operator.api.common import Condition, ConditionStatus, get_condition, set_condition
from whetstone_operator.api.modelversion import (
    Gate,
    GateResult,
    ModelVersionSpec,
    ModelVersionStatus,
)
from whetstone_operator.approval import Approval
from whetstone_operator.reconcile.finetunejob import Create, Decision, JobView, recently
from whetstone_operator.reconcile.validation import EventSpec, decide_validity
from whetstone_operator.render.verify import VersionOwner, build_verify_job
from whetstone_operator.render.workload import TrainerDefaults
from whetstone_trainer.result import EXIT_VERIFY_FAILED


@dataclass(frozen=True)
class VersionObject:
    """The ModelVersion itself."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: dict[str, object]
    status: dict[str, object]


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
        "whetstone.dev/model": str(spec.get("model", "")),
        "whetstone.dev/version": str(spec.get("version", "")),
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


def decide_modelversion(
    mv: VersionObject,
    verify_job: JobView | None,
    approval: Approval | None,
    now: datetime,
    defaults: TrainerDefaults,
) -> Decision:
    """The next actions and status of a ModelVersion."""
    before = _status(mv.status)
    status = before.model_copy(deep=True)
    decision = Decision()

    def cond(type_: str, value: ConditionStatus, reason: str, message: str) -> None:
        status.conditions = set_condition(
            status.conditions, type_, value, reason, message, now, mv.generation
        )

    def phase(new: str, reason: str, message: str, warning: bool = False) -> None:
        if status.phase != new:
            decision.events.append(EventSpec("Warning" if warning else "Normal", reason, message))
        status.phase = new  # type: ignore[assignment]
        status.message = message

    validity = decide_validity("ModelVersion", dict(mv.spec), dict(mv.status), mv.generation, now)
    status.conditions = [Condition.model_validate(c) for c in validity.status_patch["conditions"]]
    if validity.event is not None:
        decision.events.append(validity.event)
    if not validity.valid or not isinstance(validity.spec, ModelVersionSpec):
        status.phase = status.phase or "Pending"
        status.message = str(validity.status_patch["message"])
        return _finish(decision, before, status, mv.generation)
    spec = validity.spec

    # 1. The artifact must exist and match its digest before anything else.
    verified = status.verified_digest == spec.artifact.digest
    if not verified:
        pending = get_condition(status.conditions, "ArtifactVerified")
        if verify_job is None and recently(pending, "Verifying", now):
            return _finish(decision, before, status, mv.generation)
        if verify_job is None:
            owner = VersionOwner(mv.name, mv.namespace, mv.uid)
            decision.actions.append(Create(build_verify_job(owner, spec, defaults)))
            cond("ArtifactVerified", "Unknown", "Verifying", "a verify pod checks the digests")
            phase("Pending", "VerificationStarted", "verifying the artifact's digests")
            return _finish(decision, before, status, mv.generation)
        # A pod that exits EXIT_VERIFY_FAILED is a definite answer; other failures are retried
        # by the Job (storage hiccups) until its backoff limit.
        definite = [p for p in verify_job.pods if p.exit_code == EXIT_VERIFY_FAILED]
        pod = definite[-1] if definite else (verify_job.pods[-1] if verify_job.pods else None)
        digest, detail = parse_verify_message(pod.message if pod else None)
        if verify_job.complete:
            if digest is not None and digest != spec.artifact.digest:
                message = (
                    f"artifact digest is {digest}, spec.artifact.digest is {spec.artifact.digest}"
                )
                cond("ArtifactVerified", "False", "DigestMismatch", message)
                phase("Rejected", "DigestMismatch", message, warning=True)
                return _finish(decision, before, status, mv.generation)
            status.verified_digest = spec.artifact.digest
            cond("ArtifactVerified", "True", "DigestMatches", f"{spec.artifact.uri} verified")
        elif verify_job.failed_reason is not None or definite:
            reason = "DigestMismatch" if "mismatch" in detail.lower() else "VerificationFailed"
            message = f"artifact {spec.artifact.uri} failed verification: {detail or 'no detail'}"
            cond("ArtifactVerified", "False", reason, message)
            phase("Rejected", reason, message, warning=True)
            return _finish(decision, before, status, mv.generation)
        else:
            phase("Pending", "VerificationStarted", "verifying the artifact's digests")
            return _finish(decision, before, status, mv.generation)

    else:
        cond("ArtifactVerified", "True", "DigestMatches", f"{spec.artifact.uri} verified")

    # 2. Gates on the recorded metrics.
    results = [evaluate_gate(g, spec) for g in spec.gates]
    status.gate_results = results
    failed = [r for r in results if not r.passed]
    if failed:
        message = "; ".join(f"{r.metric}: {r.message}" for r in failed)
        cond("GatesPassed", "False", "GateFailed", message)
        phase("Rejected", "GateFailed", f"gates failed: {message}", warning=True)
        return _finish(decision, before, status, mv.generation)
    cond("GatesPassed", "True", "AllGatesPassed", f"{len(results)} gate(s) passed")

    # 3. Approval, signed by the approval webhook.
    if not spec.approval.required:
        cond("Approved", "True", "NotRequired", "spec.approval.required is false")
        status.approved_by = status.approved_at = None
    elif approval is not None:
        if status.approved_by != approval.by:
            decision.events.append(EventSpec("Normal", "Approved", f"approved by {approval.by}"))
        cond("Approved", "True", "ApprovedByUser", f"approved by {approval.by}")
        status.approved_by, status.approved_at = approval.by, approval.at
    else:
        if status.approved_by is not None:
            decision.events.append(EventSpec("Normal", "ApprovalRevoked", "approval revoked"))
        cond(
            "Approved",
            "False",
            "AwaitingApproval",
            f"waiting for an approver: kubectl annotate modelversion {mv.name} {APPROVE_HINT}",
        )
        status.approved_by = status.approved_at = None
    approved = get_condition(status.conditions, "Approved")
    is_approved = approved is not None and approved.status == "True"

    # 4. Serving is reported by Rollouts through status.deployments.
    serving = [d for d in status.deployments if d.traffic_percent > 0]
    cond(
        "Serving",
        "True" if serving else "False",
        "Deployed" if serving else "NotDeployed",
        ", ".join(f"{d.inference_service} {d.traffic_percent}% ({d.role})" for d in serving)
        or "not serving traffic",
    )
    if serving:
        phase("Serving", "Serving", f"serving on {serving[0].inference_service}")
    elif status.superseded_by:
        phase("Retired", "Retired", f"superseded by {status.superseded_by}")
    elif is_approved:
        phase("Approved", "Approved", "approved; ready to roll out")
    else:
        phase("Verified", "Verified", "verified and gates passed; awaiting approval")
    return _finish(decision, before, status, mv.generation)


APPROVE_HINT = "whetstone.dev/approve=true"


def _finish(
    decision: Decision, before: ModelVersionStatus, after: ModelVersionStatus, gen: int | None
) -> Decision:
    after.observed_generation = gen
    new, old = after.wire(), before.wire()
    patch: dict[str, object] = {k: v for k, v in new.items() if old.get(k) != v}
    for key in old.keys() - new.keys():
        patch[key] = None
    decision.status = patch
    return decision
