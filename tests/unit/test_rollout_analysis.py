"""Canary analysis: placeholders, when a round is due, judging, and the Prometheus client
against a loopback server answering like the Prometheus HTTP API (the client may reach loopback
here, as on a test cluster with --allow-loopback-targets)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from whetstone_operator import analysis
from whetstone_operator.api.platformpolicy import PlatformPolicySpec
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
from whetstone_operator.reconcile.policy import Policy

from tests.loopback import LoopbackServer, QuietHandler

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
LOOPBACK = analysis.Guard(allow_loopback=True)
POLICY = Policy(
    "team",
    PlatformPolicySpec.model_validate(
        {"analysis": {"prometheus": [{"name": "main", "address": "http://prom.monitoring:9090"}]}}
    ),
)


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
                                "endpoint": "main",
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
    (query,) = build_queries(SPEC, status(), "ml", policy=POLICY)
    assert isinstance(query, Query)
    assert query.address == "http://prom.monitoring:9090" and query.refused is None
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
        (
            metric(noData="pass"),
            Measurement("error-rate", None, "not allowed", refused=True),
            False,
            "refused, nothing sent: not allowed",
        ),
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
        "a refused target fails whatever noData says",
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
        "made-up-error": (503, {"status": "error", "errorType": "secret-ish", "error": "x"}),
        "not-number": (200, _vector("AKIA-not-a-number")),
        "html": (200, "<html>AKIA internal page</html>"),
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
        ("bad", None, "HTTP 400 Bad Request (78 bytes): the query is not valid PromQL"),
        ("made-up-error", None, "HTTP 503 Service Unavailable (60 bytes)"),
        ("not-number", None, "the sample value is not a number"),
        ("html", None, "answered 31 bytes that are not a successful query result"),
    ],
)
def test_measure(prometheus: str, query: str, value: float | None, error: str | None) -> None:
    measured = analysis.measure(Query("m", prometheus, query, 2.0), LOOPBACK)
    assert measured.value == value
    assert not measured.refused
    if error is None:
        assert measured.error is None
    else:
        assert measured.error is not None and error in measured.error
        # Only our words: never the server's error text or values.
        assert "parse error" not in measured.error and "AKIA" not in measured.error
        assert "secret-ish" not in measured.error


def test_measure_unreachable_is_an_error() -> None:
    measured = analysis.measure(Query("m", "http://127.0.0.1:9", "up", 1.0), LOOPBACK)
    assert measured.value is None and not measured.refused
    assert measured.error is not None and "unreachable: connection refused" in measured.error


def test_loopback_is_refused_without_the_operator_option(prometheus: str) -> None:
    measured = analysis.measure(Query("m", prometheus, "one", 2.0))
    assert measured.refused and measured.value is None
    assert measured.error is not None and "loopback" in measured.error


@pytest.mark.parametrize(
    ("prom", "address", "refusal"),
    [
        ({"endpoint": "main"}, "http://prom.monitoring:9090", None),
        ({"endpoint": "other"}, None, "PlatformPolicy team spec.analysis.prometheus"),
        ({"address": "http://prom.monitoring:9090"}, None, "spec.analysis.allowAddresses"),
    ],
    ids=["a named endpoint", "an unknown name", "a raw address without an allowed prefix"],
)
def test_policy_decides_the_prometheus_target(
    prom: dict[str, str], address: str | None, refusal: str | None
) -> None:
    spec = SPEC.model_copy(deep=True)
    raw = spec.model_dump(by_alias=True, exclude_none=True)
    raw["strategy"]["canary"]["analysis"]["metrics"][0]["prometheus"] = {**prom, "query": "up"}
    (query,) = build_queries(RolloutSpec.model_validate(raw), status(), "ml", policy=POLICY)
    assert isinstance(query, Query)
    assert query.address == address
    if refusal is None:
        assert query.refused is None
    else:
        assert query.refused is not None and refusal in query.refused
        measured = analysis.measure(query)  # nothing is sent: no resolver, no socket
        assert measured.refused and refusal in (measured.error or "")


def test_interval_lateness_is_bounded() -> None:
    """A round is due exactly one interval after the last one."""
    last = NOW - timedelta(seconds=30)
    st = status(analysis={"lastRunTime": last.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert analysis_due(SPEC, st, NOW)
    assert not analysis_due(SPEC, st, NOW - timedelta(seconds=1))
