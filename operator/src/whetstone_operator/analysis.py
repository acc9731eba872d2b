"""Canary analysis I/O: each check of a round -> one number, over requests a tenant cannot turn
against the operator, the cluster or the cloud it runs in.

Every request (`fetch`): the host name is resolved once, every address it resolves to must pass
`targets.address_refusal` (no link-local or metadata, loopback, unspecified, multicast or API
server address, whatever the policy), and the connection goes to an address that was checked,
so a second DNS answer cannot swap it; no proxy, no redirects. One total deadline covers
resolving, connecting, sending and reading (a watchdog shuts the socket down when it passes, so
a server trickling bytes cannot hold a request longer), and the body is read up to a byte cap.
Nothing a server sends is repeated in a result, a condition, an Event or a log: they speak of
status codes, sizes and which check failed, in our words.

A PromQL instant query against the Prometheus HTTP API: an empty result is no data (None); an
unreachable server, an error answer, a query returning several series or a non-number is an
error. Both are judged by the metric's `noData`.

Golden prompts: each prompt is POSTed to the canary revision alone and its answer (or the part
`responseField` selects, parsed from JSON text) validated against the response schema, whose
`pattern` and `patternProperties` run on RE2 (linear time), whose references never leave it and
whose check has a time budget; the value is the fraction that passed. An answer with an HTTP
error status fails its prompt; when no prompt got any answer (the canary unreachable from the
operator, or no canary URL known) the round has no data.
"""

from __future__ import annotations

import base64
import contextlib
import http
import http.client
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from whetstone_operator.api.rollout import PatternError, compile_pattern
from whetstone_operator.reconcile.canary.judge import Check, Measurement, Probe, Prompt, Query
from whetstone_operator.reconcile.canary.targets import address_refusal, display, parse_target

log = logging.getLogger(__name__)
PROMPTS_AT_ONCE = 4
CHECKS_AT_ONCE = 8
PROMETHEUS_BYTES = 1024 * 1024
PROMPT_BYTES = 256 * 1024
READ_CHUNK = 64 * 1024
# Checking one answer against its schema; the whole of one golden-prompt metric.
ANSWER_CHECK_SECONDS = 2.0
PROBE_SECONDS = 120.0
# Prometheus's own error types, in our words (its error text is never repeated).
PROMETHEUS_ERRORS = {
    "bad_data": "the query is not valid PromQL",
    "timeout": "the query timed out in Prometheus",
    "canceled": "the query was canceled",
    "execution": "the query failed while running",
    "internal": "Prometheus failed internally",
    "unavailable": "Prometheus is not ready",
    "not_found": "Prometheus has no such API",
    "not_acceptable": "Prometheus cannot answer in JSON",
}


class RefusedError(Exception):
    """The address rules refuse the target; nothing was sent."""


class NoAnswerError(Exception):
    """The request got no complete HTTP answer (connection refused, deadline, DNS)."""


class AnswerTooLargeError(Exception):
    """The answer is larger than the cap; it was not read to the end."""


class QueryError(Exception):
    """The query could not be answered with a single number."""


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IP literals resolve to themselves)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class Guard:
    """What analysis connects to, whatever a policy says: `allow_loopback` for test clusters
    only (the operator's --allow-loopback-targets); `api_servers` the API server's (ip, port);
    `resolve` the resolver (tests swap it)."""

    allow_loopback: bool = False
    api_servers: frozenset[tuple[str, int]] = frozenset()
    resolve: Callable[[str, int], list[str]] = resolve

    def refusal(self, ip: str, port: int) -> str | None:
        return address_refusal(
            ip, port, allow_loopback=self.allow_loopback, api_servers=self.api_servers
        )


STRICT = Guard()


def api_server_addresses(
    urls: Iterable[str], resolver: Callable[[str, int], list[str]] = resolve
) -> frozenset[tuple[str, int]]:
    """(ip, port) of each API server URL (the kubeconfig's or in-cluster host)."""
    found: set[tuple[str, int]] = set()
    for url in urls:
        target = parse_target(url if "://" in url else f"https://{url}")
        if target is None:
            continue
        try:
            found.update((ip, target.port) for ip in resolver(target.host, target.port))
        except (OSError, UnicodeError):
            continue
    return frozenset(found)


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read in full (within the cap)."""

    status: int
    body: bytes


def _resolve_within(guard: Guard, host: str, port: int, seconds: float) -> list[str]:
    # getaddrinfo has no timeout of its own: a resolver that hangs must not hold the request.
    found: list[str] = []
    done = threading.Event()

    def run() -> None:
        try:
            found.extend(guard.resolve(host, port))
        except (OSError, UnicodeError):
            pass
        finally:
            done.set()

    threading.Thread(target=run, name="analysis-resolve", daemon=True).start()
    if not done.wait(max(seconds, 0.0)):
        raise NoAnswerError(f"{host} did not resolve within the deadline")
    if not found:
        raise NoAnswerError(f"{host} does not resolve")
    return found


class _Watchdog:
    """Shuts a connection down when the deadline passes, whatever call is blocked on it."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.fired = False
        # A duplicate descriptor: it outlives the TLS wrapping of the original.
        self._sock = sock.dup()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._timer.cancel()
        self._sock.close()


def _connect(ips: Sequence[str], port: int, deadline: float) -> socket.socket:
    last: OSError | None = None
    for ip in ips:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return socket.create_connection((ip, port), timeout=remaining)
        except OSError as exc:
            last = exc
    raise NoAnswerError(_why(last) if last is not None else "the deadline passed")


def _why(exc: BaseException) -> str:
    """A network failure in our words (no text the server sent)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "its TLS certificate is not valid for the host"
    if isinstance(exc, ssl.SSLError):
        return "the TLS handshake failed"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without an answer"
    if isinstance(exc, http.client.IncompleteRead):
        return "the answer ended early"
    if isinstance(exc, http.client.HTTPException):
        return "the answer is not valid HTTP"
    if isinstance(exc, OSError):
        return f"network error ({exc.strerror or type(exc).__name__})"
    return type(exc).__name__


def fetch(
    url: str,
    guard: Guard,
    *,
    timeout: float,
    cap: int,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """One request under the address rules, a total deadline and a byte cap. Raises RefusedError
    (nothing sent), NoAnswerError or AnswerTooLargeError. Redirects come back as they are."""
    target = parse_target(url)
    if target is None:
        raise RefusedError("not an http(s) URL with a host")
    deadline = time.monotonic() + timeout
    ips = _resolve_within(guard, target.host, target.port, timeout)
    for ip in ips:
        why = guard.refusal(ip, target.port)
        if why is not None:
            shown = why if ip == target.host else f"{target.host} resolves to {why}"
            raise RefusedError(f"{shown}; analysis never connects there")
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    send = dict(headers or {})
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        send["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    sock = _connect(ips, target.port, deadline)
    watchdog = _Watchdog(sock, deadline - time.monotonic())
    conn: http.client.HTTPConnection | None = None
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        if target.scheme == "https":
            context = ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=target.host)
            conn = http.client.HTTPSConnection(target.host, target.port, context=context)
        else:
            conn = http.client.HTTPConnection(target.host, target.port)
        conn.sock = sock
        conn.request(method, path, body=body, headers=send)
        response = conn.getresponse()
        declared = response.getheader("Content-Length") or ""
        if declared.isdigit() and int(declared) > cap:
            raise AnswerTooLargeError(int(declared))
        data = bytearray()
        while chunk := response.read1(READ_CHUNK):
            data += chunk
            if len(data) > cap:
                raise AnswerTooLargeError(len(data))
        if watchdog.fired:
            raise NoAnswerError(f"no complete answer within {timeout:g}s")
        return Answer(response.status, bytes(data))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if watchdog.fired:
            raise NoAnswerError(f"no complete answer within {timeout:g}s") from None
        raise NoAnswerError(_why(exc)) from None
    finally:
        watchdog.close()
        if conn is not None:
            conn.close()
        else:
            sock.close()


def _status(code: int, size: int) -> str:
    try:
        phrase = f" {http.HTTPStatus(code).phrase}"
    except ValueError:
        phrase = ""
    redirect = ", a redirect: not followed" if 300 <= code < 400 else ""
    return f"HTTP {code}{phrase} ({size} bytes{redirect})"


def _kib(n: int) -> str:
    return f"{n // 1024} KiB" if n < 1024 * 1024 else f"{n // (1024 * 1024)} MiB"


# ----------------------------------------------------------------------------- Prometheus


def _number(sample: Any) -> float:
    # Instant vectors and scalars carry [timestamp, "value"].
    if not isinstance(sample, list) or len(sample) != 2:
        raise QueryError("a sample of the result is not [time, value]")
    try:
        return float(sample[1])
    except (TypeError, ValueError) as exc:
        raise QueryError("the sample value is not a number") from exc


def _error_type(answer: Any) -> str:
    kind = answer.get("errorType") if isinstance(answer, dict) else None
    return f": {PROMETHEUS_ERRORS[kind]} (errorType {kind})" if kind in PROMETHEUS_ERRORS else ""


def query_url(address: str, promql: str) -> str:
    """The instant-query URL under a Prometheus base address."""
    parts = urlsplit(address)
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return f"{base}/api/v1/query?" + urlencode({"query": promql})


def query_prometheus(
    address: str, promql: str, timeout: float, guard: Guard = STRICT
) -> float | None:
    """The single value of an instant query; None when the result is empty or NaN. Raises
    RefusedError or QueryError."""
    where = f"Prometheus at {display(address)}"
    try:
        answer = fetch(
            query_url(address, promql),
            guard,
            timeout=timeout,
            cap=PROMETHEUS_BYTES,
            headers={"Accept": "application/json"},
        )
    except NoAnswerError as exc:
        raise QueryError(f"{where} unreachable: {exc}") from None
    except AnswerTooLargeError:
        raise QueryError(f"{where} answered more than {_kib(PROMETHEUS_BYTES)}: not read") from None
    try:
        parsed = json.loads(answer.body)
    except (ValueError, RecursionError):
        parsed = None
    if answer.status != 200:
        raise QueryError(
            f"{where} answered {_status(answer.status, len(answer.body))}{_error_type(parsed)}"
        )
    if not isinstance(parsed, dict) or parsed.get("status") != "success":
        raise QueryError(
            f"{where} answered {len(answer.body)} bytes that are not a successful query "
            f"result{_error_type(parsed)}"
        )
    data = parsed.get("data")
    data = data if isinstance(data, dict) else {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        value = _number(result)
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise QueryError(
                f"the query returned {len(result)} series; aggregate it to one (e.g. sum(...))"
            )
        first = result[0]
        value = _number(first.get("value") if isinstance(first, dict) else None)
    else:
        shown = f"a {kind}" if kind in ("matrix", "string") else "an unknown result type"
        raise QueryError(f"the query returned {shown}, not a single number")
    return None if math.isnan(value) else value


# ----------------------------------------------------------------------------- golden prompts


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


class _OverBudgetError(Exception):
    """Checking an answer took longer than its budget."""


_budget = threading.local()
_validator_classes: dict[type, Any] = {}
_classes_lock = threading.Lock()


def _budgeted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    # Every keyword, at every level, first looks at the clock: a schema and an answer that
    # multiply into hours of work stop at the budget.
    def check(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if time.monotonic() > getattr(_budget, "deadline", math.inf):
            raise _OverBudgetError
        return keyword(validator, value, instance, schema)

    return check


def _search(pattern: str, text: str) -> bool:
    try:
        return compile_pattern(pattern).search(text) is not None
    except PatternError:
        return False


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    from jsonschema import ValidationError

    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError("does not match the pattern")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, allowed: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[Any]:
    from jsonschema import ValidationError

    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        key
        for key in instance
        if key not in properties and not any(_search(p, key) for p in patterns)
    ]
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        yield ValidationError(f"{len(extras)} propert(y/ies) the schema does not allow")


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    # jsonschema compares unhashable items pairwise: quadratic in a large answer.
    from jsonschema import ValidationError

    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[str] = set()
    for item in instance:
        key = json.dumps(_canonical(item), sort_keys=True)
        if key in seen:
            yield ValidationError("has non-unique elements")
            return
        seen.add(key)


_OVERRIDES = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}


def _validator_class(schema: Mapping[str, Any]) -> Any:
    """The schema's dialect with RE2 for patterns, linear uniqueItems and a time budget."""
    import jsonschema

    base = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
    with _classes_lock:
        found = _validator_classes.get(base)
        if found is None:
            keywords = {k: _OVERRIDES.get(k, fn) for k, fn in base.VALIDATORS.items()}
            found = jsonschema.validators.extend(
                base, {k: _budgeted(fn) for k, fn in keywords.items()}
            )
            _validator_classes[base] = found
        return found


def first_violation(schema: Mapping[str, Any], instance: Any, budget: float) -> Any:
    """The most relevant way `instance` breaks `schema` (None: it matches), within `budget`
    seconds. References resolve only within the schema: nothing is fetched."""
    import jsonschema
    import referencing

    validator = _validator_class(schema)(schema, registry=referencing.Registry())
    _budget.deadline = time.monotonic() + budget
    try:
        return jsonschema.exceptions.best_match(validator.iter_errors(instance))
    finally:
        _budget.deadline = math.inf


def describe_violation(error: Any) -> str:
    """Where and how an answer breaks its schema, from the schema's side only (the
    answer's values and keys are never shown)."""
    keyword = str(error.validator)
    where = "/".join(str(p) for p in error.absolute_schema_path)[:200] or "(root)"
    detail = ""
    if keyword == "required" and isinstance(error.instance, dict):
        names = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [n for n in names if isinstance(n, str) and n not in error.instance]
        detail = f": missing {', '.join(n[:64] for n in missing[:5])}" if missing else ""
    elif keyword == "type":
        detail = f": not of type {json.dumps(error.validator_value)[:100]}"
    return f"schema violation at {where} ({keyword}{detail})"


def check_answer(probe: Probe, raw: bytes, budget: float = ANSWER_CHECK_SECONDS) -> str | None:
    """Why an answer breaks the contract (None: it matches the response schema)."""
    import referencing.exceptions

    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return f"the answer ({len(raw)} bytes) is not JSON"
    try:
        part = select(answer, probe.response_field)
    except ValueError as exc:
        return str(exc)
    if probe.parse_json and isinstance(part, str):
        try:
            part = json.loads(part)
        except (ValueError, RecursionError):
            where = probe.response_field or "the answer"
            return f"{where} is not JSON text ({len(part)} characters)"
    try:
        error = first_violation(probe.schema, part, budget)
    except _OverBudgetError:
        return f"checking the answer took over {budget:g}s: simplify responseSchema"
    except RecursionError:
        return "checking the answer recursed too deeply: simplify responseSchema"
    except referencing.exceptions.Unresolvable:
        return "responseSchema has a reference that does not resolve within it"
    return None if error is None else describe_violation(error)


def send_prompt(probe: Probe, prompt: Prompt, guard: Guard, timeout: float) -> str | None:
    """POST one golden prompt; why it failed (None: the answer matched). Raises RefusedError and
    NoAnswerError."""
    assert probe.url is not None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    headers.update(probe.headers)
    try:
        answer = fetch(
            probe.url,
            guard,
            timeout=timeout,
            cap=PROMPT_BYTES,
            method="POST",
            body=json.dumps(prompt.body).encode(),
            headers=headers,
        )
    except AnswerTooLargeError:
        return f"the answer is larger than {_kib(PROMPT_BYTES)}: not read"
    if not 200 <= answer.status < 300:
        return _status(answer.status, len(answer.body))
    return check_answer(probe, answer.body)


def run_probe(probe: Probe, guard: Guard = STRICT) -> Measurement:
    """Send every golden prompt; the value is the fraction whose answers matched."""
    if probe.refused is not None:
        return Measurement(probe.metric, None, error=probe.refused, refused=True)
    if probe.url is None:
        return Measurement(probe.metric, None, error=probe.problem or "no canary URL")
    ends = time.monotonic() + PROBE_SECONDS

    def outcome(prompt: Prompt) -> tuple[str | None, bool, str | None]:
        """(why it failed, whether it got an answer at all, why it was refused)."""
        remaining = ends - time.monotonic()
        if remaining <= 0:
            return f"not sent: the metric's {PROBE_SECONDS:g}s were spent", False, None
        try:
            return send_prompt(probe, prompt, guard, min(probe.timeout, remaining)), True, None
        except RefusedError as exc:
            return None, False, str(exc)
        except NoAnswerError as exc:
            return f"no answer: {exc}", False, None

    with ThreadPoolExecutor(max_workers=min(PROMPTS_AT_ONCE, len(probe.prompts))) as pool:
        outcomes = list(pool.map(outcome, probe.prompts))
    refused = [why for _, _, why in outcomes if why is not None]
    if refused:
        log.info("analysis %s refused: %s", probe.metric, refused[0])
        return Measurement(
            probe.metric, None, error=f"{display(probe.url)}: {refused[0]}", refused=True
        )
    failures = [
        f"golden prompt {prompt.name}: {why}"
        for prompt, (why, _, _) in zip(probe.prompts, outcomes, strict=True)
        if why is not None
    ]
    unanswered = [
        f"{prompt.name}: {why}"
        for prompt, (why, answered, _) in zip(probe.prompts, outcomes, strict=True)
        if not answered
    ]
    if len(unanswered) == len(probe.prompts):
        return Measurement(
            probe.metric, None, error=f"no answer from {display(probe.url)}: {unanswered[0]}"
        )
    total = len(probe.prompts)
    passed = total - len(failures)
    note = f"{passed} of {total} golden prompts passed"
    if failures:
        note += f"; {failures[0]}"
        log.info("analysis %s: %s", probe.metric, "; ".join(failures))
    return Measurement(probe.metric, passed / total, note=note)


# ----------------------------------------------------------------------------- a round


def measure_all(checks: Sequence[Check], guard: Guard = STRICT) -> tuple[Measurement, ...]:
    """A round's checks side by side: a slow one does not delay the others' verdict."""
    if len(checks) <= 1:
        return tuple(measure(c, guard) for c in checks)
    with ThreadPoolExecutor(max_workers=min(CHECKS_AT_ONCE, len(checks))) as pool:
        return tuple(pool.map(lambda c: measure(c, guard), checks))


def measure(check: Check, guard: Guard = STRICT) -> Measurement:
    """Run one metric's check; errors and refusals become part of the measurement."""
    if isinstance(check, Probe):
        return run_probe(check, guard)
    query: Query = check
    if query.refused is not None or query.address is None:
        return Measurement(query.metric, None, error=query.refused or "no address", refused=True)
    try:
        value = query_prometheus(query.address, query.query, query.timeout, guard)
    except RefusedError as exc:
        why = f"Prometheus at {display(query.address)}: {exc}"
        log.info("analysis %s refused: %s", query.metric, why)
        return Measurement(query.metric, None, error=why, refused=True)
    except QueryError as exc:
        log.info("analysis query %s failed: %s", query.metric, exc)
        return Measurement(metric=query.metric, value=None, error=str(exc))
    return Measurement(metric=query.metric, value=value)
