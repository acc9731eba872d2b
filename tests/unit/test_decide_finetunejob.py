"""decide_finetunejob as a table: (status, observed) -> (actions, phase, events)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from whetstone_contract.result import CheckpointInfo, Progress
from whetstone_operator.reconcile.core import Create, Delete, Obj, apply_merge_patch
from whetstone_operator.reconcile.finetunejob import (
    JobView,
    Observed,
    PodView,
    VersionView,
    decide_finetunejob,
    model_version_name,
    spec_fingerprint,
)
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


def vjob(**kw: Any) -> JobView:
    return JobView(name="grader-v3-validate", **kw)


def tjob(attempt: int = 1, **kw: Any) -> JobView:
    return JobView(name=f"grader-v3-train-{attempt}", **kw)


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
    return replace(case.observed, defaults=DEFAULTS)


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


def test_model_version_name_follows_the_scheme() -> None:
    name = model_version_name("grader", "hf://meta-llama/Llama-3.2-1B-Instruct", 4, NOW)
    assert name == "grader-llama-3-2-1b-instruct-v4-20261122"
