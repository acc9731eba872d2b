"""ModelVersion decisions: verify the artifact, evaluate the gates, honour the approval, and
derive the lifecycle phase from what Rollouts report. Pure: `now` is a parameter."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from whetstone_contract.result import EXIT_VERIFY_FAILED
from whetstone_operator.api import API_VERSION
from whetstone_operator.api.common import get_condition
from whetstone_operator.api.modelversion import (
    Gate,
    GateResult,
    ModelVersionSpec,
    ModelVersionStatus,
)
from whetstone_operator.api.names import APPROVE_ANNOTATION, LABEL_MODEL, LABEL_MODEL_VERSION
from whetstone_operator.approval import Approval
from whetstone_operator.reconcile.core import Create, Decision, Draft, Obj, Patch
from whetstone_operator.reconcile.finetunejob import JobView, recently
from whetstone_operator.reconcile.validation import check_spec
from whetstone_operator.render.verify import VersionOwner, build_verify_job
from whetstone_operator.render.workload import TrainerDefaults


@dataclass(frozen=True)
class Observed:
    """What a ModelVersion's decision sees besides the object: its verify Job, the approval
    record whose signature verified, and the platform's pod defaults."""

    verify_job: JobView | None = None
    approval: Approval | None = None
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


def _decide(d: Draft[ModelVersionStatus], spec: ModelVersionSpec, observed: Observed) -> None:
    status, now, mv, verify_job = d.status, d.now, d.obj, observed.verify_job

    # 1. The artifact must exist and match its digest before anything else.
    verified = status.verified_digest == spec.artifact.digest
    if not verified:
        pending = get_condition(status.conditions, "ArtifactVerified")
        if verify_job is None and recently(pending, "Verifying", now):
            return
        if verify_job is None:
            owner = VersionOwner(mv.name, mv.namespace, mv.uid)
            d.act(Create(build_verify_job(owner, spec, observed.defaults)))
            d.condition("ArtifactVerified", None, "Verifying", "a verify pod checks the digests")
            d.phase("Pending", "VerificationStarted", "verifying the artifact's digests")
            return
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
                d.condition("ArtifactVerified", False, "DigestMismatch", message)
                d.phase("Rejected", "DigestMismatch", message, warning=True)
                return
            status.verified_digest = spec.artifact.digest
            d.condition("ArtifactVerified", True, "DigestMatches", f"{spec.artifact.uri} verified")
        elif verify_job.failed_reason is not None or definite:
            reason = "DigestMismatch" if "mismatch" in detail.lower() else "VerificationFailed"
            message = f"artifact {spec.artifact.uri} failed verification: {detail or 'no detail'}"
            d.condition("ArtifactVerified", False, reason, message)
            d.phase("Rejected", reason, message, warning=True)
            return
        else:
            d.phase("Pending", "VerificationStarted", "verifying the artifact's digests")
            return

    else:
        d.condition("ArtifactVerified", True, "DigestMatches", f"{spec.artifact.uri} verified")

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

    # 3. Approval, signed by the approval webhook.
    if not spec.approval.required:
        d.condition("Approved", True, "NotRequired", "spec.approval.required is false")
        status.approved_by = status.approved_at = None
    elif observed.approval is not None:
        approval = observed.approval
        if status.approved_by != approval.by:
            d.event("Normal", "Approved", f"approved by {approval.by}")
        d.condition("Approved", True, "ApprovedByUser", f"approved by {approval.by}")
        status.approved_by, status.approved_at = approval.by, approval.at
    else:
        if status.approved_by is not None:
            d.event("Normal", "ApprovalRevoked", "approval revoked")
        d.condition(
            "Approved",
            False,
            "AwaitingApproval",
            f"waiting for an approver: kubectl annotate modelversion {mv.name} {APPROVE_HINT}",
        )
        status.approved_by = status.approved_at = None
    approved = get_condition(status.conditions, "Approved")
    is_approved = approved is not None and approved.status == "True"

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
