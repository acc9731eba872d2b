"""Rollout: a KServe canary of a ModelVersion, step by step, analysed on Prometheus metrics."""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, field_validator, model_validator

from whetstone_contract.base import CamelModel
from whetstone_operator.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DURATION,
    KindInfo,
    StatusBase,
    parse_duration,
)

# Every outbound analysis request ends within this; the schema holds timeouts to it as well
# (TIMEOUT: 0-60s, up to 60000ms or 1m; the models give the clearer message).
MAX_TIMEOUT_SECONDS = 60.0
TIMEOUT = r"^(([0-5]?[0-9](\.[0-9]{1,3})?|60)s|([0-9]{1,4}|[1-5][0-9]{4}|60000)ms|1m)$"
# Free-form JSON the operator keeps in memory and sends or checks every round.
PROMPT_BODY_BYTES = 64 * 1024
RESPONSE_SCHEMA_BYTES = 32 * 1024
RESPONSE_SCHEMA_DEPTH = 32
PATTERN_MEMORY = 1024 * 1024
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
# Framing and hop-by-hop headers are the client's; Host may only name the canary (checked
# when the URL is known).
RESERVED_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"}
)
# Status bounds. Values the operator copies in from elsewhere (annotations, messages) are
# clipped on the way in, so a status written before a bound existed still parses.
NAME_MAX = 253
TIME_MAX = 64
URI_MAX = 2048
COMMAND_MAX = 253  # a command annotation's value as recorded (longer values are clipped)
REASON_MAX = 32768


def _clip(limit: int) -> BeforeValidator:
    return BeforeValidator(lambda v: v[:limit] if isinstance(v, str) else v)


ResultMessage = Annotated[str, _clip(1024), Field(max_length=1024)]
Command = Annotated[str, _clip(COMMAND_MAX), Field(max_length=COMMAND_MAX)]


def _timeout(value: str) -> str:
    if not 0 < parse_duration(value) <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"a timeout is more than 0 and at most {MAX_TIMEOUT_SECONDS:g}s")
    return value


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
    """A PromQL query returning one number, sent to a Prometheus the platform allows: one it
    names (endpoint), or an address under a prefix its PlatformPolicy allows."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.endpoint) != has(self.address)",
                    "message": "prometheus has exactly one of endpoint, address",
                }
            ]
        }
    )

    endpoint: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL,
        description="Name of a Prometheus endpoint in the namespace's PlatformPolicy "
        "(spec.analysis.prometheus[].name), e.g. main.",
    )
    address: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="Prometheus base URL, e.g. http://prometheus.monitoring:9090; only under a "
        "prefix in the PlatformPolicy's spec.analysis.allowAddresses (prefer endpoint).",
    )
    query: str = Field(
        min_length=1,
        max_length=8192,
        description="PromQL returning a single value. {{canary}}, {{stable}}, {{namespace}} and "
        "{{inferenceService}} are replaced before the query runs.",
    )
    timeout: str = Field(
        default="10s",
        pattern=DURATION,
        max_length=64,
        description="Total time the query may take, at most 60s.",
        json_schema_extra={"pattern": TIMEOUT},
    )

    @field_validator("timeout")
    @classmethod
    def _bounded_timeout(cls, v: str) -> str:
        return _timeout(v)

    @model_validator(mode="after")
    def _one_target(self) -> PrometheusQuery:
        if (self.endpoint is None) == (self.address is None):
            found = "both" if self.endpoint is not None else "neither"
            raise ValueError(f"prometheus has exactly one of endpoint, address (found {found})")
        return self


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


class GoldenPrompt(CamelModel):
    """One request sent to the canary, whose answer must match the response schema."""

    name: str = Field(
        min_length=1, max_length=128, pattern=DNS_SUBDOMAIN, description="Name of the prompt."
    )
    body: dict[str, Any] = Field(
        max_length=64,
        description="JSON request body sent as is, e.g. an OpenAI chat completion request "
        "with messages and response_format (at most 64 KiB as JSON).",
    )

    @field_validator("body")
    @classmethod
    def _small_body(cls, v: dict[str, Any]) -> dict[str, Any]:
        size = _json_size(v)
        if size > PROMPT_BODY_BYTES:
            raise ValueError(f"body is {size} bytes as JSON; at most {PROMPT_BODY_BYTES}")
        return v


class PatternError(ValueError):
    """A regular expression RE2 does not accept."""


@functools.lru_cache(maxsize=64)
def compile_pattern(pattern: str) -> Any:
    """`pattern` compiled with RE2, which matches in time linear in the text: a tenant's
    pattern never runs on a backtracking engine. Raises PatternError."""
    # Imported here: only Rollouts with an http metric need it.
    import re2

    options = re2.Options()
    options.log_errors = False
    # Each compiled pattern keeps up to this much (program and match cache); the cache above
    # bounds how many are kept.
    options.max_mem = PATTERN_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        text = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
        raise PatternError(text) from exc


def _walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, (*path, str(i)))


def _where(path: Any) -> str:
    return "/".join(str(p) for p in path) or "(root)"


def _schema_limits(schema: dict[str, Any]) -> None:
    size = _json_size(schema)
    if size > RESPONSE_SCHEMA_BYTES:
        raise ValueError(f"is {size} bytes as JSON; at most {RESPONSE_SCHEMA_BYTES}")
    if _depth(schema) > RESPONSE_SCHEMA_DEPTH:
        raise ValueError(f"nests deeper than {RESPONSE_SCHEMA_DEPTH} levels")
    keywords: set[str] = set()
    for path, node in _walk(schema):
        if not isinstance(node, dict):
            continue
        keywords.update(k for k in node if isinstance(k, str))
        for key in ("$ref", "$dynamicRef", "$recursiveRef"):
            ref = node.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                raise ValueError(
                    f"{key} at {_where(path)} points outside the schema ({ref[:100]!r}): only "
                    "references within it (#...) are allowed, nothing is fetched"
                )
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict):
            for pattern in patterns:
                _check_pattern(pattern, (*path, "patternProperties"))
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            _check_pattern(pattern, (*path, "pattern"))
    if {"unevaluatedProperties", "patternProperties"} <= keywords:
        raise ValueError(
            "unevaluatedProperties together with patternProperties is not supported: "
            "use additionalProperties"
        )


def _check_pattern(pattern: str, path: tuple[str, ...]) -> None:
    try:
        compile_pattern(pattern)
    except PatternError as exc:
        raise ValueError(
            f"the regular expression at {_where(path)} ({pattern[:100]!r}) is not valid RE2 "
            f"syntax ({exc}): patterns run on RE2 (linear time), without backreferences or "
            "lookaround"
        ) from exc


def _regex_format_checker(validator_class: Any) -> Any:
    """The dialect's format checks, with `regex` judged by RE2 (never Python's re)."""
    import jsonschema

    formats = [f for f in validator_class.FORMAT_CHECKER.checkers if f != "regex"]
    checker = jsonschema.FormatChecker(formats=formats)
    checker.checks("regex", raises=PatternError)(lambda text: bool(compile_pattern(text)))
    return checker


def check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError when `schema` is not a valid JSON Schema (its $schema dialect, else
    2020-12) the operator will run: bounded in size and depth, references only within it,
    every pattern valid RE2."""
    # Imported here: only Rollouts with an http metric need it, and the operator's memory
    # at scale counts every import.
    import jsonschema

    _schema_limits(schema)
    validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    try:
        validator_class.check_schema(schema, format_checker=_regex_format_checker(validator_class))
    except jsonschema.SchemaError as exc:
        raise ValueError(
            f"not a valid JSON Schema at {_where(exc.absolute_path)}: {exc.message[:300]}"
        ) from exc


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
    headers: dict[str, Annotated[str, Field(max_length=4096, pattern=r"^[^\r\n]*$")]] = Field(
        default_factory=dict,
        max_length=16,
        description="Extra request headers, placeholders replaced as in url (e.g. "
        "Host: {{canaryHost}} when url names the ingress gateway: Host may only name the "
        "canary). Plain text in the spec: put no credentials here.",
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
        max_length=64,
        description="JSON Schema (2020-12 unless $schema says otherwise) every answer must match; "
        "at most 32 KiB as JSON, references only within it, pattern and patternProperties in "
        "RE2 syntax (no backreferences or lookaround).",
    )
    timeout: str = Field(
        default="30s",
        pattern=DURATION,
        max_length=64,
        description="Total time each request may take, at most 60s.",
        json_schema_extra={"pattern": TIMEOUT},
    )

    @field_validator("timeout")
    @classmethod
    def _bounded_timeout(cls, v: str) -> str:
        return _timeout(v)

    @field_validator("headers")
    @classmethod
    def _header_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name[:130]!r} is not an HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name} is set by the client, not the spec")
        return v

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
        default=None,
        description="A PromQL query returning one number, sent to a Prometheus the namespace's "
        "PlatformPolicy names (endpoint) or allows (address).",
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
        le=7 * 24 * 3600,
        description="Abort when a step makes no progress (e.g. canary not ready) for this long.",
    )


RolloutPhase = Literal["Pending", "Progressing", "Paused", "Succeeded", "Aborted", "Failed"]
# A canary is running (held or not); a finished Rollout is no longer resynced.
ROLLOUT_ACTIVE: tuple[RolloutPhase, ...] = ("Progressing", "Paused")
ROLLOUT_FINISHED: tuple[RolloutPhase, ...] = ("Succeeded", "Failed")


class AnalysisResult(CamelModel):
    """One metric's latest result."""

    metric: str = Field(max_length=128, description="Metric name.")
    value: float | None = Field(default=None, description="Measured value (absent: no data).")
    passed: bool | None = Field(default=None, description="true, false, or absent: inconclusive.")
    time: str | None = Field(
        default=None, max_length=64, description="When it was measured (RFC 3339)."
    )
    message: ResultMessage = Field(
        default="", description="Detail, e.g. the query error (never the answer's content)."
    )


class AnalysisRound(CamelModel):
    """The outcome of one analysis round."""

    time: str = Field(max_length=64, description="When the round ran (RFC 3339).")
    outcome: Literal["Successful", "Failed", "Inconclusive"] = Field(
        description="Successful, Failed (a metric out of range) or Inconclusive (no data)."
    )
    message: ResultMessage = Field(default="", description="The metrics that decided the outcome.")


class AnalysisStatus(CamelModel):
    """Running totals of the background analysis."""

    successes: int = Field(default=0, ge=0, description="Passed rounds.")
    failures: int = Field(default=0, ge=0, description="Failed rounds.")
    inconclusive: int = Field(default=0, ge=0, description="Inconclusive rounds (no data).")
    consecutive_successes: int = Field(default=0, ge=0, description="Passed rounds in a row.")
    consecutive_inconclusive: int = Field(
        default=0, ge=0, description="Inconclusive rounds in a row."
    )
    last_run_time: str | None = Field(
        default=None, max_length=TIME_MAX, description="When the last round ran."
    )
    last_results: list[AnalysisResult] = Field(
        default_factory=list, max_length=32, description="Results of the last round."
    )
    history: list[AnalysisRound] = Field(
        default_factory=list,
        max_length=32,
        description="Outcomes of the most recent rounds, oldest first.",
    )


class StorageUri(CamelModel):
    """One entry of a predictor's storageUris (KServe's StorageUri)."""

    uri: str = Field(max_length=URI_MAX, description="Model location.")
    mount_path: str | None = Field(
        default=None,
        max_length=1024,
        description="Where it is mounted in the container (KServe: /mnt/models).",
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
        default=None,
        max_length=URI_MAX,
        description="spec.predictor.model.storageUri of the InferenceService.",
    )
    storage_uris: list[StorageUri] | None = Field(
        default=None,
        max_length=16,
        description="spec.predictor.storageUris (base model + adapter).",
    )


class HandledCommands(CamelModel):
    """The annotation values the controller has acted on (a new value is a new command)."""

    promote: Command | None = Field(default=None, description="Last handled whetstone.dev/promote.")
    abort: Command | None = Field(default=None, description="Last handled whetstone.dev/abort.")
    retry: Command | None = Field(default=None, description="Last handled whetstone.dev/retry.")
    pause: Command | None = Field(default=None, description="Last handled whetstone.dev/pause.")
    resume: Command | None = Field(default=None, description="Last handled whetstone.dev/resume.")


class CandidateVerification(CamelModel):
    """The candidate's artifact, checked again by a verify pod of this Rollout before its first
    traffic."""

    model_version: str = Field(max_length=NAME_MAX, description="The ModelVersion checked.")
    digest: str = Field(max_length=71, description="The digest its files matched.")
    at: str = Field(max_length=TIME_MAX, description="When (RFC 3339).")


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
        default=None,
        max_length=NAME_MAX,
        description="ModelVersion serving the rest of the traffic.",
    )
    canary_model_version: str | None = Field(
        default=None, max_length=NAME_MAX, description="ModelVersion being rolled out."
    )
    candidate_verification: CandidateVerification | None = Field(
        default=None,
        description="The candidate's artifact checked again (files against the digest) by this "
        "Rollout's verify pod before any traffic went to it.",
    )
    step_start_time: str | None = Field(
        default=None,
        max_length=TIME_MAX,
        description="When the current step's clock started (RFC 3339).",
    )
    analysis: AnalysisStatus | None = Field(default=None, description="Analysis totals.")
    abort_reason: Annotated[str, _clip(REASON_MAX)] | None = Field(
        default=None, max_length=REASON_MAX, description="Why the rollout was aborted."
    )
    stable_revision: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="KServe revision serving the stable version ({{stable}}).",
    )
    canary_revision: str | None = Field(
        default=None,
        max_length=NAME_MAX,
        description="KServe revision serving the canary ({{canary}}).",
    )
    stable_storage: PredictorStorage | None = Field(
        default=None, description="The stable predictor storage, restored on abort."
    )
    not_ready_since: str | None = Field(
        default=None,
        max_length=TIME_MAX,
        description="Since when the canary has not been ready with the desired traffic split "
        "(the progressDeadlineSeconds clock).",
    )
    start_time: str | None = Field(
        default=None, max_length=TIME_MAX, description="When the rollout started."
    )
    completion_time: str | None = Field(
        default=None, max_length=TIME_MAX, description="When the rollout was promoted."
    )
    paused_by_command: Command | None = Field(
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
