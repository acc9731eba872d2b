"""Golden prompts: the http analysis metric's spec checks, its placeholders, where prompts may
go, and the client against a loopback server answering like an OpenAI-compatible chat endpoint
with structured outputs (good answers, contract breaks, server errors, silence); the client may
reach loopback here, as on a test cluster with --allow-loopback-targets."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from whetstone_operator import analysis
from whetstone_operator.api.platformpolicy import PlatformPolicySpec
from whetstone_operator.api.rollout import AnalysisMetric, RolloutSpec, RolloutStatus
from whetstone_operator.reconcile.canary import (
    Measurement,
    Probe,
    Query,
    ServiceView,
    Traffic,
    build_queries,
    judge,
)
from whetstone_operator.reconcile.policy import Policy

from tests.loopback import LoopbackServer, QuietHandler

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
LOOPBACK = analysis.Guard(allow_loopback=True)
GATEWAY_POLICY = Policy(
    "team",
    PlatformPolicySpec.model_validate(
        {
            "analysis": {
                "prometheus": [{"name": "main", "address": "http://p:9090"}],
                "goldenPromptHosts": ["gateway.istio-system"],
            }
        }
    ),
)
GRADE_SCHEMA = {
    "type": "object",
    "required": ["grade", "score"],
    "properties": {
        "grade": {"enum": ["A", "B", "C", "D", "F"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": False,
}


def chat(content: str) -> dict[str, Any]:
    return {
        "model": "grader",
        "messages": [{"role": "user", "content": content}],
        "response_format": {"type": "json_schema", "json_schema": {"schema": GRADE_SCHEMA}},
    }


def http_metric(prompts: list[str], **http: Any) -> dict[str, Any]:
    return {
        "name": "golden-prompts",
        "http": {
            "prompts": [{"name": f"{i}-{p}", "body": chat(p)} for i, p in enumerate(prompts)],
            "responseField": "choices.0.message.content",
            "responseSchema": GRADE_SCHEMA,
            **http,
        },
        "thresholdRange": {"min": 1},
    }


def spec_with(*metrics: dict[str, Any]) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {
            "modelVersion": "v2",
            "inferenceService": {"name": "grader"},
            "strategy": {
                "canary": {
                    "steps": [{"setWeight": 5}, {"setWeight": 100}],
                    "analysis": {"interval": "10s", "metrics": list(metrics)},
                }
            },
        }
    )


STATUS = RolloutStatus.model_validate(
    {
        "phase": "Progressing",
        "canaryModelVersion": "v2",
        "canaryRevision": "grader-predictor-00002",
        "stableRevision": "grader-predictor-00001",
        "currentStepIndex": 0,
    }
)


def service(url: str | None) -> ServiceView:
    return ServiceView(
        name="grader",
        traffic=(
            Traffic("grader-predictor-00002", 5, True, "latest", url),
            Traffic("grader-predictor-00001", 95, False, "prev", "http://prev-grader.ml.example"),
        ),
    )


# ----------------------------------------------------------------------------- the spec


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(levels):
        node = {"items": node}
    return node


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"responseSchema": {"type": "objekt"}}, "not a valid JSON Schema at type"),
        ({"responseSchema": {"required": "grade"}}, "not a valid JSON Schema at required"),
        ({"prompts": []}, "at least 1 item"),
        ({"responseField": "choices[0].message"}, "String should match pattern"),
        ({"timeout": "soon"}, "String should match pattern"),
        ({"timeout": "2m"}, "at most 60s"),
        ({"timeout": "0s"}, "more than 0"),
        ({"responseSchema": {"pattern": "(a)\\1"}}, "not valid RE2 syntax"),
        ({"responseSchema": {"pattern": "^(?!x)"}}, "without backreferences or lookaround"),
        ({"responseSchema": {"patternProperties": {"(?<=a)b": {}}}}, "patternProperties"),
        ({"responseSchema": {"$ref": "http://169.254.169.254/schema"}}, "points outside"),
        (
            {"responseSchema": {"patternProperties": {"a": {}}, "unevaluatedProperties": False}},
            "unevaluatedProperties together with patternProperties",
        ),
        ({"responseSchema": {"enum": ["x" * 40000]}}, "at most 32768"),
        ({"responseSchema": {"items": {"items": {"items": {}}}} | _deep(40)}, "nests deeper"),
        ({"headers": {"Transfer-Encoding": "chunked"}}, "set by the client"),
        ({"headers": {"Bad Name": "x"}}, "not an HTTP header name"),
        ({"headers": {"X-A": "a\r\nHost: evil"}}, "String should match pattern"),
        ({"headers": {f"X-{i}": "v" for i in range(17)}}, "at most 16 items"),
        ({"prompts": [{"name": "big", "body": {"x": "y" * 70000}}]}, "at most 65536"),
    ],
    ids=[
        "unknown type",
        "required not a list",
        "no prompts",
        "bracket path",
        "bad timeout",
        "timeout above the ceiling",
        "zero timeout",
        "a backreference",
        "a lookahead",
        "a lookbehind key",
        "a remote reference",
        "unevaluatedProperties with patternProperties",
        "a schema too large",
        "a schema too deep",
        "a framing header",
        "a header name with a space",
        "a header value with a line break",
        "too many headers",
        "a prompt body too large",
    ],
)
def test_a_wrong_http_metric_is_refused_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    raw = http_metric(["a"])
    raw["http"].update(change)
    with pytest.raises(ValidationError) as exc:
        AnalysisMetric.model_validate(raw)
    assert message in str(exc.value)
    assert "http" in str(exc.value)


def test_a_metric_has_exactly_one_source() -> None:
    both = {**http_metric(["a"]), "prometheus": {"address": "http://p:9090", "query": "up"}}
    with pytest.raises(ValidationError, match=r"exactly one of prometheus, http \(found both\)"):
        AnalysisMetric.model_validate(both)
    with pytest.raises(ValidationError, match="found neither"):
        AnalysisMetric.model_validate({"name": "x", "thresholdRange": {"max": 1}})
    twice = http_metric(["a", "a"])
    twice["http"]["prompts"][1]["name"] = "0-a"
    with pytest.raises(ValidationError, match=r"prompts\[1\]\.name '0-a' is used twice"):
        AnalysisMetric.model_validate(twice)


def test_the_canary_url_comes_from_the_tagged_traffic_entry() -> None:
    spec = spec_with(
        {
            "name": "error-rate",
            "prometheus": {"endpoint": "main", "query": "up"},
            "thresholdRange": {"max": 1},
        },
        http_metric(
            ["a"],
            url="http://gateway.istio-system/v1/models/{{inferenceService}}:predict",
            headers={"Host": "{{canaryHost}}", "X-Revision": "{{canary}}"},
        ),
        http_metric(["b"]),
    )
    query, gateway, default = build_queries(
        spec, STATUS, "ml", service("http://latest-grader.ml.example.com/"), GATEWAY_POLICY
    )
    assert isinstance(query, Query)
    assert isinstance(gateway, Probe) and isinstance(default, Probe)
    assert gateway.url == "http://gateway.istio-system/v1/models/grader:predict"
    assert gateway.headers == {
        "Host": "latest-grader.ml.example.com",
        "X-Revision": "grader-predictor-00002",
    }
    assert default.url == "http://latest-grader.ml.example.com/openai/v1/chat/completions"
    assert default.problem is None
    assert gateway.refused is None and default.refused is None
    assert default.timeout == 30.0
    assert default.prompts[0].body == chat("b")


def test_no_tag_routed_url_is_no_data_with_the_fix() -> None:
    spec = spec_with(http_metric(["a"]))
    for observed in (service(None), None):
        (probe,) = build_queries(spec, STATUS, "ml", observed)
        assert isinstance(probe, Probe)
        assert probe.url is None
        assert probe.problem is not None and "enable-tag-routing" in probe.problem
        measured = analysis.measure(probe)
        assert measured.value is None and measured.error == probe.problem
        assert not measured.refused


# ----------------------------------------------------------------------------- the client


class _ModelServer(QuietHandler):
    """Answers a chat completion by what the prompt asks for."""

    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.read_json()
        self.seen.append((self.path, dict(self.headers), body))
        prompt = body["messages"][-1]["content"]
        content = {
            "good": '{"grade": "A", "score": 0.93}',
            "missing-field": '{"grade": "B"}',
            "wrong-enum": '{"grade": "excellent", "score": 0.9}',
            "prose": "The essay deserves an A.",
        }.get(prompt)
        if prompt == "error":
            self.reply(500, {"error": "CUDA out of memory"})
            return
        if prompt == "slow":
            time.sleep(1.5)
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        if prompt == "no-choices":
            answer = {"object": "chat.completion"}
        self.reply(200, answer)


@pytest.fixture(scope="module")
def canary_url() -> Iterator[str]:
    with LoopbackServer(_ModelServer) as server:
        yield server.url


def probe_for(url: str | None, prompts: list[str], **http: Any) -> Probe:
    spec = spec_with(http_metric(prompts, timeout="1s", **http))
    (probe,) = build_queries(spec, STATUS, "ml", service(url))
    assert isinstance(probe, Probe)
    return probe


@pytest.mark.parametrize(
    ("prompts", "value", "note"),
    [
        (["good", "good"], 1.0, "2 of 2 golden prompts passed"),
        (
            ["good", "missing-field"],
            0.5,
            "missing-field: schema violation at required (required: missing score)",
        ),
        (["wrong-enum"], 0.0, "schema violation at properties/grade/enum (enum)"),
        (["good", "prose"], 0.5, "choices.0.message.content is not JSON text (24 characters)"),
        (["good", "error"], 0.5, "1-error: HTTP 500 Internal Server Error (31 bytes)"),
        (["no-choices"], 0.0, "the answer has no choices.0.message.content"),
        (["good", "slow"], 0.5, "1-slow: no answer"),
    ],
    ids=[
        "all match",
        "a required field missing",
        "a value outside the enum",
        "prose instead of JSON",
        "server error fails its prompt",
        "no choices",
        "timeout fails its prompt when others answer",
    ],
)
def test_golden_prompts_against_a_model_server(
    canary_url: str, prompts: list[str], value: float, note: str
) -> None:
    measured = analysis.measure(probe_for(canary_url, prompts), LOOPBACK)
    assert measured.error is None
    assert measured.value == value
    assert note in measured.note, measured.note
    result = judge(AnalysisMetric.model_validate(http_metric(prompts)), measured, NOW)
    assert result.passed is (value == 1.0)
    if value < 1.0:
        assert note in result.message
    # Never the answer's content: the values, the prose, the server's error text.
    for text in ("excellent", "essay deserves", "CUDA", "'B'"):
        assert text not in result.message


def test_requests_carry_the_body_and_rendered_headers(canary_url: str) -> None:
    _ModelServer.seen.clear()
    probe = probe_for(canary_url, ["good"], headers={"X-Canary": "{{canary}}"})
    assert analysis.measure(probe, LOOPBACK).value == 1.0
    ((path, headers, body),) = _ModelServer.seen
    assert path == "/openai/v1/chat/completions"
    assert headers["X-Canary"] == "grader-predictor-00002"
    assert headers["Content-Type"] == "application/json"
    assert body == chat("good")


def test_the_whole_answer_can_be_checked_without_parsing(canary_url: str) -> None:
    envelope = {"type": "object", "required": ["choices"]}
    probe = probe_for(canary_url, ["prose"], responseField=None, responseSchema=envelope)
    assert analysis.measure(probe, LOOPBACK).value == 1.0
    as_text = {"type": "string", "pattern": "^The essay"}
    probe = probe_for(canary_url, ["prose"], responseSchema=as_text, parseJson=False)
    assert analysis.measure(probe, LOOPBACK).value == 1.0


def test_no_answer_at_all_is_no_data() -> None:
    measured = analysis.measure(probe_for("http://127.0.0.1:9", ["good", "error"]), LOOPBACK)
    assert measured.value is None and not measured.refused
    assert measured.error is not None and "no answer from http://127.0.0.1:9" in measured.error
    assert "connection refused" in measured.error
    result = judge(AnalysisMetric.model_validate(http_metric(["good"])), measured, NOW)
    assert result.passed is None
    assert "noData: inconclusive" in result.message


def test_a_prometheus_measurement_is_unchanged_by_notes() -> None:
    m = AnalysisMetric.model_validate(
        {
            "name": "e",
            "prometheus": {"address": "http://p:9090", "query": "q"},
            "thresholdRange": {"max": 0.01},
        }
    )
    assert judge(m, Measurement("e", 0.5), NOW).message == "0.5 is outside the range (<= 0.01)"


def test_a_round_measures_every_check_in_order(canary_url: str) -> None:
    slow = probe_for(canary_url, ["slow"])  # answers after 1.5 s, past its 1 s timeout
    good = dataclasses.replace(slow, metric="good", prompts=probe_for(canary_url, ["good"]).prompts)
    down = Query("error-rate", "http://127.0.0.1:9", "up", 1.0)
    measured = analysis.measure_all([slow, good, down], LOOPBACK)
    assert [m.metric for m in measured] == ["golden-prompts", "good", "error-rate"]
    assert measured[0].value is None and measured[0].error is not None  # no answer at all
    assert measured[1].value == 1.0
    assert measured[2].error is not None and "unreachable" in measured[2].error
