"""FineTuneJob decisions: (object, observed children, now) -> (actions, status patch, events).

Pure: no I/O, `now` is a parameter. The handler observes, calls `decide_finetunejob`, executes
the actions (idempotent creates and deletes of deterministically named children), then writes
the status patch. Because every step is recomputed from status and the observed children, a
restarted operator continues where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from whetstone_contract.result import (
    EXIT_INVALID_DATA,
    CheckpointInfo,
    DataReport,
    Progress,
    TrainerResult,
)
from whetstone_operator.api import API_VERSION
from whetstone_operator.api.common import (
    Condition,
    format_time,
    get_condition,
    parse_time,
)
from whetstone_operator.api.finetunejob import (
    FINETUNEJOB_FINISHED,
    AttemptCost,
    Cost,
    FineTuneJobSpec,
    FineTuneJobStatus,
)
from whetstone_operator.api.modelversion import KNOWN_METRICS, MetricValues
from whetstone_operator.api.names import (
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_MODEL_VERSION,
    LABEL_PART_OF,
    MANAGED_BY,
)
from whetstone_operator.reconcile.core import Create, Decision, Delete, Draft, Event, Obj
from whetstone_operator.reconcile.policy import Policy
from whetstone_operator.reconcile.training_policy import (
    budget_exhausted,
    check_training_policy,
    forced_placement,
    has_budget,
)
from whetstone_operator.reconcile.validation import check_spec, summarize_errors
from whetstone_operator.render.trainer_config import build_trainer_config
from whetstone_operator.render.workload import (
    Owner,
    Placement,
    TrainerDefaults,
    build_config_map,
    build_rendezvous_service,
    build_trainer_job,
    build_validation_job,
    label_value,
    trainer_job_name,
)

# What a started run takes from a changed spec; any other change would mix two specs in one
# run (a checkpoint of one LoRA rank resumed with another, data validated under other rules).
# Registration happens after training, so its changes apply too.
MUTABLE_WHILE_RUNNING = ("suspend", "activeDeadlineSeconds", "backoffLimit", "registration")
SPEC_CHANGED = (
    "the spec changed after the run started and is not applied: a started run takes only "
    "suspend, registration, and activeDeadlineSeconds and backoffLimit from its next resume. "
    "Revert the change, or create a new FineTuneJob to train with it"
)
# A child created moments ago may not have reached the watch-fed index yet: within this
# window its absence means "not seen yet", after it "gone" (and it is created again).
INDEX_GRACE_SECONDS = 30.0
WAITING_PROBLEMS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
)


@dataclass(frozen=True)
class PodView:
    """What the decision needs to know about one pod."""

    name: str
    phase: str
    ip: str | None = None
    index: int = 0
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    start_time: str | None = None
    finished_at: str | None = None
    owner_uid: str | None = None


@dataclass(frozen=True)
class JobView:
    """What the decision needs to know about one Job. `owner_uid`: the uid of its controller
    (None when it has none); a Job of ours carries the FineTuneJob's."""

    name: str
    owner_uid: str | None = None
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None
    failed_message: str | None = None
    pods: tuple[PodView, ...] = ()


@dataclass(frozen=True)
class VersionView:
    """An existing ModelVersion of the same namespace."""

    name: str
    model: str
    version: int
    fine_tune_job: str | None


@dataclass(frozen=True)
class Observed:
    """The children and related objects as the operator sees them now."""

    validation_job: JobView | None = None
    trainer_job: JobView | None = None
    progress: Progress | None = None
    checkpoints: tuple[CheckpointInfo, ...] | None = None
    model_versions: tuple[VersionView, ...] = ()
    defaults: TrainerDefaults = field(default_factory=TrainerDefaults)
    policy: Policy = field(default_factory=Policy)


def _status(raw: dict[str, Any]) -> FineTuneJobStatus:
    try:
        return FineTuneJobStatus.model_validate(raw)
    except ValidationError:
        # A hand-edited or older status must not wedge the reconcile: keep what parses.
        keep = {k: v for k, v in raw.items() if k in ("phase", "attempt", "modelVersion")}
        return FineTuneJobStatus.model_validate(keep)


def _parse_json(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    # FallbackToLogsOnError may put log lines before the JSON: take the last JSON line.
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            return value if isinstance(value, dict) else None
    return None


def parse_data_report(text: str | None) -> DataReport | None:
    """The validation pod's termination message: a DataReport (bare or under dataReport)."""
    raw = _parse_json(text)
    if raw is None:
        return None
    raw = raw.get("dataReport", raw)
    try:
        return DataReport.model_validate(raw)
    except ValidationError:
        return None


def parse_result(text: str | None) -> TrainerResult | None:
    """The trainer's termination message: a TrainerResult."""
    raw = _parse_json(text)
    if raw is None:
        return None
    try:
        return TrainerResult.model_validate(raw)
    except ValidationError:
        return None


def _rank0(job: JobView) -> PodView | None:
    pods = sorted(job.pods, key=lambda p: (p.index, p.phase != "Succeeded", p.name))
    return pods[0] if pods else None


def _failure_detail(job: JobView) -> tuple[str, str]:
    """A reason and message for a failed Job: the pod's reason beats the Job's."""
    pod_reasons = [p for p in job.pods if p.phase == "Failed"]
    reason = job.failed_reason or "TrainerFailed"
    parts = []
    if job.failed_message:
        parts.append(job.failed_message)
    for pod in pod_reasons[-1:]:
        if pod.reason == "OOMKilled":
            reason = "OOMKilled"
        detail = pod.message.strip().splitlines()[-1] if pod.message else ""
        parts.append(
            f"pod {pod.name}: {pod.reason or 'Error'} (exit code {pod.exit_code})"
            + (f": {detail[:500]}" if detail else "")
        )
    return reason, "; ".join(parts) or "the trainer Job failed"


def base_model_slug(uri: str) -> str:
    """`hf://meta-llama/Llama-3.2-1B-Instruct` -> `llama-3-2-1b-instruct` (a DNS label part)."""
    tail = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    slug = re.sub(r"[^a-z0-9]+", "-", tail.lower()).strip("-")
    return slug[:40].strip("-") or "model"


def model_version_name(model: str, base_uri: str, version: int, now: datetime) -> str:
    """`<model>-<base>-v<version>-<yyyymmdd>`."""
    return f"{model}-{base_model_slug(base_uri)}-v{version}-{now.strftime('%Y%m%d')}"


def metric_values(raw: dict[str, Any]) -> MetricValues:
    """The trainer's metrics dict -> MetricValues (unknown names go to custom)."""

    def split(src: dict[str, Any]) -> dict[str, Any]:
        known = {k: float(v) for k, v in src.items() if k in KNOWN_METRICS}
        custom = {
            k: float(v)
            for k, v in src.items()
            if k not in KNOWN_METRICS and k != "baseline" and isinstance(v, int | float)
        }
        return {**known, "custom": custom}

    values = split(raw)
    baseline = raw.get("baseline")
    if isinstance(baseline, dict):
        values["baseline"] = split(baseline)
    return MetricValues.model_validate(values)


def build_model_version(
    job: Obj,
    spec: FineTuneJobSpec,
    result: TrainerResult,
    existing: tuple[VersionView, ...],
    trainer_image: str,
    now: datetime,
) -> dict[str, Any]:
    """The ModelVersion registered from a successful FineTuneJob (next free version)."""
    assert spec.registration is not None
    model = spec.registration.model
    version = 1 + max((v.version for v in existing if v.model == model), default=0)
    name = model_version_name(model, spec.base_model.uri, version, now)
    mv_spec: dict[str, Any] = {
        "model": model,
        "version": version,
        "artifact": {
            "uri": result.artifact_uri,
            "format": result.artifact_format,
            "digest": result.manifest_digest,
        },
        "baseModel": {"uri": spec.base_model.uri},
        "source": {"fineTuneJob": job.name, "trainerImage": trainer_image},
        "metrics": metric_values(result.metrics).wire(),
        "gates": [g.wire() for g in spec.registration.gates],
        "approval": {"required": spec.registration.approval_required},
    }
    if spec.output.secret_ref is not None:
        mv_spec["artifact"]["secretRef"] = {"name": spec.output.secret_ref.name}
    if result.data_report.dataset_digest:
        mv_spec["source"]["datasetDigest"] = result.data_report.dataset_digest
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": {
                LABEL_JOB: label_value(job.name),
                LABEL_MODEL: model,
                LABEL_MODEL_VERSION: str(version),
                LABEL_PART_OF: "whetstone",
                LABEL_MANAGED_BY: MANAGED_BY,
            },
        },
        "spec": mv_spec,
    }


def spec_fingerprint(spec: Mapping[str, Any]) -> str:
    """A digest of the spec without the fields a started run takes."""
    kept = {k: v for k, v in spec.items() if k not in MUTABLE_WHILE_RUNNING}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _spec_changed(b: Draft[FineTuneJobStatus]) -> bool:
    """Whether the spec changed since the run started (beyond what a started run takes);
    reported in the SpecApplied condition, with a Warning Event when it first happens."""
    current = spec_fingerprint(b.obj.spec)
    started = b.status.spec_fingerprint
    if started is None:
        if b.status.phase not in (None, "Pending"):
            b.status.spec_fingerprint = current  # a run from before fingerprints were kept
        return False
    applied = get_condition(b.status.conditions, "SpecApplied")
    if started == current:
        if applied is not None and applied.status != "True":
            b.condition(
                "SpecApplied", True, "Unchanged", "the spec is the one the run started from"
            )
        return False
    b.condition("SpecApplied", False, "ChangedAfterStart", SPEC_CHANGED)
    if applied is None or applied.status != "False":
        b.decision.events.append(Event("Warning", "SpecChangedAfterStart", SPEC_CHANGED))
    return True


def decide_finetunejob(job: Obj, observed: Observed, now: datetime) -> Decision:
    """The next actions and status of a FineTuneJob."""
    b = Draft(job, _status(job.status), now)
    if b.status.phase in FINETUNEJOB_FINISHED:
        return b.finish() if b.before.get("observedGeneration") != job.generation else Decision()
    spec = check_spec(b, "FineTuneJob")
    if spec is None:
        return b.finish()
    assert isinstance(spec, FineTuneJobSpec)
    owner = Owner(job.name, job.namespace, job.uid)
    conflicts = _child_conflicts(b, observed)
    # The policy admits a job once, before anything of it is scheduled: a started run is
    # never stopped by a later policy change.
    if not _started(b, observed, conflicts) and not _admitted(b, spec, observed.policy, observed):
        return b.finish()
    if b.status.phase is None:
        b.phase("Pending", "Accepted", "spec is valid; validating data")

    changed = _spec_changed(b)
    forced = forced_placement(observed.policy)
    if not _decide_data(b, spec, owner, observed, forced, conflicts):
        return b.finish()
    _decide_training(b, spec, owner, observed, forced, conflicts, changed)
    return b.finish()


def _started(b: Draft[FineTuneJobStatus], observed: Observed, conflicts: dict[str, str]) -> bool:
    """Whether anything of this job has been scheduled (its validation Job created)."""
    vjob = observed.validation_job
    return (
        b.status.phase not in (None, "Pending")
        or b.status.spec_fingerprint is not None
        or (vjob is not None and vjob.name not in conflicts)
    )


def _admitted(
    b: Draft[FineTuneJobStatus], spec: FineTuneJobSpec, policy: Policy, observed: Observed
) -> bool:
    """The policy check and the GPU budget of a job not started yet: True when it may start;
    otherwise it waits in Pending with the condition that says why."""
    violations = check_training_policy(spec, policy, observed.defaults)
    if violations:
        message = summarize_errors([v.describe() for v in violations])
        if b.condition("PolicyAllowed", False, "PolicyViolation", message):
            b.event("Warning", "PolicyViolation", message)
        b.status.phase = "Pending"
        b.status.message = f"not allowed by the platform policy: {message}"
        return False
    b.condition("PolicyAllowed", True, "PolicyAllowed", f"allowed by {policy.field('training')}")
    exhausted = budget_exhausted(policy, b.now)
    budget = get_condition(b.status.conditions, "BudgetAvailable")
    if exhausted is not None:
        b.condition("BudgetAvailable", False, "BudgetExhausted", exhausted)
        # Once per wait: the spent figure in the message moves while other jobs run.
        if budget is None or budget.status != "False":
            b.event("Warning", "BudgetExhausted", exhausted)
        b.status.phase = "Pending"
        b.status.message = f"waiting for GPU budget: {exhausted}"
        return False
    if has_budget(policy) or budget is not None:
        b.condition(
            "BudgetAvailable",
            True,
            "BudgetAvailable",
            f"within {policy.field('training.budget.gpuHoursPerMonth')}",
        )
    return True


def _child_conflicts(b: Draft[FineTuneJobStatus], observed: Observed) -> dict[str, str]:
    """Jobs named like this job's children that it does not own, by name -> the message that
    says so. They are never read or acted on; the ChildConflict condition names them."""
    conflicts = {
        j.name: f"Job {j.name} exists but is not owned by this FineTuneJob: delete or rename it"
        for j in (observed.validation_job, observed.trainer_job)
        if j is not None and j.owner_uid != b.obj.uid
    }
    if conflicts:
        message = "; ".join(conflicts.values())
        if b.condition("ChildConflict", True, "ChildConflict", message):
            b.event("Warning", "ChildConflict", message)
    else:
        before = get_condition(b.status.conditions, "ChildConflict")
        if before is not None and before.status != "False":
            b.condition("ChildConflict", False, "NoConflict", "every child Job is this job's own")
    return conflicts


def _decide_data(
    b: Draft[FineTuneJobStatus],
    spec: FineTuneJobSpec,
    owner: Owner,
    observed: Observed,
    forced: Placement,
    conflicts: dict[str, str],
) -> bool:
    """Run the CPU validation pod; True once the data is known good."""
    defaults = observed.defaults
    validated = get_condition(b.status.conditions, "DataValidated")
    if validated is not None and validated.status == "True":
        return True
    vjob = observed.validation_job
    if vjob is not None and vjob.name in conflicts:
        b.status.message = conflicts[vjob.name]
        return False
    if vjob is None and recently(validated, "Validating", b.now):
        return False
    if vjob is None:
        config = build_trainer_config(
            owner.name, owner.namespace, spec, progress_port=defaults.progress_port
        )
        b.decision.actions += [
            Create(build_config_map(owner, config)),
            Create(build_validation_job(owner, spec, defaults, forced)),
        ]
        b.status.spec_fingerprint = spec_fingerprint(b.obj.spec)
        b.condition("DataValidated", None, "Validating", "the validation pod checks the data")
        b.phase("Validating", "ValidationStarted", "validating data on a CPU pod")
        return False
    pod = _rank0(vjob)
    report = parse_data_report(pod.message if pod else None)
    if vjob.complete:
        if report is not None:
            b.status.data_report = report
        b.condition("DataValidated", True, "DataValid", _report_summary(report))
        return True
    if vjob.failed_reason is not None or (pod is not None and pod.phase == "Failed"):
        if report is not None:
            b.status.data_report = report
        invalid = pod is not None and pod.exit_code == EXIT_INVALID_DATA
        reason = "DataInvalid" if invalid else "ValidationFailed"
        detail = _report_problems(report) if report else _failure_detail(vjob)[1]
        message = f"data validation failed: {detail}"
        b.condition("DataValidated", False, reason, message)
        b.status.completion_time = format_time(b.now)
        b.phase("Failed", reason, message, warning=True)
        return False
    waiting = _waiting_problem(vjob)
    b.phase("Validating", "ValidationStarted", waiting or "validating data on a CPU pod")
    return False


def recently(condition: Condition | None, reason: str, now: datetime) -> bool:
    """Whether `condition` took `reason` within the index grace window."""
    if condition is None or condition.reason != reason or not condition.last_transition_time:
        return False
    age = (now - parse_time(condition.last_transition_time)).total_seconds()
    return 0 <= age < INDEX_GRACE_SECONDS


def _report_summary(report: DataReport | None) -> str:
    if report is None:
        return "data is valid"
    dropped = ", ".join(f"{k}: {v}" for k, v in sorted(report.dropped.items()) if v)
    return f"{report.examples} training examples" + (f" (dropped {dropped})" if dropped else "")


def _report_problems(report: DataReport) -> str:
    lines = "; ".join(report.invalid_lines[:5])
    return lines or _report_summary(report)


def _waiting_problem(job: JobView) -> str | None:
    for pod in job.pods:
        if pod.phase == "Pending" and pod.reason in WAITING_PROBLEMS:
            return f"pod {pod.name} is waiting: {pod.reason}" + (
                f": {pod.message}" if pod.message else ""
            )
    return None


def _decide_training(
    b: Draft[FineTuneJobStatus],
    spec: FineTuneJobSpec,
    owner: Owner,
    observed: Observed,
    forced: Placement,
    conflicts: dict[str, str],
    spec_changed: bool = False,
) -> None:
    defaults = observed.defaults
    attempt = max(b.status.attempt, 1)
    tjob = observed.trainer_job
    resuming = b.status.phase == "Suspended" and not spec.suspend
    if tjob is not None and tjob.name in conflicts and not resuming:
        b.status.message = conflicts[tjob.name]
        return
    if tjob is not None and not resuming:
        _record_cost(b, spec, attempt, tjob, stopping=spec.suspend)
    if spec.suspend:
        if tjob is not None:
            b.decision.actions.append(
                Delete("batch/v1", "Job", trainer_job_name(owner.name, attempt))
            )
        b.phase("Suspended", "Suspended", "suspended: trainer pods stopped, checkpoints kept")
        b.condition("Training", False, "Suspended", "suspended by spec.suspend")
        return
    training = get_condition(b.status.conditions, "Training")
    if tjob is None and b.status.phase == "Running" and recently(training, "TrainerStarted", b.now):
        return
    if b.status.phase == "Suspended":
        # A resume starts a new run; the trainer picks up the latest complete checkpoint.
        attempt = b.status.attempt + 1
        tjob = None
    if tjob is None and spec_changed:
        # New trainer pods would mix the changed spec with the started run's config and
        # checkpoints: hold until the change is reverted.
        held = "Suspended" if b.status.phase == "Suspended" else (b.status.phase or "Pending")
        b.phase(held, "SpecChangedAfterStart", f"not starting trainer pods: {SPEC_CHANGED}")
        return
    if tjob is None:
        if attempt > 1:
            # The config was written with the validation Job; a new run re-asserts it in case
            # it was removed while the job was suspended.
            config = build_trainer_config(
                owner.name, owner.namespace, spec, progress_port=defaults.progress_port
            )
            b.decision.actions.append(Create(build_config_map(owner, config)))
        if spec.resources.nodes > 1:
            b.decision.actions.append(Create(build_rendezvous_service(owner)))
        b.decision.actions.append(Create(build_trainer_job(owner, spec, defaults, attempt, forced)))
        b.status.attempt = attempt
        b.status.start_time = b.status.start_time or format_time(b.now)
        b.condition("Training", True, "TrainerStarted", f"trainer run {attempt} started")
        b.phase(
            "Running",
            "TrainingStarted",
            "training",
            event_message=f"trainer Job {trainer_job_name(owner.name, attempt)}",
        )
        return
    b.status.attempt = attempt
    b.status.restarts = tjob.failed
    # Recorded with the Job's creation; when that status write was lost (a crash, an API
    # error), the next reconcile finds the Job and records them then rather than never.
    b.status.start_time = b.status.start_time or format_time(b.now)
    if get_condition(b.status.conditions, "Training") is None:
        b.condition("Training", True, "TrainerStarted", f"trainer run {attempt} started")
    if tjob.complete:
        _decide_success(b, spec, tjob, observed, defaults)
        return
    if tjob.failed_reason is not None:
        reason, message = _failure_detail(tjob)
        b.status.completion_time = format_time(b.now)
        b.condition("Training", False, reason, message)
        b.phase("Failed", reason, f"training failed: {message}", warning=True)
        return
    if observed.progress is not None:
        b.status.progress = observed.progress
    if observed.checkpoints is not None:
        b.status.checkpoints = list(observed.checkpoints[-10:])
    message = _waiting_problem(tjob) or _running_message(b.status.progress, tjob)
    b.phase("Running", "TrainingStarted", message)


def _record_cost(
    b: Draft[FineTuneJobStatus],
    spec: FineTuneJobSpec,
    attempt: int,
    tjob: JobView,
    stopping: bool,
) -> None:
    """status.cost from the trainer pods of `attempt`: (end or now - start) x gpusPerNode each.
    Figures only grow: pods that are gone (retried, deleted on suspend) keep what they had."""
    res = spec.resources
    done = stopping or tjob.complete or tjob.failed_reason is not None
    pod_seconds = 0.0
    starts: list[datetime] = []
    ends: list[datetime] = []
    for pod in tjob.pods:
        if not pod.start_time:
            continue
        start = parse_time(pod.start_time)
        starts.append(start)
        if pod.finished_at:
            end = parse_time(pod.finished_at)
            ends.append(end)
            elapsed = (end - start).total_seconds()
        elif pod.phase in ("Succeeded", "Failed"):
            continue  # ended without a recorded end: what was counted while it ran stands
        else:
            elapsed = (b.now - start).total_seconds()
            if not done:
                # Whole minutes while it runs: a figure moving every resync would cost a
                # status write per running job per resync.
                elapsed = elapsed // 60 * 60
        pod_seconds += max(elapsed, 0.0)
    cost = b.status.cost or Cost()
    entries = {a.attempt: a for a in cost.attempts}
    before = entries.get(attempt) or AttemptCost(attempt=attempt, gpus=0)
    end_time = before.end_time
    if done:
        end_time = format_time(max(ends)) if ends and not stopping else format_time(b.now)
    entries[attempt] = AttemptCost(
        attempt=attempt,
        gpus=res.nodes * res.gpus_per_node,
        start_time=before.start_time or (format_time(min(starts)) if starts else None),
        end_time=end_time if done else None,
        gpu_seconds=max(before.gpu_seconds, pod_seconds * res.gpus_per_node),
    )
    attempts = [entries[k] for k in sorted(entries)]
    total = sum(a.gpu_seconds for a in attempts)
    b.status.cost = Cost(gpu_seconds=max(cost.gpu_seconds, total), attempts=attempts)


def _running_message(progress: Progress | None, job: JobView) -> str:
    restarts = f", {job.failed} restart(s)" if job.failed else ""
    if progress is None or not progress.total_steps:
        return f"training{restarts}"
    return f"step {progress.step}/{progress.total_steps}{restarts}"


def _decide_success(
    b: Draft[FineTuneJobStatus],
    spec: FineTuneJobSpec,
    tjob: JobView,
    observed: Observed,
    defaults: TrainerDefaults,
) -> None:
    pod = _rank0(tjob)
    result = parse_result(pod.message if pod else None)
    if result is None:
        message = "the trainer finished without a readable result (termination message)"
        b.status.completion_time = format_time(b.now)
        b.condition("Training", False, "ResultMissing", message)
        b.phase("Failed", "ResultMissing", message, warning=True)
        return
    b.status.artifact_uri = result.artifact_uri
    b.status.artifact_digest = result.manifest_digest
    b.status.metrics = metric_values(result.metrics)
    if result.data_report.examples or b.status.data_report is None:
        b.status.data_report = result.data_report
    b.status.hyperparameters = {k: str(v) for k, v in result.hyperparameters.items()}
    previous = b.status.progress or Progress()
    b.status.progress = previous.model_copy(
        update={"step": result.steps or previous.step, "percent": 100, "eta": None}
    )
    b.condition("Training", True, "TrainerSucceeded", f"artifact {result.artifact_uri}")
    if spec.registration is not None and b.status.model_version is None:
        mine = [v for v in observed.model_versions if v.fine_tune_job == b.obj.name]
        if mine:
            b.status.model_version = mine[0].name
        else:
            body = build_model_version(
                b.obj, spec, result, observed.model_versions, spec.image or defaults.image, b.now
            )
            # The name is this job's only when the existing one was registered by it.
            b.act(Create(body, must_match=("spec.source.fineTuneJob",)))
            b.status.model_version = body["metadata"]["name"]
            b.decision.events.append(
                Event("Normal", "Registered", f"registered ModelVersion {body['metadata']['name']}")
            )
    b.status.completion_time = b.status.completion_time or format_time(b.now)
    b.phase("Succeeded", "Succeeded", f"artifact {result.artifact_uri} ({result.manifest_digest})")
