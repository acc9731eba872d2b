"""The canary state machine: step(spec, status, observed, now) -> next status, desired predictor.

Pure: no I/O, `now` is a parameter, every piece of state is in the returned status, so a
restarted operator resumes exactly where status says it was. Each call:

1. a new spec.modelVersion resets the rollout (keeping the stable version it started from);
2. new annotation commands (abort, retry, pause, resume, promote) are acted on and recorded
   as handled;
3. a round of analysis measured by the caller is judged and counted (too many failures abort);
4. the current step is held until KServe serves its weight, its pause or analysis is over and
   no analysis hold applies; then the next step starts, as far as the observed state allows;
5. after the last step the canary is promoted (canaryTrafficPercent cleared) and, once KServe
   serves it alone, the candidate becomes the stable version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from whetstone_operator.api.common import (
    format_time,
    parse_duration,
    parse_time,
)
from whetstone_operator.api.names import ABORT, PAUSE, PROMOTE, RESUME, RETRY
from whetstone_operator.api.rollout import (
    COMMAND_MAX,
    REASON_MAX,
    AnalysisRound,
    AnalysisStatus,
    CanaryStep,
    HandledCommands,
    PredictorStorage,
    RolloutPhase,
    RolloutSpec,
    RolloutStatus,
)
from whetstone_operator.api.rollout import (
    ROLLOUT_ACTIVE as ACTIVE,
)
from whetstone_operator.reconcile.canary.judge import Measurement, judge_round, round_outcome
from whetstone_operator.reconcile.canary.kserve import (
    Desired,
    ServiceView,
    check_ready,
    same_storage,
)
from whetstone_operator.reconcile.core import Draft, Event, Obj

COMMANDS = (("abort", ABORT), ("retry", RETRY), ("pause", PAUSE), ("resume", RESUME))
HISTORY = 10


@dataclass(frozen=True)
class Observed:
    """The world as the operator sees it now."""

    service: ServiceView | None = None
    candidate: PredictorStorage | None = None
    candidate_problem: str | None = None
    candidate_reason: str = "ModelVersionNotReady"
    # Why the candidate may not get its first traffic yet: (reason, message) while its
    # artifact is checked again, or when that check failed.
    first_traffic_problem: tuple[str, str] | None = None
    serving_version: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    measurements: tuple[Measurement, ...] | None = None


@dataclass
class StepResult:
    """The next status, what the predictor should say (None: leave it) and the Events."""

    status: RolloutStatus
    desired: Desired | None = None
    events: list[Event] = field(default_factory=list)


def weight_at(steps: Sequence[CanaryStep], index: int) -> int:
    """Canary weight during step `index`: the last setWeight up to it (100 past the end)."""
    if index >= len(steps):
        return 100
    weights = [s.set_weight for s in steps[: index + 1] if s.set_weight is not None]
    return weights[-1] if weights else 0


def describe_step(step: CanaryStep) -> str:
    if step.set_weight is not None:
        return f"setWeight {step.set_weight}"
    if step.pause is not None:
        return f"pause {step.pause.duration}" if step.pause.duration else "pause until promoted"
    assert step.analysis is not None
    return f"analysis ({step.analysis.successes} passing round(s))"


def step(
    spec: RolloutSpec,
    status: RolloutStatus,
    observed: Observed,
    now: datetime,
    *,
    generation: int | None = None,
) -> StepResult:
    """Advance the rollout as far as the observed state allows."""
    draft = Draft(Obj("", "", generation=generation), status, now)
    desired = advance(draft, spec, observed)
    return StepResult(draft.status, desired, draft.decision.events)


def advance(draft: Draft[RolloutStatus], spec: RolloutSpec, observed: Observed) -> Desired | None:
    """Advance the drafted rollout as far as the observed state allows; what the predictor
    should say (None: leave it)."""
    return _Machine(draft, spec, observed).run()


class _Machine:
    def __init__(self, draft: Draft[RolloutStatus], spec: RolloutSpec, observed: Observed) -> None:
        self.draft = draft
        self.spec = spec
        self.s = draft.status
        self.obs = observed
        self.now = draft.now
        self.generation = draft.obj.generation
        self.steps = spec.strategy.canary.steps
        self.analysis = spec.strategy.canary.analysis
        self.desired: Desired | None = None

    # ------------------------------------------------------------------ helpers

    def event(self, type_: str, reason: str, message: str) -> None:
        self.draft.event(type_, reason, message)

    def condition(self, type_: str, value: bool | None, reason: str, message: str) -> bool:
        """Set a condition; True when its status or message changed."""
        return self.draft.condition(type_, value, reason, message)

    def state(self, phase: RolloutPhase, message: str) -> None:
        self.s.phase = phase
        self.s.message = message

    def elapsed(self, since: str | None) -> float:
        return (self.now - parse_time(since)).total_seconds() if since else 0.0

    def handled(self) -> HandledCommands:
        if self.s.handled_commands is None:
            self.s.handled_commands = HandledCommands()
        return self.s.handled_commands

    # ------------------------------------------------------------------ the call

    def run(self) -> Desired | None:
        if self.s.canary_model_version and self.s.canary_model_version != self.spec.model_version:
            self.new_version()
        commands = self.new_commands()
        if "abort" in commands:
            self.handled().abort = commands["abort"]
            if self.s.phase in (None, "Pending", *ACTIVE):
                self.abort("AbortRequested", f"aborted by {ABORT}={commands['abort']}")
            else:
                self.ignored(ABORT, commands["abort"])
        if "retry" in commands:
            self.handled().retry = commands["retry"]
            if self.s.phase in ("Aborted", "Failed"):
                self.retry(commands["retry"])
            else:
                self.ignored(RETRY, commands["retry"])
        service = self.obs.service
        if self.s.phase == "Failed" and service is not None and service.model_form:
            self.s.phase = "Pending"  # the InferenceService was fixed: start over
        if self.s.phase in (None, "Pending"):
            self.start()
        self.pause_commands(commands)
        promote = commands.get("promote")
        if promote is not None:
            self.handled().promote = promote
            if self.s.phase not in ACTIVE:
                self.ignored(PROMOTE, promote)
                promote = None
            elif self.s.paused_by_command is not None:
                self.s.paused_by_command = None
                self.event("Normal", "Resumed", f"{PROMOTE}={promote} resumes the rollout")
        if self.s.phase in ACTIVE:
            self.progress(promote)
        elif self.s.phase == "Aborted":
            self.hold_stable()
        return self.desired

    def new_commands(self) -> dict[str, str]:
        handled = self.s.handled_commands or HandledCommands()
        new = {}
        for key, name in (*COMMANDS, ("promote", PROMOTE)):
            value = self.obs.annotations.get(name)
            # Recorded clipped: compared clipped, or a long value would be new every time.
            value = value[:COMMAND_MAX] if value is not None else None
            if value is not None and value != getattr(handled, key):
                new[key] = value
        return new

    def pause_commands(self, commands: dict[str, str]) -> None:
        """whetstone.dev/pause holds an active rollout at its step; resume lets it go on."""
        s = self.s
        if "pause" in commands:
            value = self.handled().pause = commands["pause"]
            if s.phase in ACTIVE and s.paused_by_command is None:
                s.paused_by_command = value
                self.event(
                    "Normal",
                    "PauseRequested",
                    f"{PAUSE}={value}: holding at step {s.current_step_index} "
                    f"({s.canary_weight}%) until {RESUME} or {PROMOTE} is set",
                )
            else:
                self.ignored(PAUSE, value)
        if "resume" in commands:
            value = self.handled().resume = commands["resume"]
            if s.phase in ACTIVE and s.paused_by_command is not None:
                s.paused_by_command = None
                self.event("Normal", "Resumed", f"{RESUME}={value}: the rollout goes on")
            else:
                self.ignored(RESUME, value)

    def ignored(self, name: str, value: str) -> None:
        self.event(
            "Normal", "CommandIgnored", f"{name}={value} ignored: the rollout is {self.s.phase}"
        )

    # ------------------------------------------------------------------ transitions

    def new_version(self) -> None:
        old = self.s
        fresh = RolloutStatus(
            conditions=old.conditions,
            observed_generation=old.observed_generation,
            handled_commands=old.handled_commands,
            phase="Pending",
        )
        # An unfinished rollout leaves its stable version in place; a finished one made
        # the old candidate stable, which the InferenceService now serves.
        if old.phase != "Succeeded":
            fresh.stable_model_version = old.stable_model_version
            fresh.stable_storage = old.stable_storage
            fresh.stable_revision = old.stable_revision
        self.s = self.draft.status = fresh
        self.event(
            "Normal",
            "NewModelVersion",
            f"spec.modelVersion changed from {old.canary_model_version} to "
            f"{self.spec.model_version}: starting a fresh rollout from the stable version",
        )

    def retry(self, value: str) -> None:
        old = self.s
        self.s = self.draft.status = RolloutStatus(
            conditions=old.conditions,
            observed_generation=old.observed_generation,
            handled_commands=old.handled_commands,
            phase="Pending",
            stable_model_version=old.stable_model_version,
            stable_storage=old.stable_storage,
            stable_revision=old.stable_revision,
        )
        self.event("Normal", "RetryRequested", f"{RETRY}={value}: starting again from step 0")

    def start(self) -> None:
        spec, s, obs = self.spec, self.s, self.obs
        name = spec.model_version
        if obs.candidate_problem is not None or obs.candidate is None:
            message = obs.candidate_problem or f"ModelVersion {name} not found in this namespace"
            if self.condition("ModelVersionReady", False, obs.candidate_reason, message):
                self.event("Warning", obs.candidate_reason, message)
            self.state("Pending", f"waiting: {message}")
            self.hold_stable()
            return
        if obs.first_traffic_problem is not None:
            reason, message = obs.first_traffic_problem
            if self.condition("ModelVersionReady", False, reason, message):
                self.event(
                    "Normal" if reason == "ArtifactVerifying" else "Warning", reason, message
                )
            self.state("Pending", f"waiting: {message}")
            self.hold_stable()
            return
        if self.condition(
            "ModelVersionReady", True, "Ready", f"ModelVersion {name} is approved and passes gates"
        ):
            self.event("Normal", "ModelVersionReady", f"ModelVersion {name} may be rolled out")
        service = obs.service
        if service is None:
            message = f"InferenceService {spec.inference_service.name} not found in this namespace"
            if self.condition("Progressing", False, "InferenceServiceNotFound", message):
                self.event("Warning", "InferenceServiceNotFound", message)
            self.state("Pending", f"waiting: {message}")
            self.hold_stable()
            return
        if not service.model_form:
            message = (
                f"InferenceService {service.name} has no spec.predictor.model: only the "
                "predictor.model form (KServe >= 0.8: modelFormat + storageUri) can be rolled "
                "out; convert it, and the rollout starts by itself"
            )
            if self.condition("Progressing", False, "UnsupportedInferenceService", message):
                self.event("Warning", "UnsupportedInferenceService", message)
            self.state("Failed", message)
            return
        if s.stable_storage is None:
            s.stable_model_version = obs.serving_version
            s.stable_storage = service.storage
            s.stable_revision = service.serving_revision()
        s.canary_model_version = name
        s.current_step_index = 0
        s.canary_weight = 0
        s.step_start_time = None
        s.not_ready_since = None
        s.canary_revision = None
        s.abort_reason = None
        s.completion_time = None
        s.paused_by_command = None
        s.start_time = format_time(self.now)
        s.analysis = AnalysisStatus() if self.analysis is not None else None
        if same_storage(obs.candidate, s.stable_storage):
            # Already the stable version: nothing to compare, promote straight away.
            s.current_step_index = len(self.steps)
        if self.analysis is not None:
            self.condition("Analysis", None, "NotStarted", "waiting for the canary to serve")
        stable = s.stable_model_version or "no registered version"
        message = (
            f"rolling out {name} on InferenceService {spec.inference_service.name} "
            f"(stable: {stable})"
        )
        self.condition("Progressing", True, "Started", message)
        self.state("Progressing", message)
        self.event("Normal", "Started", message)

    def abort(self, reason: str, message: str) -> None:
        s = self.s
        s.phase = "Aborted"
        s.abort_reason = message[:REASON_MAX]
        s.paused_by_command = None
        s.canary_weight = 0
        s.step_start_time = None
        s.not_ready_since = None
        restored = s.stable_model_version or "the previous predictor storage"
        summary = (
            f"{message}; canary set to 0% and {restored} restored"
            if s.stable_storage is not None
            else message
        )
        s.message = f"aborted: {summary}"
        self.condition("Progressing", False, reason, message)
        self.event("Warning", "Aborted", summary)
        self.hold_stable()

    def hold_stable(self) -> None:
        """Aborted, or waiting after a reset: the stable version takes all the traffic."""
        if self.s.stable_storage is not None:
            self.s.canary_weight = 0
            self.desired = Desired(self.s.stable_storage, 0)

    def succeed(self, service: ServiceView) -> None:
        s, name = self.s, self.spec.model_version
        previous = s.stable_model_version
        s.phase = "Succeeded"
        s.stable_model_version = name
        s.stable_storage = self.obs.candidate
        s.stable_revision = service.latest_ready_revision
        s.canary_weight = 100
        s.step_start_time = None
        s.not_ready_since = None
        s.completion_time = format_time(self.now)
        message = (
            f"{name} promoted: the stable version of InferenceService "
            f"{self.spec.inference_service.name} (was {previous or 'unregistered'})"
        )
        s.message = message
        self.condition("Progressing", True, "Promoted", message)
        self.event("Normal", "Promoted", message)

    # ------------------------------------------------------------------ progress

    def progress(self, promote: str | None) -> None:
        s, obs = self.s, self.obs
        if obs.candidate_problem is not None or obs.candidate is None:
            message = obs.candidate_problem or f"ModelVersion {self.spec.model_version} is gone"
            self.condition("ModelVersionReady", False, obs.candidate_reason, message)
            self.abort(obs.candidate_reason, message)
            return
        if not self.account_analysis():
            return
        n = len(self.steps)
        if s.paused_by_command is not None and promote is None:
            # Held by hand: the predictor stays as it is, the analysis keeps running (and can
            # still abort), no clock can end the hold.
            index = s.current_step_index or 0
            where = "promotion" if index >= n else f"step {index}"
            self.state(
                "Paused",
                f"{where}: paused by {PAUSE}={s.paused_by_command}: set {RESUME} to continue",
            )
            self.condition("Progressing", True, "PausedByCommand", s.message or "")
            return
        if promote is not None and (s.current_step_index or 0) < n:
            index = s.current_step_index or 0
            full = promote.lower().startswith("full")
            what = (
                "all remaining steps"
                if full
                else f"step {index} ({describe_step(self.steps[index])})"
            )
            self.event("Normal", "PromoteRequested", f"{PROMOTE}={promote}: skipping {what}")
            if s.analysis is not None:
                s.analysis.consecutive_inconclusive = 0
            self.enter(n if full else index + 1)
        for _ in range(n + 2):
            if not self.advance(obs.candidate):
                return

    def enter(self, index: int) -> None:
        s = self.s
        s.current_step_index = index
        s.step_start_time = None
        if index < len(self.steps) and self.steps[index].analysis is not None and s.analysis:
            s.analysis.consecutive_successes = 0
        if index >= len(self.steps):
            self.event("Normal", "Promoting", "all steps done: promoting the canary to 100%")

    def advance(self, candidate: PredictorStorage) -> bool:
        """Work on the current step; True when it completed and the next one may start."""
        s, n = self.s, len(self.steps)
        index = s.current_step_index or 0
        weight = weight_at(self.steps, index)
        desired = Desired(candidate, None if index >= n else weight)
        self.desired = desired
        s.canary_weight = weight
        service = self.obs.service
        if service is None:
            ok, why = False, f"InferenceService {self.spec.inference_service.name} not found"
        else:
            ok, why = check_ready(service, desired)
        where = "promotion" if index >= n else f"step {index} ({describe_step(self.steps[index])})"
        if not ok:
            s.not_ready_since = s.not_ready_since or format_time(self.now)
            self.condition("CanaryReady", False, "Waiting", why)
            stalled = self.elapsed(s.not_ready_since)
            if index < n and stalled > self.spec.progress_deadline_seconds:
                self.abort(
                    "ProgressDeadlineExceeded",
                    f"no progress for {stalled:.0f}s at {where} "
                    f"(progressDeadlineSeconds {self.spec.progress_deadline_seconds}): {why}",
                )
                return False
            self.state("Progressing", f"{where}: waiting for KServe: {why}")
            return False
        assert service is not None
        s.not_ready_since = None
        self.condition("CanaryReady", True, "Ready", why)
        if index >= n:
            self.succeed(service)
            return False
        s.canary_revision = service.latest_ready_revision
        current = self.steps[index]
        if s.step_start_time is None:
            s.step_start_time = format_time(self.now)
            if current.pause is not None:
                length = current.pause.duration or "until promoted"
                self.event("Normal", "Paused", f"step {index}: paused at {weight}% ({length})")
        done, phase, waiting = self.step_done(current, weight)
        if not done:
            self.state(phase, f"{where}: {waiting}")
            self.condition("Progressing", True, phase, self.s.message or "")
            return False
        hold = self.analysis_hold()
        if hold is not None:
            if self.condition("Progressing", True, "AnalysisHold", hold):
                self.event("Warning", "AnalysisHold", hold)
            self.state("Paused", f"{where}: {hold}")
            return False
        if current.set_weight is not None:
            message = f"canary revision {s.canary_revision} serves {weight}% of the traffic"
            self.event("Normal", "WeightSet", message)
        else:
            message = f"step {index} ({describe_step(current)}) complete"
            self.event("Normal", "StepCompleted", message)
        self.condition("Progressing", True, "StepCompleted", message)
        self.enter(index + 1)
        return True

    def step_done(self, current: CanaryStep, weight: int) -> tuple[bool, RolloutPhase, str]:
        s = self.s
        if current.set_weight is not None:
            return True, "Progressing", ""
        if current.pause is not None:
            if current.pause.duration is None:
                return False, "Paused", f"paused at {weight}%: set annotation {PROMOTE} to continue"
            length = parse_duration(current.pause.duration)
            if self.elapsed(s.step_start_time) < length:
                assert s.step_start_time is not None
                until = format_time(parse_time(s.step_start_time) + timedelta(seconds=length))
                return False, "Paused", f"paused at {weight}% until {until}"
            return True, "Progressing", ""
        assert current.analysis is not None
        need = current.analysis.successes
        have = s.analysis.consecutive_successes if s.analysis else 0
        if have >= need:
            return True, "Progressing", ""
        return False, "Progressing", f"{have} of {need} passing analysis round(s) in a row"

    # ------------------------------------------------------------------ analysis

    def analysis_hold(self) -> str | None:
        """Why the analysis does not let the current step complete (None: it does)."""
        if self.analysis is None or self.s.analysis is None:
            return None
        totals = self.s.analysis
        if totals.consecutive_inconclusive > self.analysis.inconclusive_limit:
            return (
                f"analysis inconclusive {totals.consecutive_inconclusive} round(s) in a row "
                f"(inconclusiveLimit {self.analysis.inconclusive_limit}): waiting for a passing "
                f"round, or set annotation {PROMOTE}"
            )
        if totals.successes == 0:
            # No evidence yet: more traffic, or promotion, has to wait for a passing round.
            return "waiting for a first passing analysis round"
        return None

    def account_refusals(self, measured: Sequence[Measurement]) -> None:
        """AnalysisTargetsAllowed: False, with a Warning Event, while a metric's target is
        refused (by the namespace's policy or the operator's address rules); True again once
        every target was allowed."""
        refused = [f"{m.metric}: {m.error}" for m in measured if m.refused]
        if refused:
            message = "; ".join(refused)[:4096]
            if self.condition("AnalysisTargetsAllowed", False, "TargetRefused", message):
                self.event("Warning", "AnalysisTargetRefused", f"nothing sent: {message}")
        elif any(c.type == "AnalysisTargetsAllowed" for c in self.s.conditions):
            self.condition(
                "AnalysisTargetsAllowed", True, "Allowed", "every analysis target is allowed"
            )

    def account_analysis(self) -> bool:
        """Count a round measured by the caller; False when it aborted the rollout."""
        measured = self.obs.measurements
        if measured is None or self.analysis is None:
            return True
        s = self.s
        totals = s.analysis = s.analysis or AnalysisStatus()
        self.account_refusals(measured)
        results = judge_round(self.analysis.metrics, measured, self.now)
        outcome, detail = round_outcome(results)
        totals.last_run_time = format_time(self.now)
        totals.last_results = results
        totals.history = [
            *totals.history[-(HISTORY - 1) :],
            AnalysisRound(time=format_time(self.now), outcome=outcome, message=detail[:1024]),
        ]
        if outcome == "Successful":
            totals.successes += 1
            totals.consecutive_successes += 1
            totals.consecutive_inconclusive = 0
            if self.condition("Analysis", True, "Passing", "the last round passed"):
                self.event("Normal", "AnalysisPassing", f"analysis round passed: {detail}")
            return True
        totals.consecutive_successes = 0
        if outcome == "Inconclusive":
            totals.inconclusive += 1
            totals.consecutive_inconclusive += 1
            if self.condition("Analysis", None, "Inconclusive", detail):
                self.event("Warning", "AnalysisInconclusive", f"analysis inconclusive: {detail}")
            return True
        totals.failures += 1
        totals.consecutive_inconclusive = 0
        limit = self.analysis.failure_limit
        message = f"analysis failed ({totals.failures} failure(s), failureLimit {limit}): {detail}"
        self.condition("Analysis", False, "Failed", message)
        self.event("Warning", "AnalysisFailed", message)
        if totals.failures > limit:
            self.abort("AnalysisFailed", message)
            return False
        return True
