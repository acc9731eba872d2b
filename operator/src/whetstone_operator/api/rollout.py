"""Rollout: a KServe canary of a ModelVersion, step by step, analysed on Prometheus metrics."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from whetstone_contract.base import CamelModel
from whetstone_operator.api.common import (
    DNS_SUBDOMAIN,
    DURATION,
    KindInfo,
    StatusBase,
    parse_duration,
)


class PauseStep(CamelModel):
    """Hold the current weight."""

    duration: str | None = Field(
        default=None,
        pattern=DURATION,
        max_length=64,
        description="How long to hold (e.g. 10m); omitted = wait for a manual promote.",
    )


class AnalysisStep(CamelModel):
    """Hold until the analysis has passed this many consecutive intervals."""

    successes: int = Field(
        default=1, ge=1, le=1000, description="Consecutive passing analysis rounds needed."
    )


class CanaryStep(CamelModel):
    """One step of the plan: exactly one of setWeight, pause or analysis."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + "
                    "(has(self.analysis) ? 1 : 0) == 1",
                    "message": "a canary step has exactly one of setWeight, pause, analysis",
                }
            ]
        }
    )

    set_weight: int | None = Field(
        default=None, ge=0, le=100, description="Send this percentage of traffic to the canary."
    )
    pause: PauseStep | None = Field(default=None, description="Hold the current weight.")
    analysis: AnalysisStep | None = Field(
        default=None, description="Hold until the background analysis has passed."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> CanaryStep:
        count = sum(x is not None for x in (self.set_weight, self.pause, self.analysis))
        if count != 1:
            raise ValueError(
                f"a canary step has exactly one of setWeight, pause, analysis (found {count})"
            )
        return self


class PrometheusQuery(CamelModel):
    """A PromQL query returning one number."""

    address: str = Field(
        pattern=r"^https?://.+$",
        max_length=2048,
        description="Prometheus base URL, e.g. http://prometheus.monitoring:9090.",
    )
    query: str = Field(
        min_length=1,
        max_length=8192,
        description="PromQL returning a single value. {{canary}}, {{stable}}, {{namespace}} and "
        "{{inferenceService}} are replaced before the query runs.",
    )
    timeout: str = Field(
        default="10s", pattern=DURATION, max_length=64, description="Query timeout."
    )


class GoldenPrompt(CamelModel):
    """One request sent to the canary, whose answer must match the response schema."""

    name: str = Field(
        min_length=1, max_length=128, pattern=DNS_SUBDOMAIN, description="Name of the prompt."
    )
    body: dict[str, Any] = Field(
        description="JSON request body sent as is, e.g. an OpenAI chat completion request "
        "with messages and response_format."
    )


def check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError when `schema` is not a valid JSON Schema (its $schema dialect, else
    2020-12)."""
    # Imported here: only Rollouts with an http metric need it, and the operator's memory
    # at scale counts every import.
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator).check_schema(
            schema
        )
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from exc


class HttpCheck(CamelModel):
    """Golden prompts sent to the canary revision alone, each answer checked against a JSON
    Schema (a contract test for structured outputs). The metric's value is the fraction of
    prompts that passed, 0 to 1: judge it with e.g. thresholdRange {min: 1}."""

    url: str = Field(
        default="{{canaryUrl}}/openai/v1/chat/completions",
        min_length=1,
        max_length=2048,
        description="Where to POST each prompt. {{canaryUrl}} is the canary revision's "
        "tag-routed URL from the InferenceService status (annotate the InferenceService with "
        'serving.kserve.io/enable-tag-routing: "true"); {{canaryHost}}, {{canary}}, '
        "{{namespace}} and {{inferenceService}} are also replaced.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers, placeholders replaced as in url (e.g. "
        "Host: {{canaryHost}} when url names the ingress gateway).",
    )
    prompts: list[GoldenPrompt] = Field(
        min_length=1, max_length=50, description="The golden prompts, sent four at a time."
    )
    response_field: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="Dotted path to the part of the JSON answer that is checked, list indexes "
        "as numbers (e.g. choices.0.message.content); omitted = the whole answer.",
    )
    parse_json: bool = Field(
        default=True,
        description="When the checked part is a string, parse it as JSON first (structured "
        "outputs arrive as JSON text in the message content).",
    )
    response_schema: dict[str, Any] = Field(
        description="JSON Schema (2020-12 unless $schema says otherwise) every answer must match."
    )
    timeout: str = Field(
        default="30s", pattern=DURATION, max_length=64, description="Timeout of each request."
    )

    @field_validator("response_schema")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_json_schema(v)
        return v

    @field_validator("prompts")
    @classmethod
    def _unique_prompt_names(cls, v: list[GoldenPrompt]) -> list[GoldenPrompt]:
        seen: set[str] = set()
        for i, prompt in enumerate(v):
            if prompt.name in seen:
                raise ValueError(f"prompts[{i}].name {prompt.name!r} is used twice")
            seen.add(prompt.name)
        return v


class ThresholdRange(CamelModel):
    """Acceptable range of a metric; a value outside fails the round."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.min) || has(self.max)",
                    "message": "thresholdRange needs min, max or both",
                }
            ]
        }
    )

    min: float | None = Field(default=None, description="Lowest acceptable value.")
    max: float | None = Field(default=None, description="Highest acceptable value.")

    @model_validator(mode="after")
    def _bounded(self) -> ThresholdRange:
        if self.min is None and self.max is None:
            raise ValueError("thresholdRange needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"thresholdRange.min {self.min} is above thresholdRange.max {self.max}"
            )
        return self


class AnalysisMetric(CamelModel):
    """One metric checked every interval: a Prometheus query or golden prompts over HTTP."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.prometheus) != has(self.http)",
                    "message": "an analysis metric has exactly one of prometheus, http",
                }
            ]
        }
    )

    name: str = Field(
        min_length=1, max_length=128, pattern=DNS_SUBDOMAIN, description="Name of the metric."
    )
    prometheus: PrometheusQuery | None = Field(
        default=None, description="A PromQL query returning one number."
    )
    http: HttpCheck | None = Field(
        default=None,
        description="Golden prompts sent to the canary; the value is the fraction whose "
        "answers match the response schema.",
    )
    threshold_range: ThresholdRange = Field(description="Acceptable range.")
    no_data: Literal["fail", "pass", "inconclusive"] = Field(
        default="inconclusive",
        description="What an empty result or a failed query counts as: fail, pass or inconclusive.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> AnalysisMetric:
        if (self.prometheus is None) == (self.http is None):
            raise ValueError(
                f"analysis metric {self.name!r} has exactly one of prometheus, http "
                f"(found {'both' if self.prometheus else 'neither'})"
            )
        return self


class Analysis(CamelModel):
    """Background analysis, from the first step until the end."""

    interval: str = Field(
        default="1m", pattern=DURATION, max_length=64, description="Time between rounds."
    )
    failure_limit: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Failed rounds tolerated; one more aborts the rollout.",
    )
    inconclusive_limit: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Inconclusive rounds in a row (no data) tolerated; one more holds the "
        "rollout (phase Paused) until a round passes or whetstone.dev/promote is set.",
    )
    metrics: list[AnalysisMetric] = Field(
        min_length=1, max_length=32, description="Metrics checked each round."
    )

    @field_validator("interval")
    @classmethod
    def _positive_interval(cls, v: str) -> str:
        if parse_duration(v) < 1:
            raise ValueError("analysis.interval must be at least 1s")
        return v


class CanaryStrategy(CamelModel):
    """Steps from the first canary weight to 100%."""

    steps: list[CanaryStep] = Field(
        min_length=1, max_length=100, description="The plan; weights never decrease, end at 100."
    )
    analysis: Analysis | None = Field(
        default=None, description="Background analysis; a failure aborts and rolls back."
    )

    @model_validator(mode="after")
    def _weights(self) -> CanaryStrategy:
        weights = [(i, s.set_weight) for i, s in enumerate(self.steps) if s.set_weight is not None]
        if not weights:
            raise ValueError(
                "strategy.canary.steps has no setWeight: end the plan with setWeight: 100"
            )
        for (_, prev), (i, cur) in itertools.pairwise(weights):
            if cur is not None and prev is not None and cur < prev:
                raise ValueError(
                    f"strategy.canary.steps[{i}].setWeight {cur} is below the earlier {prev}: "
                    "weights never decrease"
                )
        if weights[-1][1] != 100:
            raise ValueError(
                f"strategy.canary.steps: the last setWeight is {weights[-1][1]}, "
                "it must be 100 (add setWeight: 100 at the end)"
            )
        if any(s.analysis is not None for s in self.steps) and self.analysis is None:
            raise ValueError(
                "strategy.canary.steps has an analysis step but strategy.canary.analysis is "
                "not set: add analysis metrics"
            )
        return self


class Strategy(CamelModel):
    """How traffic moves to the candidate."""

    canary: CanaryStrategy = Field(description="Canary plan.")


class InferenceServiceRef(CamelModel):
    """The KServe InferenceService to drive."""

    name: str = Field(
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="InferenceService (serving.kserve.io/v1beta1) in this namespace.",
    )


class RolloutSpec(CamelModel):
    """Roll a ModelVersion out on a KServe InferenceService."""

    model_version: str = Field(
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="The candidate ModelVersion; it must be Approved.",
    )
    inference_service: InferenceServiceRef = Field(description="InferenceService to drive.")
    strategy: Strategy = Field(description="The canary plan.")
    progress_deadline_seconds: int = Field(
        default=600,
        ge=1,
        description="Abort when a step makes no progress (e.g. canary not ready) for this long.",
    )


RolloutPhase = Literal["Pending", "Progressing", "Paused", "Succeeded", "Aborted", "Failed"]
# A canary is running (held or not); a finished Rollout is no longer resynced.
ROLLOUT_ACTIVE: tuple[RolloutPhase, ...] = ("Progressing", "Paused")
ROLLOUT_FINISHED: tuple[RolloutPhase, ...] = ("Succeeded", "Failed")


class AnalysisResult(CamelModel):
    """One metric's latest result."""

    metric: str = Field(description="Metric name.")
    value: float | None = Field(default=None, description="Measured value (absent: no data).")
    passed: bool | None = Field(default=None, description="true, false, or absent: inconclusive.")
    time: str | None = Field(default=None, description="When it was measured (RFC 3339).")
    message: str = Field(default="", description="Detail, e.g. the query error.")


class AnalysisRound(CamelModel):
    """The outcome of one analysis round."""

    time: str = Field(description="When the round ran (RFC 3339).")
    outcome: Literal["Successful", "Failed", "Inconclusive"] = Field(
        description="Successful, Failed (a metric out of range) or Inconclusive (no data)."
    )
    message: str = Field(default="", description="The metrics that decided the outcome.")


class AnalysisStatus(CamelModel):
    """Running totals of the background analysis."""

    successes: int = Field(default=0, ge=0, description="Passed rounds.")
    failures: int = Field(default=0, ge=0, description="Failed rounds.")
    inconclusive: int = Field(default=0, ge=0, description="Inconclusive rounds (no data).")
    consecutive_successes: int = Field(default=0, ge=0, description="Passed rounds in a row.")
    consecutive_inconclusive: int = Field(
        default=0, ge=0, description="Inconclusive rounds in a row."
    )
    last_run_time: str | None = Field(default=None, description="When the last round ran.")
    last_results: list[AnalysisResult] = Field(
        default_factory=list, description="Results of the last round."
    )
    history: list[AnalysisRound] = Field(
        default_factory=list, description="Outcomes of the most recent rounds, oldest first."
    )


class StorageUri(CamelModel):
    """One entry of a predictor's storageUris (KServe's StorageUri)."""

    uri: str = Field(description="Model location.")
    mount_path: str | None = Field(
        default=None, description="Where it is mounted in the container (KServe: /mnt/models)."
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_path(cls, data: Any) -> Any:
        # Statuses written before the field followed KServe's name call it `path`.
        if isinstance(data, dict) and "path" in data and "mountPath" not in data:
            data = {**data, "mountPath": data["path"]}
            del data["path"]
        return data


class PredictorStorage(CamelModel):
    """What an InferenceService predictor loads: storageUri or storageUris."""

    storage_uri: str | None = Field(
        default=None, description="spec.predictor.model.storageUri of the InferenceService."
    )
    storage_uris: list[StorageUri] | None = Field(
        default=None, description="spec.predictor.storageUris (base model + adapter)."
    )


class HandledCommands(CamelModel):
    """The annotation values the controller has acted on (a new value is a new command)."""

    promote: str | None = Field(default=None, description="Last handled whetstone.dev/promote.")
    abort: str | None = Field(default=None, description="Last handled whetstone.dev/abort.")
    retry: str | None = Field(default=None, description="Last handled whetstone.dev/retry.")
    pause: str | None = Field(default=None, description="Last handled whetstone.dev/pause.")
    resume: str | None = Field(default=None, description="Last handled whetstone.dev/resume.")


class RolloutStatus(StatusBase):
    """Observed state of a Rollout."""

    model_config = ConfigDict(extra="ignore")

    phase: RolloutPhase | None = Field(
        default=None,
        description="Pending (waiting for an approved ModelVersion or the InferenceService), "
        "Progressing, Paused (a pause step, an analysis hold or whetstone.dev/pause), Succeeded "
        "(promoted), Aborted (rolled back to the stable version) or Failed (the "
        "InferenceService cannot be driven; the message says what to change).",
    )
    current_step_index: int | None = Field(
        default=None, ge=0, description="Index of the step being executed."
    )
    canary_weight: int = Field(default=0, ge=0, le=100, description="Traffic to the canary (%).")
    stable_model_version: str | None = Field(
        default=None, description="ModelVersion serving the rest of the traffic."
    )
    canary_model_version: str | None = Field(
        default=None, description="ModelVersion being rolled out."
    )
    step_start_time: str | None = Field(
        default=None, description="When the current step's clock started (RFC 3339)."
    )
    analysis: AnalysisStatus | None = Field(default=None, description="Analysis totals.")
    abort_reason: str | None = Field(default=None, description="Why the rollout was aborted.")
    stable_revision: str | None = Field(
        default=None, description="KServe revision serving the stable version ({{stable}})."
    )
    canary_revision: str | None = Field(
        default=None, description="KServe revision serving the canary ({{canary}})."
    )
    stable_storage: PredictorStorage | None = Field(
        default=None, description="The stable predictor storage, restored on abort."
    )
    not_ready_since: str | None = Field(
        default=None,
        description="Since when the canary has not been ready with the desired traffic split "
        "(the progressDeadlineSeconds clock).",
    )
    start_time: str | None = Field(default=None, description="When the rollout started.")
    completion_time: str | None = Field(default=None, description="When the rollout was promoted.")
    paused_by_command: str | None = Field(
        default=None,
        description="Set while held by whetstone.dev/pause (its value); whetstone.dev/resume or "
        "whetstone.dev/promote clears it.",
    )
    handled_commands: HandledCommands | None = Field(
        default=None, description="Annotation commands already acted on."
    )


class Rollout(CamelModel):
    """A canary rollout."""

    model_config = ConfigDict(extra="ignore")

    spec: RolloutSpec
    status: RolloutStatus = Field(default_factory=RolloutStatus)


ROLLOUT = KindInfo(
    kind="Rollout",
    plural="rollouts",
    singular="rollout",
    short_names=["mro"],
    description="Rollout moves a KServe InferenceService to an approved ModelVersion as a "
    "canary (e.g. 5% -> 100%), analysed on Prometheus metrics and rolled back on failure.",
    columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.currentStepIndex"},
        {"name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight"},
        {"name": "Stable", "type": "string", "jsonPath": ".status.stableModelVersion"},
        {"name": "Canary", "type": "string", "jsonPath": ".status.canaryModelVersion"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
)
