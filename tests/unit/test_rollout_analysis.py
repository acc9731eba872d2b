"""Canary analysis: placeholders, when a round is due, judging, and the Prometheus client
against a loopback server answering like the Prometheus HTTP API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from whetstone_operator import analysis
from whetstone_operator.api.rollout import AnalysisMetric, RolloutSpec, RolloutStatus
from whetstone_operator.reconcile.canary import (
    Measurement,
    Query,
    analysis_due,
    build_queries,
    judge,
    render_query,
    round_outcome,
)

from tests.loopback import LoopbackServer, QuietHandler

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)


def metric(**kw: Any) -> AnalysisMetric:
    return AnalysisMetric.model_validate(
        {
            "name": "error-rate",
            "prometheus": {"address": "http://p:9090", "query": "q"},
            "thresholdRange": {"max": 0.01},
            **kw,
        }
    )


SPEC = RolloutSpec.model_validate(
    {
        "modelVersion": "v2",
        "inferenceService": {"name": "grader"},
        "strategy": {
            "canary": {
                "steps": [{"setWeight": 5}, {"setWeight": 100}],
                "analysis": {
                    "interval": "30s",
                    "metrics": [
                        {
                            "name": "error-rate",
                            "prometheus": {
                                "address": "http://p:9090",
                                "query": 'sum(rate(x{ns="{{namespace}}",rev="{{ canary }}",'
                                'isvc="{{inferenceService}}"}[1m])) / {{stable}}{{other}}',
                            },
                            "thresholdRange": {"max": 0.01},
                        }
                    ],
                },
            }
        },
    }
)


def status(**kw: Any) -> RolloutStatus:
    base = {
        "phase": "Progressing",
        "canaryModelVersion": "v2",
        "canaryRevision": "grader-predictor-00002",
        "stableRevision": "grader-predictor-00001",
        "currentStepIndex": 0,
    }
    return RolloutStatus.model_validate({**base, **kw})


def test_placeholders_are_filled_and_unknown_ones_kept() -> None:
    (query,) = build_queries(SPEC, status(), "ml")
    assert query.query == (
        'sum(rate(x{ns="ml",rev="grader-predictor-00002",isvc="grader"}[1m])) / '
        "grader-predictor-00001{{other}}"
    )
    assert query.timeout == 10.0
    assert render_query("{{a}}-{{ b }}", {"a": "1"}) == "1-{{ b }}"


@pytest.mark.parametrize(
    ("kw", "due"),
    [
        ({}, True),
        ({"analysis": {"lastRunTime": "2026-11-22T19:59:40Z"}}, False),
        ({"analysis": {"lastRunTime": "2026-11-22T19:59:30Z"}}, True),
        ({"canaryRevision": None}, False),
        ({"phase": "Pending"}, False),
        ({"phase": "Aborted"}, False),
        ({"phase": "Paused"}, True),
        ({"canaryModelVersion": "v1"}, False),
        ({"currentStepIndex": 2}, False),
    ],
    ids=[
        "first round at once",
        "interval not elapsed",
        "interval elapsed",
        "canary not serving yet",
        "pending",
        "aborted",
        "paused still analysed",
        "spec moved to another version",
        "promotion under way",
    ],
)
def test_analysis_due(kw: dict[str, Any], due: bool) -> None:
    assert analysis_due(SPEC, status(**kw), NOW) is due


@pytest.mark.parametrize(
    ("m", "measured", "passed", "text"),
    [
        (metric(), Measurement("error-rate", 0.002), True, "within"),
        (metric(), Measurement("error-rate", 0.2), False, "outside the range (<= 0.01)"),
        (metric(thresholdRange={"min": 0.9}), Measurement("x", 0.95), True, ">= 0.9"),
        (metric(thresholdRange={"min": 1, "max": 2}), Measurement("x", 3.0), False, "[1, 2]"),
        (metric(), Measurement("error-rate", None), None, "no data (noData: inconclusive)"),
        (metric(), Measurement("error-rate", float("nan")), None, "no data"),
        (metric(noData="fail"), Measurement("error-rate", None), False, "noData: fail"),
        (metric(noData="pass"), None, True, "noData: pass"),
        (metric(), Measurement("error-rate", None, "unreachable"), None, "unreachable"),
        (metric(noData="fail"), Measurement("e", None, "HTTP 400: parse error"), False, "400"),
    ],
    ids=[
        "below max",
        "above max",
        "above min",
        "outside both bounds",
        "empty result is inconclusive",
        "NaN is no data",
        "noData fail",
        "noData pass",
        "query error follows noData",
        "query error with noData fail",
    ],
)
def test_judge(
    m: AnalysisMetric, measured: Measurement | None, passed: bool | None, text: str
) -> None:
    result = judge(m, measured, NOW)
    assert result.passed is passed
    assert text in result.message
    assert result.time == "2026-11-22T20:00:00Z"


def test_round_outcome_failed_beats_inconclusive() -> None:
    results = [
        judge(metric(name="a"), Measurement("a", 0.5), NOW),
        judge(metric(name="b"), Measurement("b", None), NOW),
        judge(metric(name="c"), Measurement("c", 0.0), NOW),
    ]
    assert round_outcome(results)[0] == "Failed"
    assert round_outcome(results[1:])[0] == "Inconclusive"
    outcome, detail = round_outcome(results[2:])
    assert outcome == "Successful"
    assert "c: 0 is within" in detail


# ----------------------------------------------------------------------------- client


class _Prometheus(QuietHandler):
    answers: dict[str, tuple[int, Any]] = {}

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)["query"][0]
        self.reply(*self.answers.get(query, (200, {"status": "success", "data": {}})))


def _vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"i": str(i)}, "value": [1.0, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


@pytest.fixture(scope="module")
def prometheus() -> Iterator[str]:
    _Prometheus.answers = {
        "one": (200, _vector("0.25")),
        "none": (200, _vector()),
        "two": (200, _vector("1", "2")),
        "nan": (200, _vector("NaN")),
        "scalar": (
            200,
            {"status": "success", "data": {"resultType": "scalar", "result": [1, "7"]}},
        ),
        "matrix": (200, {"status": "success", "data": {"resultType": "matrix", "result": []}}),
        "bad": (
            400,
            {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"},
        ),
    }
    with LoopbackServer(_Prometheus) as server:
        yield server.url


@pytest.mark.parametrize(
    ("query", "value", "error"),
    [
        ("one", 0.25, None),
        ("none", None, None),
        ("nan", None, None),
        ("scalar", 7.0, None),
        ("two", None, "returned 2 series"),
        ("matrix", None, "returned a matrix"),
        ("bad", None, "HTTP 400: parse error at char 3"),
    ],
)
def test_measure(prometheus: str, query: str, value: float | None, error: str | None) -> None:
    measured = analysis.measure(Query("m", prometheus, query, 2.0))
    assert measured.value == value
    if error is None:
        assert measured.error is None
    else:
        assert measured.error is not None and error in measured.error


def test_measure_unreachable_is_an_error() -> None:
    measured = analysis.measure(Query("m", "http://127.0.0.1:9", "up", 1.0))
    assert measured.value is None
    assert measured.error is not None and "unreachable" in measured.error


def test_interval_lateness_is_bounded() -> None:
    """A round is due exactly one interval after the last one."""
    last = NOW - timedelta(seconds=30)
    st = status(analysis={"lastRunTime": last.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert analysis_due(SPEC, st, NOW)
    assert not analysis_due(SPEC, st, NOW - timedelta(seconds=1))
