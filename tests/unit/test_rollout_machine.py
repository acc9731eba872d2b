"""The canary state machine as named scenarios: a simulated KServe answers every patch, the
clock advances tick by tick, and each case checks the trace and the predictor patches."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from whetstone_operator.api.rollout import PredictorStorage, RolloutSpec, RolloutStatus
from whetstone_operator.reconcile.canary import (
    ABORT,
    PAUSE,
    PROMOTE,
    RESUME,
    RETRY,
    Measurement,
    Observed,
    ServiceView,
    Traffic,
    same_storage,
    step,
    weight_at,
)
from whetstone_operator.reconcile.canary.kserve import is_applied

T0 = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
V1 = PredictorStorage(storage_uri="s3://models/grader/v1/")
V2 = PredictorStorage(storage_uri="s3://models/grader/v2/")
V3 = PredictorStorage(storage_uri="s3://models/grader/v3/")
STORAGE = {"v1": V1, "v2": V2, "v3": V3}
ERROR_RATE = {
    "name": "error-rate",
    "prometheus": {"address": "http://prometheus:9090", "query": "x{revision='{{canary}}'}"},
    "thresholdRange": {"max": 0.01},
}


def good() -> tuple[Measurement, ...]:
    return (Measurement("error-rate", 0.001),)


def bad() -> tuple[Measurement, ...]:
    return (Measurement("error-rate", 0.2),)


def nodata() -> tuple[Measurement, ...]:
    return (Measurement("error-rate", None),)


def refused() -> tuple[Measurement, ...]:
    why = "prometheus.endpoint x is not a name in PlatformPolicy team spec.analysis.prometheus"
    return (Measurement("error-rate", None, why, refused=True),)


def condition(sim: Sim, kind: str) -> tuple[str, str, str] | None:
    found = next((c for c in sim.status.conditions if c.type == kind), None)
    return None if found is None else (found.status, found.reason, found.message)


class Sim:
    """The Rollout's world: an InferenceService that KServe converges, and a clock."""

    def __init__(
        self,
        steps: list[dict[str, Any]],
        analysis: dict[str, Any] | None = None,
        deadline: int = 600,
        candidate: str = "v2",
    ) -> None:
        canary: dict[str, Any] = {"steps": steps}
        if analysis is not None:
            canary["analysis"] = {"interval": "10s", "metrics": [ERROR_RATE], **analysis}
        self.raw_spec: dict[str, Any] = {
            "modelVersion": candidate,
            "inferenceService": {"name": "grader"},
            "strategy": {"canary": canary},
            "progressDeadlineSeconds": deadline,
        }
        self.status = RolloutStatus()
        self.now = T0
        self.revisions = 1
        self.rolled_out = "grader-00001"
        self.service: ServiceView | None = ServiceView(
            name="grader",
            generation=1,
            observed_generation=1,
            storage=V1,
            ready=True,
            latest_ready_revision="grader-00001",
            latest_created_revision="grader-00001",
            traffic=(Traffic("grader-00001", 100, True),),
        )
        self.kserve_works = True
        self.problem: str | None = None
        self.annotations: dict[str, str] = {}
        self.events: list[str] = []
        self.patches: list[tuple[str | None, int | None]] = []
        self.trace: list[tuple[str | None, int | None, int]] = []

    @property
    def spec(self) -> RolloutSpec:
        return RolloutSpec.model_validate(self.raw_spec)

    def apply(self, storage: PredictorStorage, percent: int | None) -> None:
        assert self.service is not None
        created = self.service.latest_created_revision
        if not same_storage(self.service.storage, storage):
            self.revisions += 1
            created = f"grader-{self.revisions:05d}"
        self.service = dataclasses.replace(
            self.service,
            generation=self.service.generation + 1,
            storage=storage,
            canary_traffic_percent=percent,
            latest_created_revision=created,
        )
        self.patches.append((storage.storage_uri, percent))

    def converge(self) -> None:
        """What KServe does: ready the latest revision, split the traffic."""
        if self.service is None or not self.kserve_works:
            return
        latest = self.service.latest_created_revision
        assert latest is not None
        percent = self.service.canary_traffic_percent
        if percent is None or latest == self.rolled_out:
            traffic: tuple[Traffic, ...] = (Traffic(latest, 100, True),)
            if percent is None:
                self.rolled_out = latest
        else:
            traffic = (Traffic(latest, percent, True), Traffic(self.rolled_out, 100 - percent))
        self.service = dataclasses.replace(
            self.service,
            observed_generation=self.service.generation,
            latest_ready_revision=latest,
            traffic=traffic,
        )

    def tick(
        self, seconds: float = 1.0, measurements: tuple[Measurement, ...] | None = None
    ) -> None:
        self.now += timedelta(seconds=seconds)
        self.converge()
        spec = self.spec
        serving = next(
            (
                n
                for n, s in STORAGE.items()
                if self.service and same_storage(s, self.service.storage)
            ),
            None,
        )
        observed = Observed(
            service=self.service,
            candidate=None if self.problem else STORAGE[spec.model_version],
            candidate_problem=self.problem,
            serving_version=serving,
            annotations=dict(self.annotations),
            measurements=measurements,
        )
        result = step(spec, self.status, observed, self.now, generation=1)
        # What the operator stores is what the next call reads: go through the wire format.
        self.status = RolloutStatus.model_validate(result.status.wire())
        self.events += [e.reason for e in result.events]
        desired = result.desired
        if desired is not None and self.service and not is_applied(self.service, desired):
            self.apply(desired.storage, desired.canary_traffic_percent)
        self.trace.append(
            (self.status.phase, self.status.current_step_index, self.status.canary_weight)
        )

    def run(self, ticks: int, seconds: float = 1.0) -> None:
        for _ in range(ticks):
            self.tick(seconds)


def pause(duration: str | None = None) -> dict[str, Any]:
    return {"pause": {"duration": duration} if duration else {}}


def w(weight: int) -> dict[str, Any]:
    return {"setWeight": weight}


@dataclass
class Case:
    build: Callable[[], Sim]
    drive: Callable[[Sim], None]
    phase: str
    patches: list[tuple[str | None, int | None]]
    events: list[str] = field(default_factory=list)  # must appear, in this order
    check: Callable[[Sim], Any] | None = None


def promote_after(sim: Sim, ticks: int, value: str = "1", then: int = 6) -> None:
    sim.run(ticks)
    sim.annotations[PROMOTE] = value
    sim.run(then)


def analysed(sim: Sim, rounds: list[Callable[[], tuple[Measurement, ...]]]) -> None:
    for measure in rounds:
        sim.tick(1, measure())


CASES: dict[str, Case] = {
    "happy path 5 -> 25 -> 50 -> 100 with pauses promotes": Case(
        build=lambda: Sim([w(5), pause("10s"), w(25), pause("10s"), w(50), pause("10s"), w(100)]),
        drive=lambda sim: sim.run(40),
        phase="Succeeded",
        patches=[
            (V2.storage_uri, 5),
            (V2.storage_uri, 25),
            (V2.storage_uri, 50),
            (V2.storage_uri, 100),
            (V2.storage_uri, None),
        ],
        events=[
            "Started",
            "WeightSet",
            "Paused",
            "StepCompleted",
            "WeightSet",
            "Promoting",
            "Promoted",
        ],
        check=lambda sim: (
            sim.status.stable_model_version == "v2"
            and sim.status.stable_revision == "grader-00002"
            and sim.status.completion_time is not None
        ),
    ),
    "single step to 100 promotes after KServe serves it": Case(
        build=lambda: Sim([w(100)]),
        drive=lambda sim: sim.run(5),
        phase="Succeeded",
        patches=[(V2.storage_uri, 100), (V2.storage_uri, None)],
    ),
    "repeated weights patch once": Case(
        build=lambda: Sim([w(5), w(5), w(5), w(100)]),
        drive=lambda sim: sim.run(8),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 100), (V2.storage_uri, None)],
    ),
    "pause at the end holds at 100% before promoting": Case(
        build=lambda: Sim([w(50), w(100), pause("20s")]),
        drive=lambda sim: sim.run(10, seconds=1),
        phase="Paused",
        patches=[(V2.storage_uri, 50), (V2.storage_uri, 100)],
        check=lambda sim: sim.status.current_step_index == 2 and sim.status.canary_weight == 100,
    ),
    "pause at the end promotes when it is over": Case(
        build=lambda: Sim([w(50), w(100), pause("20s")]),
        drive=lambda sim: sim.run(30, seconds=1),
        phase="Succeeded",
        patches=[(V2.storage_uri, 50), (V2.storage_uri, 100), (V2.storage_uri, None)],
    ),
    "pause without duration waits for a person": Case(
        build=lambda: Sim([w(5), pause(), w(100)]),
        drive=lambda sim: sim.run(3, seconds=3600),
        phase="Paused",
        patches=[(V2.storage_uri, 5)],
        check=lambda sim: "whetstone.dev/promote" in (sim.status.message or ""),
    ),
    "pause without duration + manual promote continues, once": Case(
        build=lambda: Sim([w(5), pause(), w(25), pause(), w(100)]),
        drive=lambda sim: promote_after(sim, 4, value="2026-11-22T20:00:00Z"),
        phase="Paused",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 25)],
        events=["Paused", "PromoteRequested", "WeightSet", "Paused"],
        check=lambda sim: (
            sim.status.current_step_index == 3
            and sim.status.handled_commands is not None
            and sim.status.handled_commands.promote == "2026-11-22T20:00:00Z"
        ),
    ),
    "full promote skips every remaining step": Case(
        build=lambda: Sim([w(5), pause(), w(25), pause(), w(100)]),
        drive=lambda sim: promote_after(sim, 3, value="full"),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, None)],
    ),
    "analysis failure beyond failureLimit aborts and restores the stable version": Case(
        build=lambda: Sim([w(5), pause("1h"), w(100)], analysis={"failureLimit": 1}),
        drive=lambda sim: analysed(sim, [good, good, bad, good, bad, good]),
        phase="Aborted",
        patches=[(V2.storage_uri, 5), (V1.storage_uri, 0)],
        events=["Started", "AnalysisPassing", "AnalysisFailed", "AnalysisFailed", "Aborted"],
        check=lambda sim: (
            sim.status.canary_weight == 0
            and sim.status.analysis is not None
            and sim.status.analysis.failures == 2
            and "error-rate" in (sim.status.abort_reason or "")
            and [r.outcome for r in sim.status.analysis.history][-2:] == ["Successful", "Failed"]
        ),
    ),
    "one failure within failureLimit is tolerated": Case(
        build=lambda: Sim([w(5), w(100)], analysis={"failureLimit": 1}),
        drive=lambda sim: analysed(sim, [good, bad, good, good, good]),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 100), (V2.storage_uri, None)],
    ),
    "no data holds the rollout and is never promoted": Case(
        build=lambda: Sim([w(5), w(100)], analysis={}),
        drive=lambda sim: analysed(sim, [nodata] * 8),
        phase="Paused",
        patches=[(V2.storage_uri, 5)],
        events=["AnalysisInconclusive", "AnalysisHold"],
        check=lambda sim: (
            sim.status.analysis is not None
            and sim.status.analysis.inconclusive == 8
            and "inconclusive" in (sim.status.message or "")
        ),
    ),
    "a passing round releases an inconclusive hold": Case(
        build=lambda: Sim([w(5), w(100)], analysis={}),
        drive=lambda sim: analysed(sim, [nodata, nodata, good, good, good]),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 100), (V2.storage_uri, None)],
    ),
    "no traffic increase before a first passing analysis round": Case(
        build=lambda: Sim([w(5), w(100)], analysis={"inconclusiveLimit": 5}),
        drive=lambda sim: analysed(sim, [nodata, nodata, nodata]),
        phase="Paused",
        patches=[(V2.storage_uri, 5)],
        check=lambda sim: "first passing analysis round" in (sim.status.message or ""),
    ),
    "analysis step waits for consecutive passes": Case(
        build=lambda: Sim([w(5), {"analysis": {"successes": 2}}, w(100)], analysis={}),
        drive=lambda sim: analysed(sim, [good, nodata, good, good, good, good, good, good]),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 100), (V2.storage_uri, None)],
    ),
    "progress deadline aborts a canary that never becomes ready": Case(
        build=lambda: Sim([w(5), w(100)], deadline=30),
        drive=lambda sim: (setattr(sim, "kserve_works", False), sim.run(40)),
        phase="Aborted",
        patches=[(V2.storage_uri, 5), (V1.storage_uri, 0)],
        events=["Started", "Aborted"],
        check=lambda sim: "progressDeadlineSeconds 30" in (sim.status.abort_reason or ""),
    ),
    "an unapproved ModelVersion is refused and waited for": Case(
        build=lambda: Sim([w(5), w(100)]),
        drive=lambda sim: (
            setattr(sim, "problem", "ModelVersion v2 is Verified, not Approved: approve it first"),
            sim.run(3),
        ),
        phase="Pending",
        patches=[],
        events=["ModelVersionNotReady"],
        check=lambda sim: any(
            c.type == "ModelVersionReady" and c.status == "False" and "approve it" in c.message
            for c in sim.status.conditions
        ),
    ),
    "approval arriving later starts the rollout": Case(
        build=lambda: Sim([w(5), w(100)]),
        drive=lambda sim: (
            setattr(sim, "problem", "not approved"),
            sim.run(2),
            setattr(sim, "problem", None),
            sim.run(5),
        ),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 100), (V2.storage_uri, None)],
    ),
    "candidate losing its approval mid-rollout aborts": Case(
        build=lambda: Sim([w(5), pause("1h"), w(100)]),
        drive=lambda sim: (
            sim.run(3),
            setattr(sim, "problem", "ModelVersion v2 is Rejected"),
            sim.run(1),
        ),
        phase="Aborted",
        patches=[(V2.storage_uri, 5), (V1.storage_uri, 0)],
    ),
    "abort annotation rolls back; retry starts again from step 0": Case(
        build=lambda: Sim([w(5), pause("1h"), w(100)]),
        drive=lambda sim: (
            sim.run(3),
            sim.annotations.update({ABORT: "t1"}),
            sim.run(2),
            sim.annotations.update({RETRY: "t2"}),
            sim.run(2),
        ),
        phase="Paused",
        patches=[(V2.storage_uri, 5), (V1.storage_uri, 0), (V2.storage_uri, 5)],
        events=["Started", "Aborted", "RetryRequested", "Started"],
        check=lambda sim: sim.status.current_step_index == 1 and sim.status.abort_reason is None,
    ),
    "a new modelVersion mid-rollout starts over from the stable version": Case(
        build=lambda: Sim([w(5), pause("1h"), w(100)]),
        drive=lambda sim: (sim.run(3), sim.raw_spec.update({"modelVersion": "v3"}), sim.run(3)),
        phase="Paused",
        patches=[(V2.storage_uri, 5), (V3.storage_uri, 5)],
        events=["Started", "NewModelVersion", "Started"],
        check=lambda sim: (
            sim.status.stable_model_version == "v1" and sim.status.canary_model_version == "v3"
        ),
    ),
    "a candidate that is already stable is promoted without a canary": Case(
        build=lambda: Sim([w(5), pause(), w(100)], candidate="v1"),
        drive=lambda sim: sim.run(3),
        phase="Succeeded",
        patches=[],
    ),
    "pause command holds a timed step past its end, resume continues": Case(
        build=lambda: Sim([w(5), pause("10s"), w(25), pause("10s"), w(100)]),
        drive=lambda sim: (
            sim.run(3),
            sim.annotations.update({PAUSE: "p1"}),
            sim.run(30),
            sim.trace.append(("held", None, None)),  # type: ignore[arg-type]
            sim.annotations.update({RESUME: "r1"}),
            sim.run(30),
        ),
        phase="Succeeded",
        patches=[
            (V2.storage_uri, 5),
            (V2.storage_uri, 25),
            (V2.storage_uri, 100),
            (V2.storage_uri, None),
        ],
        events=["Started", "PauseRequested", "Resumed", "Promoted"],
        check=lambda sim: (
            sim.trace[sim.trace.index(("held", None, None)) - 1] == ("Paused", 1, 5)
            and sim.status.paused_by_command is None
            and sim.status.handled_commands is not None
            and sim.status.handled_commands.pause == "p1"
            and sim.status.handled_commands.resume == "r1"
        ),
    ),
    "a refused target fails the round whatever noData says, and aborts": Case(
        build=lambda: Sim([w(5), w(100)], analysis={"metrics": [{**ERROR_RATE, "noData": "pass"}]}),
        drive=lambda sim: (sim.run(3), analysed(sim, [refused])),
        phase="Aborted",
        patches=[(V2.storage_uri, 5), (V1.storage_uri, 0)],
        events=["AnalysisTargetRefused", "AnalysisFailed", "Aborted"],
        check=lambda sim: (
            condition(sim, "AnalysisTargetsAllowed")
            == (
                "False",
                "TargetRefused",
                "error-rate: prometheus.endpoint x is not a name in PlatformPolicy team "
                "spec.analysis.prometheus",
            )
            and "refused, nothing sent" in (sim.status.abort_reason or "")
            and "spec.analysis.prometheus" in (sim.status.abort_reason or "")
        ),
    ),
    "a target allowed again clears the refusal": Case(
        build=lambda: Sim([w(5), w(100)], analysis={"failureLimit": 2}),
        drive=lambda sim: analysed(sim, [refused, refused, good, good, good]),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 100), (V2.storage_uri, None)],
        # One Event while the same refusal stands.
        events=["AnalysisTargetRefused", "AnalysisFailed", "AnalysisFailed", "AnalysisPassing"],
        check=lambda sim: (
            condition(sim, "AnalysisTargetsAllowed")
            == ("True", "Allowed", "every analysis target is allowed")
            and sim.events.count("AnalysisTargetRefused") == 1
        ),
    ),
    "paused by command still aborts on a failed analysis": Case(
        build=lambda: Sim([w(5), pause("10s"), w(100)], analysis={}),
        drive=lambda sim: (
            analysed(sim, [good, good]),
            sim.annotations.update({PAUSE: "p"}),
            analysed(sim, [good, bad]),
        ),
        phase="Aborted",
        patches=[(V2.storage_uri, 5), (V1.storage_uri, 0)],
        events=["PauseRequested", "AnalysisFailed", "Aborted"],
        check=lambda sim: sim.status.paused_by_command is None,
    ),
    "promote releases a pause command and skips the step": Case(
        build=lambda: Sim([w(5), pause("1h"), w(100)]),
        drive=lambda sim: (
            sim.run(3),
            sim.annotations.update({PAUSE: "p"}),
            sim.run(2),
            promote_after(sim, 0, value="go"),
        ),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 100), (V2.storage_uri, None)],
        events=["PauseRequested", "Resumed", "PromoteRequested", "Promoted"],
    ),
    "resume without a pause and pause when finished are ignored": Case(
        build=lambda: Sim([w(100)]),
        drive=lambda sim: (
            sim.annotations.update({RESUME: "r"}),
            sim.run(1),
            sim.run(5),
            sim.annotations.update({PAUSE: "late"}),
            sim.run(1),
        ),
        phase="Succeeded",
        patches=[(V2.storage_uri, 100), (V2.storage_uri, None)],
        events=["CommandIgnored", "Promoted", "CommandIgnored"],
    ),
    "an InferenceService without predictor.model fails, and starts once converted": Case(
        build=lambda: Sim([w(5), w(100)]),
        drive=lambda sim: (
            setattr(sim, "service", dataclasses.replace(sim.service, model_form=False)),
            sim.run(3),
            sim.trace.append(("failed", None, None)),  # type: ignore[arg-type]
            setattr(sim, "service", dataclasses.replace(sim.service, model_form=True)),
            sim.run(8),
        ),
        phase="Succeeded",
        patches=[(V2.storage_uri, 5), (V2.storage_uri, 100), (V2.storage_uri, None)],
        events=["UnsupportedInferenceService", "Started", "Promoted"],
        check=lambda sim: sim.trace[sim.trace.index(("failed", None, None)) - 1][0] == "Failed",
    ),
    "a missing InferenceService keeps the rollout pending": Case(
        build=lambda: Sim([w(5), w(100)]),
        drive=lambda sim: (setattr(sim, "service", None), sim.run(3)),
        phase="Pending",
        patches=[],
        events=["InferenceServiceNotFound"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_scenario(name: str) -> None:
    case = CASES[name]
    sim = case.build()
    case.drive(sim)
    assert sim.status.phase == case.phase, (sim.status.message, sim.trace)
    assert sim.patches == case.patches, sim.trace
    it = iter(sim.events)
    assert all(reason in it for reason in case.events), sim.events
    if case.check is not None:
        assert case.check(sim), sim.status.wire()


def test_restart_mid_step_resumes_exactly() -> None:
    """A new operator reads the stored status: same step, same clock, no patch, no skip."""
    sim = Sim([w(5), pause("60s"), w(25), pause("60s"), w(100)])
    sim.run(3, seconds=10)
    assert sim.trace[-1] == ("Paused", 1, 5)
    stored = sim.status.wire()
    started = stored["stepStartTime"]
    patches = list(sim.patches)

    sim.status = RolloutStatus.model_validate(stored)  # what the restarted operator reads
    sim.tick(10)
    assert sim.trace[-1] == ("Paused", 1, 5)
    assert sim.status.step_start_time == started
    assert sim.patches == patches
    sim.run(6, seconds=10)
    indexes = [i for _, i, _ in sim.trace if i is not None]
    assert indexes == sorted(indexes)
    assert sim.trace[-1][:2] == ("Paused", 3)
    assert sim.patches == [*patches, (V2.storage_uri, 25)]


def test_commands_are_acknowledged_once() -> None:
    sim = Sim([w(5), pause(), w(25), pause(), w(100)])
    sim.run(2)
    sim.annotations[PROMOTE] = "a"
    sim.run(5)
    assert sim.status.current_step_index == 3
    sim.run(5)
    assert sim.status.current_step_index == 3  # the same value is not a new command
    sim.annotations[PROMOTE] = "b"
    sim.run(5)
    assert sim.status.phase == "Succeeded"


def test_commands_on_a_finished_rollout_are_ignored_with_an_event() -> None:
    sim = Sim([w(100)])
    sim.run(4)
    assert sim.status.phase == "Succeeded"
    sim.annotations[ABORT] = "late"
    sim.run(1)
    assert sim.status.phase == "Succeeded"
    assert sim.events[-1] == "CommandIgnored"
    assert sim.status.handled_commands is not None
    assert sim.status.handled_commands.abort == "late"


def test_aborted_rollout_keeps_the_stable_version_asserted() -> None:
    sim = Sim([w(5), pause(), w(100)])
    sim.run(2)
    sim.annotations[ABORT] = "x"
    sim.run(1)
    assert sim.service is not None
    sim.service = dataclasses.replace(sim.service, canary_traffic_percent=30, generation=99)
    sim.run(1)
    assert sim.patches[-1] == (V1.storage_uri, 0)


@pytest.mark.parametrize(
    ("steps", "index", "weight"),
    [
        ([w(5), pause(), w(25)], 0, 5),
        ([w(5), pause(), w(25)], 1, 5),
        ([w(5), pause(), w(25)], 2, 25),
        ([pause(), w(25)], 0, 0),
        ([w(5), w(100)], 2, 100),
    ],
)
def test_weight_at(steps: list[dict[str, Any]], index: int, weight: int) -> None:
    spec = Sim(steps if steps[-1].get("setWeight") == 100 else [*steps, w(100)]).spec
    assert weight_at(spec.strategy.canary.steps, index) == weight


def test_a_long_command_value_is_recorded_clipped_and_handled_once() -> None:
    sim = Sim([w(5), pause(), w(100)])
    sim.run(3)
    sim.annotations[PAUSE] = "p" * 5000
    sim.run(3)
    assert sim.events.count("PauseRequested") == 1
    assert sim.status.handled_commands is not None
    assert sim.status.handled_commands.pause == "p" * 253
    assert sim.status.paused_by_command == "p" * 253
