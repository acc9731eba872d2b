"""decide_finetunejob as a table: (status, observed) -> (actions, phase, events)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from whetstone_contract.result import CheckpointInfo, Progress
from whetstone_operator.api.platformpolicy import NamespaceSpend, PlatformPolicySpec
from whetstone_operator.handlers.finetunejob import record
from whetstone_operator.observe import job_summary, job_view, pod_summary
from whetstone_operator.reconcile.core import Create, Decision, Delete, Obj, apply_merge_patch
from whetstone_operator.reconcile.finetunejob import (
    JobView,
    Observed,
    PodView,
    VersionView,
    decide_finetunejob,
    model_version_name,
    spec_fingerprint,
)
from whetstone_operator.reconcile.policy import Policy
from whetstone_operator.render.workload import TrainerDefaults

from tests.conftest import REPO_ROOT

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
DEFAULTS = TrainerDefaults(image="registry.local/trainer:1")
SPEC = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())["spec"]
DIGEST = "sha256:" + "ab" * 32
RESULT = {
    "artifactUri": "s3://models/grader/grader-v3/final/",
    "artifactFormat": "merged",
    "manifestDigest": DIGEST,
    "metrics": {
        "evalLoss": 0.9,
        "exactMatch": 0.86,
        "rougeL": 0.71,
        "baseline": {"exactMatch": 0.6},
    },
    "dataReport": {"examples": 120, "datasetDigest": "sha256:" + "cd" * 32},
    "hyperparameters": {"learningRate": 2e-5, "epochs": 3},
    "steps": 42,
}
REPORT = {"examples": 120, "dropped": {"duplicate": 3}, "redacted": {"email": 2}}
BAD_REPORT = {"examples": 0, "dropped": {"invalid": 2}, "invalidLines": ["train.jsonl:3: bad JSON"]}

VALID = {"type": "Valid", "status": "True", "reason": "SpecValid", "message": "spec is valid"}
DATA_OK = {"type": "DataValidated", "status": "True", "reason": "DataValid", "message": "ok"}
DATA_PENDING = {
    "type": "DataValidated",
    "status": "Unknown",
    "reason": "Validating",
    "message": "the validation pod checks the data",
}


UID = "uid-1"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def policy(spent: float = 0.0, month: str = "2026-11", **training: Any) -> Policy:
    """The sample is within it: its toleration, 8 GPUs, internal data."""
    rules = {"tolerations": [GPU_TOLERATION], **training}
    return Policy(
        name="tenants",
        spec=PlatformPolicySpec.model_validate({"training": rules}),
        spend=NamespaceSpend(month=month, gpu_hours=spent),
    )


ALLOWS_SAMPLE = policy()
BUDGET_SPENT = policy(spent=100.0, budget={"gpuHoursPerMonth": 100})
PLACED = policy(
    nodeSelector={"pool": "training"},
    tolerations=[GPU_TOLERATION, {"key": "team", "value": "ml", "effect": "NoSchedule"}],
)


def vjob(**kw: Any) -> JobView:
    return JobView(**{"name": "grader-v3-validate", "owner_uid": UID, **kw})


def tjob(attempt: int = 1, **kw: Any) -> JobView:
    return JobView(**{"name": f"grader-v3-train-{attempt}", "owner_uid": UID, **kw})


def pod(phase: str, **kw: Any) -> PodView:
    return PodView(name=f"p-{phase.lower()}", phase=phase, **kw)


@dataclass
class Case:
    status: dict[str, Any]
    observed: Observed
    phase: str | None
    actions: list[str]  # "Create Kind/name" or "Delete Kind/name"
    event_reasons: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SPEC))
    check: Any = None
    policy: Policy = ALLOWS_SAMPLE


RUNNING = {"phase": "Running", "attempt": 1, "conditions": [VALID, DATA_OK]}
STARTED = spec_fingerprint(SPEC)
SPEC_NOT_APPLIED = {
    "type": "SpecApplied",
    "status": "False",
    "reason": "ChangedAfterStart",
    "message": "changed",
}


def changed(**fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(SPEC), **fields}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def ran(start: str, end: str | None = None, phase: str = "Running") -> PodView:
    """A trainer pod that started at `start` (HH:MM:SS on NOW's day) and ended at `end`."""
    day = "2026-11-22T"
    return PodView(
        name=f"p-{start}",
        phase=phase if end is None else "Succeeded",
        start_time=f"{day}{start}Z",
        finished_at=f"{day}{end}Z" if end else None,
        owner_uid="job-uid",
    )


def cost(attempt: int, gpu_seconds: float, **kw: Any) -> dict[str, Any]:
    return {"attempt": attempt, "gpus": 8, "gpuSeconds": gpu_seconds, **kw}


POLICY_REFUSED = {
    "type": "PolicyAllowed",
    "status": "False",
    "reason": "PolicyViolation",
    "message": "spec.image: an earlier refusal",
}
BUDGET_WAIT = {
    "type": "BudgetAvailable",
    "status": "False",
    "reason": "BudgetExhausted",
    "message": "the namespace has spent 90 of its 100 GPU-hours",
}
CONFLICT = {
    "type": "ChildConflict",
    "status": "True",
    "reason": "ChildConflict",
    "message": "Job grader-v3-validate exists but is not owned by this FineTuneJob",
}


CASES: dict[str, Case] = {
    "new job starts the CPU validation pod": Case(
        status={},
        observed=Observed(),
        phase="Validating",
        actions=["Create ConfigMap/grader-v3-trainer-config", "Create Job/grader-v3-validate"],
        event_reasons=["ValidationStarted"],
        check=lambda s: s["specFingerprint"] == STARTED,
    ),
    "invalid spec creates nothing and names the field": Case(
        status={},
        spec={**SPEC, "dataset": {**SPEC["dataset"], "validationSplit": 0.1}},
        observed=Observed(),
        phase="Pending",
        actions=[],
        event_reasons=["InvalidSpec"],
        check=lambda s: "spec.dataset" in s["message"] and "validationSplit" in s["message"],
    ),
    "a validation Job created moments ago and not yet observed is not created twice": Case(
        status={
            "phase": "Validating",
            "conditions": [
                VALID,
                {**DATA_PENDING, "lastTransitionTime": "2026-11-22T19:59:50Z"},
            ],
        },
        observed=Observed(),
        phase="Validating",
        actions=[],
    ),
    "a validation Job gone for long is created again": Case(
        status={
            "phase": "Validating",
            "conditions": [
                VALID,
                {**DATA_PENDING, "lastTransitionTime": "2026-11-22T19:50:00Z"},
            ],
        },
        observed=Observed(),
        phase="Validating",
        actions=["Create ConfigMap/grader-v3-trainer-config", "Create Job/grader-v3-validate"],
    ),
    "a trainer Job created moments ago and not yet observed is not created twice": Case(
        status={
            **RUNNING,
            "conditions": [
                VALID,
                DATA_OK,
                {
                    "type": "Training",
                    "status": "True",
                    "reason": "TrainerStarted",
                    "message": "run 1",
                    "lastTransitionTime": "2026-11-22T19:59:58Z",
                },
            ],
        },
        observed=Observed(),
        phase="Running",
        actions=[],
    ),
    "validation still running waits": Case(
        status={"phase": "Validating", "conditions": [VALID]},
        observed=Observed(validation_job=vjob(active=1, pods=(pod("Running"),))),
        phase="Validating",
        actions=[],
    ),
    "image pull problem is surfaced while validating": Case(
        status={"phase": "Validating", "conditions": [VALID]},
        observed=Observed(
            validation_job=vjob(active=1, pods=(pod("Pending", reason="ImagePullBackOff"),))
        ),
        phase="Validating",
        actions=[],
        check=lambda s: "ImagePullBackOff" in s["message"],
    ),
    "bad data fails the job with the report and no GPU pod": Case(
        status={"phase": "Validating", "conditions": [VALID]},
        observed=Observed(
            validation_job=vjob(
                failed=1,
                failed_reason="BackoffLimitExceeded",
                pods=(pod("Failed", exit_code=3, message=json.dumps(BAD_REPORT)),),
            )
        ),
        phase="Failed",
        actions=[],
        event_reasons=["DataInvalid"],
        check=lambda s: (
            s["dataReport"]["invalidLines"] == ["train.jsonl:3: bad JSON"]
            and "train.jsonl:3" in s["message"]
        ),
    ),
    "good data starts the trainer Job": Case(
        status={"phase": "Validating", "conditions": [VALID]},
        observed=Observed(
            validation_job=vjob(
                succeeded=1, complete=True, pods=(pod("Succeeded", message=json.dumps(REPORT)),)
            )
        ),
        phase="Running",
        actions=["Create Job/grader-v3-train-1"],
        event_reasons=["TrainingStarted"],
        check=lambda s: s["dataReport"]["redacted"] == {"email": 2} and s["attempt"] == 1,
    ),
    "multi-node training also creates the rendezvous Service": Case(
        status={"phase": "Validating", "conditions": [VALID, DATA_OK]},
        spec={**SPEC, "resources": {**SPEC["resources"], "nodes": 2}},
        observed=Observed(),
        phase="Running",
        actions=["Create Service/grader-v3-ranks", "Create Job/grader-v3-train-1"],
        event_reasons=["TrainingStarted"],
    ),
    "running copies the trainer's progress": Case(
        status=RUNNING,
        observed=Observed(
            trainer_job=tjob(active=1, pods=(pod("Running", ip="10.0.0.5"),)),
            progress=Progress(step=30, total_steps=100, percent=30, loss=1.2),
            checkpoints=(CheckpointInfo(step=20, uri="s3://m/ckpt-20/", eval_loss=1.4),),
        ),
        phase="Running",
        actions=[],
        check=lambda s: (
            s["progress"]["percent"] == 30
            and s["message"] == "step 30/100"
            and s["checkpoints"] == [{"step": 20, "uri": "s3://m/ckpt-20/", "evalLoss": 1.4}]
        ),
    ),
    "success registers exactly one ModelVersion": Case(
        status=RUNNING,
        observed=Observed(
            trainer_job=tjob(
                succeeded=1, complete=True, pods=(pod("Succeeded", message=json.dumps(RESULT)),)
            ),
            model_versions=(
                VersionView("grader-llama-3-2-1b-instruct-v3-20261101", "grader", 3, "old-job"),
                VersionView("other-x-v9-20261101", "other", 9, None),
            ),
        ),
        phase="Succeeded",
        actions=["Create ModelVersion/grader-llama-3-2-1b-instruct-v4-20261122"],
        event_reasons=["Registered", "Succeeded"],
        check=lambda s: (
            s["modelVersion"] == "grader-llama-3-2-1b-instruct-v4-20261122"
            and s["artifactDigest"] == DIGEST
            and s["metrics"]["baseline"]["exactMatch"] == 0.6
        ),
    ),
    "success after a crash adopts the already registered version": Case(
        status=RUNNING,
        observed=Observed(
            trainer_job=tjob(
                succeeded=1, complete=True, pods=(pod("Succeeded", message=json.dumps(RESULT)),)
            ),
            model_versions=(
                VersionView("grader-llama-3-2-1b-instruct-v4-20261122", "grader", 4, "grader-v3"),
            ),
        ),
        phase="Succeeded",
        actions=[],
        event_reasons=["Succeeded"],
        check=lambda s: s["modelVersion"] == "grader-llama-3-2-1b-instruct-v4-20261122",
    ),
    "a finished trainer without a result fails clearly": Case(
        status=RUNNING,
        observed=Observed(
            trainer_job=tjob(succeeded=1, complete=True, pods=(pod("Succeeded", message=""),))
        ),
        phase="Failed",
        actions=[],
        event_reasons=["ResultMissing"],
    ),
    "out of memory names OOMKilled": Case(
        status=RUNNING,
        observed=Observed(
            trainer_job=tjob(
                failed=3,
                failed_reason="BackoffLimitExceeded",
                failed_message="Job has reached the specified backoff limit",
                pods=(pod("Failed", exit_code=137, reason="OOMKilled"),),
            )
        ),
        phase="Failed",
        actions=[],
        event_reasons=["OOMKilled"],
        check=lambda s: "OOMKilled" in s["message"] and s["restarts"] == 3,
    ),
    "deadline exceeded is the reason": Case(
        status=RUNNING,
        observed=Observed(
            trainer_job=tjob(failed=1, failed_reason="DeadlineExceeded", failed_message="too long")
        ),
        phase="Failed",
        actions=[],
        event_reasons=["DeadlineExceeded"],
    ),
    "suspend deletes the trainer Job and keeps the rest": Case(
        status=RUNNING,
        spec={**SPEC, "suspend": True},
        observed=Observed(trainer_job=tjob(active=1)),
        phase="Suspended",
        actions=["Delete Job/grader-v3-train-1"],
        event_reasons=["Suspended"],
    ),
    "resume starts a new run that continues from the checkpoint": Case(
        status={**RUNNING, "phase": "Suspended"},
        observed=Observed(),
        phase="Running",
        actions=["Create ConfigMap/grader-v3-trainer-config", "Create Job/grader-v3-train-2"],
        event_reasons=["TrainingStarted"],
        check=lambda s: s["attempt"] == 2,
    ),
    "a spec change while training is reported, and the run goes on as started": Case(
        status={**RUNNING, "specFingerprint": STARTED},
        spec=changed(hyperparameters={**SPEC["hyperparameters"], "learningRate": 1e-3}),
        observed=Observed(trainer_job=tjob(active=1)),
        phase="Running",
        actions=[],
        event_reasons=["SpecChangedAfterStart"],
        check=lambda s: (
            condition(s, "SpecApplied")["status"] == "False"
            and "create a new FineTuneJob" in condition(s, "SpecApplied")["message"]
            and s["specFingerprint"] == STARTED
        ),
    ),
    "a resume after a spec change starts no trainer pod": Case(
        status={**RUNNING, "phase": "Suspended", "specFingerprint": STARTED},
        spec=changed(method={"type": "lora", "lora": {"r": 64}}),
        observed=Observed(),
        phase="Suspended",
        actions=[],
        event_reasons=["SpecChangedAfterStart"],
        check=lambda s: "not starting trainer pods" in s["message"] and s["attempt"] == 1,
    ),
    "validated data after a spec change starts no trainer pod": Case(
        status={
            "phase": "Validating",
            "conditions": [VALID, {**DATA_PENDING, "lastTransitionTime": "2026-11-22T19:59:00Z"}],
            "specFingerprint": STARTED,
        },
        spec=changed(dataset={**SPEC["dataset"], "dedupe": not SPEC["dataset"].get("dedupe")}),
        observed=Observed(validation_job=vjob(complete=True, succeeded=1)),
        phase="Validating",
        actions=[],
        event_reasons=["SpecChangedAfterStart"],
    ),
    "suspend, registration and deadlines are not spec changes": Case(
        status={**RUNNING, "specFingerprint": STARTED},
        spec=changed(
            activeDeadlineSeconds=7200,
            backoffLimit=5,
            registration={**SPEC["registration"], "model": "grader-renamed"},
        ),
        observed=Observed(trainer_job=tjob(active=1)),
        phase="Running",
        actions=[],
        check=lambda s: condition(s, "SpecApplied") == {},
    ),
    "reverting the change clears the condition and resumes": Case(
        status={
            **RUNNING,
            "phase": "Suspended",
            "specFingerprint": STARTED,
            "conditions": [*RUNNING["conditions"], SPEC_NOT_APPLIED],
        },
        observed=Observed(),
        phase="Running",
        actions=["Create ConfigMap/grader-v3-trainer-config", "Create Job/grader-v3-train-2"],
        event_reasons=["TrainingStarted"],
        check=lambda s: condition(s, "SpecApplied")["status"] == "True",
    ),
    # --- the platform policy, checked before anything of the job is scheduled
    "a spec the policy refuses waits in Pending with nothing created": Case(
        status={},
        spec=changed(image="docker.io/someone/trainer:latest"),
        observed=Observed(),
        phase="Pending",
        actions=[],
        event_reasons=["PolicyViolation"],
        check=lambda s: (
            condition(s, "PolicyAllowed")["status"] == "False"
            and condition(s, "PolicyAllowed")["reason"] == "PolicyViolation"
            and "spec.image" in condition(s, "PolicyAllowed")["message"]
            and "PlatformPolicy tenants spec.training.images" in s["message"]
        ),
    ),
    "the built-in default refuses a toleration the tenant adds": Case(
        status={},
        spec=changed(resources={**SPEC["resources"], "tolerations": [GPU_TOLERATION]}),
        observed=Observed(),
        policy=Policy(),
        phase="Pending",
        actions=[],
        event_reasons=["PolicyViolation"],
        check=lambda s: (
            "spec.resources.tolerations[0]" in condition(s, "PolicyAllowed")["message"]
            and "PlatformPolicy built-in default spec.training.tolerations" in s["message"]
        ),
    ),
    "a changed refusal is announced again": Case(
        status={"phase": "Pending", "conditions": [VALID, POLICY_REFUSED]},
        spec=changed(resources={**SPEC["resources"], "nodes": 8, "deepspeed": {"zeroStage": 2}}),
        observed=Observed(),
        phase="Pending",
        actions=[],
        event_reasons=["PolicyViolation"],
        check=lambda s: "spec.resources.nodes" in condition(s, "PolicyAllowed")["message"],
    ),
    "a spec brought within the policy starts": Case(
        status={"phase": "Pending", "conditions": [VALID, POLICY_REFUSED]},
        observed=Observed(),
        phase="Validating",
        actions=["Create ConfigMap/grader-v3-trainer-config", "Create Job/grader-v3-validate"],
        event_reasons=["ValidationStarted"],
        check=lambda s: condition(s, "PolicyAllowed")["status"] == "True",
    ),
    "no budget condition where the policy sets no budget": Case(
        status={},
        observed=Observed(),
        phase="Validating",
        actions=["Create ConfigMap/grader-v3-trainer-config", "Create Job/grader-v3-validate"],
        event_reasons=["ValidationStarted"],
        check=lambda s: (
            condition(s, "BudgetAvailable") == {}
            and condition(s, "PolicyAllowed")["status"] == "True"
        ),
    ),
    "a spent budget holds a new job in Pending": Case(
        status={},
        observed=Observed(),
        policy=BUDGET_SPENT,
        phase="Pending",
        actions=[],
        event_reasons=["BudgetExhausted"],
        check=lambda s: (
            condition(s, "BudgetAvailable")["reason"] == "BudgetExhausted"
            and "100 of its 100 GPU-hours" in s["message"]
            and "PlatformPolicy tenants spec.training.budget.gpuHoursPerMonth" in s["message"]
        ),
    ),
    "a job already waiting for budget is not announced again as the spend moves": Case(
        status={"phase": "Pending", "conditions": [VALID, BUDGET_WAIT]},
        observed=Observed(),
        policy=BUDGET_SPENT,
        phase="Pending",
        actions=[],
    ),
    "a raised budget starts the waiting job": Case(
        status={"phase": "Pending", "conditions": [VALID, BUDGET_WAIT]},
        observed=Observed(),
        policy=policy(spent=100.0, budget={"gpuHoursPerMonth": 200}),
        phase="Validating",
        actions=["Create ConfigMap/grader-v3-trainer-config", "Create Job/grader-v3-validate"],
        event_reasons=["ValidationStarted"],
        check=lambda s: condition(s, "BudgetAvailable")["status"] == "True",
    ),
    "a new month starts the waiting job": Case(
        status={"phase": "Pending", "conditions": [VALID, BUDGET_WAIT]},
        observed=Observed(),
        policy=policy(spent=100.0, month="2026-10", budget={"gpuHoursPerMonth": 100}),
        phase="Validating",
        actions=["Create ConfigMap/grader-v3-trainer-config", "Create Job/grader-v3-validate"],
        event_reasons=["ValidationStarted"],
    ),
    "a running job is not stopped by a stricter policy or a spent budget": Case(
        status={**RUNNING, "specFingerprint": STARTED},
        observed=Observed(trainer_job=tjob(active=1)),
        policy=policy(spent=500.0, maxGPUsPerJob=1, budget={"gpuHoursPerMonth": 100}),
        phase="Running",
        actions=[],
        check=lambda s: condition(s, "PolicyAllowed") == {},
    ),
    "validated data starts the trainer whatever the policy says now": Case(
        status={"phase": "Validating", "conditions": [VALID, DATA_OK], "specFingerprint": STARTED},
        observed=Observed(),
        policy=Policy(),
        phase="Running",
        actions=["Create Job/grader-v3-train-1"],
        event_reasons=["TrainingStarted"],
    ),
    # --- children this job does not own are never read
    "a validation Job this job does not own is reported and left alone": Case(
        status={"phase": "Validating", "conditions": [VALID], "specFingerprint": STARTED},
        observed=Observed(validation_job=vjob(owner_uid="someone-else", complete=True)),
        phase="Validating",
        actions=[],
        event_reasons=["ChildConflict"],
        check=lambda s: (
            condition(s, "ChildConflict")["status"] == "True"
            and "grader-v3-validate" in condition(s, "ChildConflict")["message"]
            and "delete or rename it" in s["message"]
            and condition(s, "DataValidated") == {}
        ),
    ),
    "a same-named Job without an owner before the job started": Case(
        status={},
        observed=Observed(validation_job=vjob(owner_uid=None, complete=True)),
        phase="Pending",
        actions=[],
        event_reasons=["ChildConflict", "Accepted"],
        check=lambda s: condition(s, "ChildConflict")["reason"] == "ChildConflict",
    ),
    "a trainer Job this job does not own is neither read nor deleted": Case(
        status=RUNNING,
        spec={**SPEC, "suspend": True},
        observed=Observed(
            trainer_job=tjob(owner_uid="someone-else", failed=1, failed_reason="Failed")
        ),
        phase="Running",
        actions=[],
        event_reasons=["ChildConflict"],
        check=lambda s: "grader-v3-train-1" in condition(s, "ChildConflict")["message"],
    ),
    "a conflict that is gone clears the condition": Case(
        status={"phase": "Validating", "conditions": [VALID, CONFLICT]},
        observed=Observed(validation_job=vjob(active=1, pods=(pod("Running"),))),
        phase="Validating",
        actions=[],
        check=lambda s: condition(s, "ChildConflict")["status"] == "False",
    ),
    # --- GPU time: (end or now - start) x gpusPerNode per trainer pod, whole minutes running
    "a running attempt counts whole minutes of its pods": Case(
        status=RUNNING,
        observed=Observed(trainer_job=tjob(active=1, pods=(ran("19:00:00"), ran("19:58:30")))),
        phase="Running",
        actions=[],
        check=lambda s: (
            s["cost"]
            == {
                "gpuSeconds": (3600 + 60) * 8.0,
                "attempts": [cost(1, (3600 + 60) * 8.0, startTime="2026-11-22T19:00:00Z")],
            }
        ),
    ),
    "a finished attempt counts to its pods' ends and records its end": Case(
        status=RUNNING,
        observed=Observed(
            trainer_job=tjob(
                failed=1,
                failed_reason="BackoffLimitExceeded",
                pods=(ran("19:00:00", "19:10:05"), ran("19:20:00", "19:30:00")),
            )
        ),
        phase="Failed",
        actions=[],
        event_reasons=["BackoffLimitExceeded"],
        check=lambda s: (
            s["cost"]["attempts"]
            == [
                cost(
                    1,
                    (605 + 600) * 8.0,
                    startTime="2026-11-22T19:00:00Z",
                    endTime="2026-11-22T19:30:00Z",
                )
            ]
        ),
    ),
    "a suspend counts the stopped pods up to now": Case(
        status=RUNNING,
        spec={**SPEC, "suspend": True},
        observed=Observed(trainer_job=tjob(active=1, pods=(ran("19:59:30"),))),
        phase="Suspended",
        actions=["Delete Job/grader-v3-train-1"],
        event_reasons=["Suspended"],
        check=lambda s: (
            s["cost"]["attempts"][0]["gpuSeconds"] == 30 * 8.0
            and s["cost"]["attempts"][0]["endTime"] == "2026-11-22T20:00:00Z"
        ),
    ),
    "earlier attempts and pods that are gone keep their figures": Case(
        status={
            **RUNNING,
            "attempt": 2,
            "cost": {"gpuSeconds": 9000.0, "attempts": [cost(1, 4000.0), cost(2, 5000.0)]},
        },
        observed=Observed(trainer_job=tjob(2, active=1, pods=(ran("19:50:00"),))),
        phase="Running",
        actions=[],
        check=lambda s: (
            s["cost"]["gpuSeconds"] == 9000.0
            and [a["gpuSeconds"] for a in s["cost"]["attempts"]] == [4000.0, 5000.0]
        ),
    ),
    "a second attempt adds to the first": Case(
        status={
            **RUNNING,
            "attempt": 2,
            "cost": {"gpuSeconds": 4000.0, "attempts": [cost(1, 4000.0)]},
        },
        observed=Observed(trainer_job=tjob(2, active=1, pods=(ran("19:50:00"),))),
        phase="Running",
        actions=[],
        check=lambda s: (
            s["cost"]["gpuSeconds"] == 4000.0 + 600 * 8
            and [a["attempt"] for a in s["cost"]["attempts"]] == [1, 2]
        ),
    ),
    "a finished job is left alone": Case(
        status={"phase": "Succeeded", "observedGeneration": 1, "conditions": [VALID]},
        observed=Observed(),
        phase="Succeeded",
        actions=[],
    ),
}


def _describe(action: Create | Delete) -> str:
    if isinstance(action, Create):
        return f"Create {action.body['kind']}/{action.body['metadata']['name']}"
    return f"Delete {action.kind}/{action.name}"


def _job(case: Case) -> Obj:
    return Obj("grader-v3", "ml", "uid-1", 1, case.spec, case.status)


def _observed(case: Case) -> Observed:
    return replace(case.observed, defaults=DEFAULTS, policy=case.policy)


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_decide(name: str) -> None:
    case = CASES[name]
    decision = decide_finetunejob(_job(case), _observed(case), NOW)
    merged = apply_merge_patch(case.status, decision.status)
    assert merged.get("phase") == case.phase
    assert [_describe(a) for a in decision.actions] == case.actions
    assert [e.reason for e in decision.events] == case.event_reasons
    if case.check is not None:
        assert case.check(merged), merged


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_decide_again_with_the_new_status_changes_nothing(name: str) -> None:
    """Idempotence: once its status is written, a second reconcile of the same world
    creates nothing new and emits no Event."""
    case = CASES[name]
    first = decide_finetunejob(_job(case), _observed(case), NOW)
    written = apply_merge_patch(case.status, first.status)
    if any(isinstance(a, Create) for a in first.actions):
        return  # the world changes after creates; covered by the integration tier
    again = decide_finetunejob(
        Obj("grader-v3", "ml", "uid-1", 1, case.spec, written), _observed(case), NOW
    )
    assert again.events == []
    assert [a for a in again.actions if isinstance(a, Create)] == []
    assert again.status == {}


@pytest.mark.parametrize(
    "status",
    [{}, {"phase": "Validating", "conditions": [VALID, DATA_OK], "specFingerprint": STARTED}],
    ids=["validation pod", "trainer pod"],
)
def test_the_policy_placement_is_forced_onto_the_pods(status: dict[str, Any]) -> None:
    observed = Observed(defaults=DEFAULTS, policy=PLACED)
    decision = decide_finetunejob(Obj("grader-v3", "ml", UID, 1, SPEC, status), observed, NOW)
    (job,) = [a.body for a in decision.actions if isinstance(a, Create) and a.body["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["pool"] == "training"
    assert {"key": "team", "value": "ml", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["tolerations"].count(GPU_TOLERATION) == 1


def test_model_version_name_follows_the_scheme() -> None:
    name = model_version_name("grader", "hf://meta-llama/Llama-3.2-1B-Instruct", 4, NOW)
    assert name == "grader-llama-3-2-1b-instruct-v4-20261122"


def _owned_by(uid: str | None) -> list[dict[str, Any]]:
    if uid is None:
        return []
    return [
        {"kind": "Other", "uid": "not-the-controller"},
        {"kind": "Job", "uid": uid, "controller": True},
    ]


def _api_pod(name: str, owner: str | None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "ownerReferences": _owned_by(owner)},
        "status": {
            "phase": "Failed",
            "startTime": "2026-11-22T19:00:00Z",
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "finishedAt": "2026-11-22T19:10:00Z",
                        }
                    }
                }
            ],
        },
    }


def test_views_carry_owners_and_times_and_keep_only_the_job_s_own_pods() -> None:
    job = job_summary(
        {
            "metadata": {
                "name": "grader-v3-train-1",
                "uid": "job-2",
                "ownerReferences": _owned_by(UID),
            }
        }
    )
    pods = [
        pod_summary(_api_pod("mine", "job-2")),
        pod_summary(_api_pod("of-a-replaced-job", "job-1")),
        pod_summary(_api_pod("orphan", None)),
    ]
    view = job_view(job, pods)
    assert view is not None and view.owner_uid == UID
    (only,) = view.pods
    assert only.name == "mine" and only.owner_uid == "job-2"
    assert (only.start_time, only.finished_at) == ("2026-11-22T19:00:00Z", "2026-11-22T19:10:00Z")
    assert job_summary({"metadata": {"name": "x", "uid": "u"}})["owner_uid"] is None


COUNTED = {
    "a first figure is added": (None, {"cost": {"gpuSeconds": 480.0}}, 480.0),
    "growth is added": ({"gpuSeconds": 480.0}, {"cost": {"gpuSeconds": 960.0}}, 480.0),
    "an unchanged figure adds nothing": ({"gpuSeconds": 480.0}, {"phase": "Running"}, 0.0),
}


@pytest.mark.parametrize("name", COUNTED, ids=list(COUNTED))
def test_the_gpu_seconds_counter_grows_by_what_a_decision_adds(name: str) -> None:
    before, patch, added = COUNTED[name]
    namespace = "cost-" + name.replace(" ", "-")
    labels = {"namespace": namespace, "model": "grader"}
    status = {"cost": before} if before else {}

    def counted() -> float:
        return REGISTRY.get_sample_value("whetstone_gpu_seconds_total", labels) or 0.0

    start = counted()
    record(Obj("grader-v3", namespace, UID, 1, SPEC, status), Decision(status=patch))
    assert counted() - start == added
