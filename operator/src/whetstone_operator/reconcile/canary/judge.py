"""Analysis as pure functions: when a round is due, the checks it runs, how results are judged.

A round runs one check per metric: a Prometheus query (`Query`) or golden prompts sent to the
canary over HTTP (`Probe`); either gives one number (`Measurement`), judged by the metric's
thresholdRange. The I/O lives in `whetstone_operator.analysis`.

A check whose target the namespace's PlatformPolicy refuses is built already refused: nothing is
sent, and its metric fails whatever `noData` says. Failing, not inconclusive: a target that can
never answer would otherwise hold the canary at its first weight for good (or, with noData:
pass, let it through unchecked), and rolling back is the safe end.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlparse

from whetstone_operator.api.common import format_time, parse_duration, parse_time
from whetstone_operator.api.rollout import (
    ROLLOUT_ACTIVE,
    AnalysisMetric,
    AnalysisResult,
    RolloutSpec,
    RolloutStatus,
)
from whetstone_operator.reconcile.canary.kserve import ServiceView
from whetstone_operator.reconcile.canary.targets import prometheus_address, prompt_refusal
from whetstone_operator.reconcile.policy import Policy

Outcome = Literal["Successful", "Failed", "Inconclusive"]
MESSAGE_MAX = 1024  # AnalysisResult.message
DETAIL_MAX = 4096  # a round's summary
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Query:
    """One metric's query, placeholders filled in (address None: `refused` says why)."""

    metric: str
    address: str | None
    query: str
    timeout: float
    refused: str | None = None


@dataclass(frozen=True)
class Prompt:
    """One golden prompt: its name and the JSON body to send."""

    name: str
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Probe:
    """One metric's golden prompts, placeholders filled in (url None: no canary URL known,
    `problem` says why; `refused`: the policy does not allow the URL)."""

    metric: str
    url: str | None
    headers: Mapping[str, str]
    prompts: tuple[Prompt, ...]
    response_field: str | None
    parse_json: bool
    schema: Mapping[str, Any]
    timeout: float
    problem: str | None = None
    refused: str | None = None


Check = Query | Probe


@dataclass(frozen=True)
class Measurement:
    """What a check returned: a value, nothing (None) or an error; `note` adds detail (e.g.
    which golden prompt failed); `refused`: the target was not allowed and nothing was sent
    (`error` says why). Every text is in the operator's words, never the answer's content."""

    metric: str
    value: float | None
    error: str | None = None
    note: str = ""
    refused: bool = False


def render_query(text: str, variables: Mapping[str, str]) -> str:
    """Replace {{name}} placeholders; unknown names are left as they are."""
    return _PLACEHOLDER.sub(lambda m: variables.get(m.group(1), m.group(0)), text)


def analysis_due(spec: RolloutSpec, status: RolloutStatus, now: datetime) -> bool:
    """A round is due: analysis configured, the canary serving, the interval elapsed."""
    analysis = spec.strategy.canary.analysis
    if analysis is None or status.phase not in ROLLOUT_ACTIVE or not status.canary_revision:
        return False
    if status.canary_model_version != spec.model_version:
        return False
    # Once canaryTrafficPercent is cleared KServe has promoted: there is no going back.
    if (status.current_step_index or 0) >= len(spec.strategy.canary.steps):
        return False
    last = status.analysis.last_run_time if status.analysis else None
    if last is None:
        return True
    return (now - parse_time(last)).total_seconds() >= parse_duration(analysis.interval)


def build_queries(
    spec: RolloutSpec,
    status: RolloutStatus,
    namespace: str,
    service: ServiceView | None = None,
    policy: Policy | None = None,
) -> list[Check]:
    """The round's checks with {{canary}}, {{stable}}, {{namespace}}, {{inferenceService}}
    and, for golden prompts, {{canaryUrl}} and {{canaryHost}} (from `service`'s traffic);
    targets `policy` (the namespace's; the built-in default when None) refuses come refused."""
    policy = policy or Policy()
    analysis = spec.strategy.canary.analysis
    if analysis is None:
        return []
    variables = {
        "canary": status.canary_revision or "",
        "stable": status.stable_revision or "",
        "namespace": namespace,
        "inferenceService": spec.inference_service.name,
    }
    canary_url = service.url_of(status.canary_revision) if service is not None else None
    checks: list[Check] = []
    for m in analysis.metrics:
        if m.prometheus is not None:
            address, not_allowed = prometheus_address(m.prometheus, policy)
            checks.append(
                Query(
                    metric=m.name,
                    address=address,
                    query=render_query(m.prometheus.query, variables),
                    timeout=parse_duration(m.prometheus.timeout),
                    refused=not_allowed,
                )
            )
            continue
        http = m.http
        assert http is not None
        probe_vars = dict(variables)
        if canary_url:
            probe_vars["canaryUrl"] = canary_url.rstrip("/")
            probe_vars["canaryHost"] = urlparse(canary_url).netloc
        url: str | None = render_query(http.url, probe_vars)
        headers = {k: render_query(v, probe_vars) for k, v in http.headers.items()}
        problem = refused = None
        if _PLACEHOLDER.search(url or ""):
            problem = (
                f"InferenceService {spec.inference_service.name} reports no URL for the canary "
                f"revision {status.canary_revision}: annotate it with "
                'serving.kserve.io/enable-tag-routing: "true", or set http.url'
            )
            url = None
        else:
            refused = prompt_refusal(url or "", canary_url, headers, policy)
        checks.append(
            Probe(
                metric=m.name,
                url=url,
                headers=headers,
                prompts=tuple(Prompt(p.name, p.body) for p in http.prompts),
                response_field=http.response_field,
                parse_json=http.parse_json,
                schema=http.response_schema,
                timeout=parse_duration(http.timeout),
                problem=problem,
                refused=refused,
            )
        )
    return checks


def _bounds(metric: AnalysisMetric) -> str:
    low, high = metric.threshold_range.min, metric.threshold_range.max
    if low is not None and high is not None:
        return f"in [{low:g}, {high:g}]"
    return f"<= {high:g}" if high is not None else f">= {low:g}"


def judge(metric: AnalysisMetric, measured: Measurement | None, now: datetime) -> AnalysisResult:
    """One metric's result: in range, out of range, or no data (then `noData` decides)."""
    stamp = format_time(now)
    if measured is not None and measured.refused:
        return AnalysisResult(
            metric=metric.name,
            passed=False,
            time=stamp,
            message=f"refused, nothing sent: {measured.error}"[:MESSAGE_MAX],
        )
    value = measured.value if measured is not None else None
    if value is not None and math.isnan(value):
        value = None
    if value is None:
        why = (measured.error if measured is not None else None) or "no data"
        passed = {"pass": True, "fail": False, "inconclusive": None}[metric.no_data]  # nosec B105 # an outcome, not a password
        return AnalysisResult(
            metric=metric.name,
            passed=passed,
            time=stamp,
            message=f"{why[: MESSAGE_MAX - 40]} (noData: {metric.no_data})",
        )
    low, high = metric.threshold_range.min, metric.threshold_range.max
    ok = (low is None or value >= low) and (high is None or value <= high)
    verdict = "within" if ok else "outside"
    note = f": {measured.note}" if measured is not None and measured.note else ""
    return AnalysisResult(
        metric=metric.name,
        value=value,
        passed=ok,
        time=stamp,
        message=f"{value:g} is {verdict} the range ({_bounds(metric)}){note}"[:MESSAGE_MAX],
    )


def judge_round(
    metrics: Sequence[AnalysisMetric], measurements: Sequence[Measurement], now: datetime
) -> list[AnalysisResult]:
    by_name = {m.metric: m for m in measurements}
    return [judge(metric, by_name.get(metric.name), now) for metric in metrics]


def round_outcome(results: Sequence[AnalysisResult]) -> tuple[Outcome, str]:
    """Failed if any metric failed, else Inconclusive if any had no verdict, else Successful;
    the detail (which goes into conditions, Events and the abort reason) is bounded."""
    failed = [r for r in results if r.passed is False]
    unknown = [r for r in results if r.passed is None]
    outcome: Outcome = "Failed" if failed else "Inconclusive" if unknown else "Successful"
    shown = failed or unknown or list(results)
    return outcome, "; ".join(f"{r.metric}: {r.message}" for r in shown)[:DETAIL_MAX]
