"""Canary analysis I/O: one PromQL instant query against the Prometheus HTTP API -> one number.

An empty result is no data (None); an unreachable server, an error answer, a query returning
several series or a non-number is an error. Both are judged by the metric's `noData`.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from whetstone_operator.rollout.judge import Measurement, Query

log = logging.getLogger(__name__)


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


def measure(query: Query) -> Measurement:
    """Run one metric's query; errors become part of the measurement."""
    try:
        value = query_prometheus(query.address, query.query, query.timeout)
    except QueryError as exc:
        log.info("analysis query %s failed: %s", query.metric, exc)
        return Measurement(metric=query.metric, value=None, error=str(exc))
    return Measurement(metric=query.metric, value=value)
