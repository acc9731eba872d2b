"""Canary analysis I/O: each check of a round -> one number.

A PromQL instant query against the Prometheus HTTP API: an empty result is no data (None); an
unreachable server, an error answer, a query returning several series or a non-number is an
error. Both are judged by the metric's `noData`.

Golden prompts: each prompt is POSTed to the canary revision alone and its answer (or the
part `responseField` selects, parsed from JSON text) validated against the response schema;
the value is the fraction that passed. An answer with an HTTP error status fails its prompt;
when no prompt got any answer (the canary unreachable from the operator, or no canary URL
known) the round has no data.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from whetstone_operator.reconcile.canary.judge import Check, Measurement, Probe, Prompt, Query

log = logging.getLogger(__name__)
PROMPTS_AT_ONCE = 4
CHECKS_AT_ONCE = 8


class QueryError(Exception):
    """The query could not be answered with a single number."""


def _number(sample: Any) -> float:
    # Instant vectors and scalars carry [timestamp, "value"].
    if not isinstance(sample, list) or len(sample) != 2:
        raise QueryError(f"unexpected sample {sample!r}")
    try:
        return float(sample[1])
    except (TypeError, ValueError) as exc:
        raise QueryError(f"sample value {sample[1]!r} is not a number") from exc


def query_prometheus(address: str, promql: str, timeout: float) -> float | None:
    """The single value of an instant query; None when the result is empty or NaN."""
    url = address.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, OSError):
            detail = ""
        raise QueryError(f"Prometheus answered HTTP {exc.code}: {detail or exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise QueryError(f"Prometheus at {address} unreachable: {exc}") from exc
    if answer.get("status") != "success":
        raise QueryError(f"Prometheus error: {answer.get('error', answer)}")
    data = answer.get("data", {})
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        value = _number(result)
    elif kind == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise QueryError(
                f"the query returned {len(result)} series; aggregate it to one (e.g. sum(...))"
            )
        value = _number(result[0].get("value"))
    else:
        raise QueryError(f"the query returned a {kind}, not a single number")
    return None if math.isnan(value) else value


class NoAnswerError(Exception):
    """The request got no HTTP answer at all (connection refused, timeout, DNS)."""


def select(answer: Any, path: str | None) -> Any:
    """The part of a JSON answer a dotted path names (numbers index lists)."""
    if not path:
        return answer
    current = answer
    for part in path.split("."):
        if isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        elif isinstance(current, Mapping) and part in current:
            current = current[part]
        else:
            raise ValueError(f"the answer has no {path} (stopped at {part!r})")
    return current


def check_answer(probe: Probe, raw: bytes) -> str | None:
    """Why an answer breaks the contract (None: it matches the response schema)."""
    import jsonschema

    try:
        answer = json.loads(raw)
    except ValueError as exc:
        return f"the answer is not JSON: {exc}"
    try:
        part = select(answer, probe.response_field)
    except ValueError as exc:
        return str(exc)
    if probe.parse_json and isinstance(part, str):
        try:
            part = json.loads(part)
        except ValueError as exc:
            where = probe.response_field or "the answer"
            return f"{where} is not JSON text: {exc}: {part[:120]!r}"
    validator_class = jsonschema.validators.validator_for(
        probe.schema, jsonschema.Draft202012Validator
    )
    error = jsonschema.exceptions.best_match(validator_class(probe.schema).iter_errors(part))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"schema violation at {where}: {error.message}"[:300]


def send_prompt(probe: Probe, prompt: Prompt) -> str | None:
    """POST one golden prompt; why it failed (None: the answer matched). Raises NoAnswerError."""
    assert probe.url is not None
    data = json.dumps(prompt.body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers.update(probe.headers)
    request = urllib.request.Request(probe.url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=probe.timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode(errors="replace")
        return f"HTTP {exc.code} {exc.reason}: {detail}".strip()
    except (OSError, ValueError) as exc:
        raise NoAnswerError(str(getattr(exc, "reason", exc))) from exc
    return check_answer(probe, raw)


def run_probe(probe: Probe) -> Measurement:
    """Send every golden prompt; the value is the fraction whose answers matched."""
    if probe.url is None:
        return Measurement(probe.metric, None, error=probe.problem or "no canary URL")

    def outcome(prompt: Prompt) -> tuple[str | None, bool]:
        """(why it failed, whether it got an answer at all)."""
        try:
            return send_prompt(probe, prompt), True
        except NoAnswerError as exc:
            return f"no answer: {exc}", False

    with ThreadPoolExecutor(max_workers=min(PROMPTS_AT_ONCE, len(probe.prompts))) as pool:
        outcomes = list(pool.map(outcome, probe.prompts))
    failures = [
        f"golden prompt {prompt.name}: {why}"
        for prompt, (why, _) in zip(probe.prompts, outcomes, strict=True)
        if why is not None
    ]
    unanswered = [
        f"{prompt.name}: {why}"
        for prompt, (why, answered) in zip(probe.prompts, outcomes, strict=True)
        if not answered
    ]
    if len(unanswered) == len(probe.prompts):
        return Measurement(probe.metric, None, error=f"no answer from {probe.url}: {unanswered[0]}")
    total = len(probe.prompts)
    passed = total - len(failures)
    note = f"{passed} of {total} golden prompts passed"
    if failures:
        note += f"; {failures[0]}"
        log.info("analysis %s: %s", probe.metric, "; ".join(failures))
    return Measurement(probe.metric, passed / total, note=note)


def measure_all(checks: Sequence[Check]) -> tuple[Measurement, ...]:
    """A round's checks side by side: a slow one does not delay the others' verdict."""
    if len(checks) <= 1:
        return tuple(measure(c) for c in checks)
    with ThreadPoolExecutor(max_workers=min(CHECKS_AT_ONCE, len(checks))) as pool:
        return tuple(pool.map(measure, checks))


def measure(check: Check) -> Measurement:
    """Run one metric's check; errors become part of the measurement."""
    if isinstance(check, Probe):
        return run_probe(check)
    query: Query = check
    try:
        value = query_prometheus(query.address, query.query, query.timeout)
    except QueryError as exc:
        log.info("analysis query %s failed: %s", query.metric, exc)
        return Measurement(metric=query.metric, value=None, error=str(exc))
    return Measurement(metric=query.metric, value=value)
