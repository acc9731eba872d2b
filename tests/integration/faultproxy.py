"""A fault-injecting HTTPS proxy on loopback, in front of the real API server.

Clients speak TLS to the proxy (its own self-signed certificate, which goes into their
kubeconfig as the CA); the proxy forwards each request to the API server, passing the
client's bearer token through. At a set rate, drawn from a seeded RNG, it answers instead:

- ``conflict``: 409 Conflict for a write with a resourceVersion precondition (not applied),
  or 409 AlreadyExists for a create that *was* applied (a lost answer followed by a retry);
- ``throttle``: 429 TooManyRequests with ``Retry-After``;
- ``error``: 500 InternalError (not applied);
- ``lost``: 500 after the write was applied (the client cannot know it happened);
- ``slow``: the answer comes after a delay;
- ``watch-cut``: a watch stream is closed mid-way (abruptly or with a clean end).

Every fault is counted, and so is the next request for the same target after a failed one
(all but ``slow``): that is the client retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass(frozen=True)
class FaultPlan:
    """How often and how the proxy misbehaves."""

    seed: int = 0
    rate: float = 0.1
    watch_cut_rate: float = 0.6
    watch_cut_after: tuple[float, float] = (0.5, 6.0)
    slow_delay: tuple[float, float] = (0.3, 2.0)
    retry_after: int = 1


@dataclass
class FaultStats:
    """What the proxy saw and did."""

    requests: int = 0
    watches: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    retried: Counter[str] = field(default_factory=Counter)
    by_target: Counter[str] = field(default_factory=Counter)
    upstream_status: Counter[int] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    @property
    def total_retried(self) -> int:
        return sum(self.retried.values())

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return self._summary()

    def _summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "watches": self.watches,
            "injected": dict(self.injected),
            "retried": dict(self.retried),
            "upstreamStatus": {str(k): v for k, v in sorted(self.upstream_status.items())},
            "injectedTotal": self.total_injected,
            "retriedTotal": self.total_retried,
        }


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return json.dumps(body).encode()


def _object_name(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(body).get("metadata", {}).get("name") or "")
    return ""


def _has_precondition(method: str, body: bytes) -> bool:
    """A write that the API server checks against a resourceVersion (so a 409 is possible)."""
    if method == "PUT":
        return True
    if method != "PATCH":
        return False
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        meta = json.loads(body).get("metadata") or {}
        return bool(meta.get("resourceVersion"))
    return False


class FaultProxy:
    """The proxy, serving on a free loopback port from a thread of its own."""

    def __init__(
        self, upstream: str, upstream_ca: Path, cert: Path, key: Path, plan: FaultPlan
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan
        self.stats = FaultStats()
        self.enabled = True
        self._rng = random.Random(plan.seed)
        self._rng_lock = threading.Lock()
        self._pending: dict[tuple[str, str], str] = {}
        self._client_ssl = ssl.create_default_context(cafile=str(upstream_ca))
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ssl.load_cert_chain(str(cert), str(key))
        self.cert = cert
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _start(self) -> None:
        self._session = ClientSession(
            connector=TCPConnector(ssl=self._client_ssl, limit=0),
            timeout=ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._server_ssl)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ decisions

    def _draw(self, method: str, is_watch: bool, precondition: bool) -> tuple[str | None, float]:
        """(fault kind or None, a parameter: delay or cut time)."""
        plan = self.plan
        with self._rng_lock:
            if is_watch:
                if self._rng.random() < plan.watch_cut_rate:
                    return "watch-cut", self._rng.uniform(*plan.watch_cut_after)
                return None, 0.0
            if self._rng.random() >= plan.rate:
                return None, 0.0
            kinds = ["throttle", "error", "slow"]
            if method == "POST":
                kinds += ["conflict", "lost"]
            elif precondition:
                kinds.append("conflict")
            elif method == "DELETE":
                kinds.append("lost")
            kind = self._rng.choice(kinds)
            return kind, self._rng.uniform(*plan.slow_delay)

    def _note(self, key: tuple[str, str], fault: str | None) -> None:
        """Count the fault, and a retry when this target had one pending."""
        with self.stats.lock:
            previous = self._pending.pop(key, None)
            if previous is not None:
                self.stats.retried[previous] += 1
            if fault is not None:
                self.stats.injected[fault] += 1
                if fault != "slow":  # a slow answer is still an answer: nothing to retry
                    self._pending[key] = fault

    # ------------------------------------------------------------------ handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        method = request.method
        is_watch = request.query.get("watch") in ("true", "1")
        name = _object_name(body) if method == "POST" else ""
        key = ("WATCH" if is_watch else method, request.path + (f"#{name}" if name else ""))
        fault, param = (None, 0.0)
        if self.enabled and request.path not in ("/healthz", "/readyz", "/livez"):
            fault, param = self._draw(method, is_watch, _has_precondition(method, body))
        self._note(key, fault)
        with self.stats.lock:
            self.stats.requests += 1
            self.stats.watches += int(is_watch)
            if fault is not None:
                self.stats.by_target[f"{fault} {method} {request.path}"] += 1

        if fault == "throttle":
            return web.Response(
                status=429,
                body=_status(
                    429,
                    "TooManyRequests",
                    "the server has received too many requests and has asked us to try again "
                    "later (injected)",
                    {"retryAfterSeconds": self.plan.retry_after},
                ),
                headers={"Retry-After": str(self.plan.retry_after)},
                content_type="application/json",
            )
        if fault == "error":
            return web.Response(
                status=500,
                body=_status(500, "InternalError", "an error on the server (injected)"),
                content_type="application/json",
            )
        if fault == "conflict" and method != "POST":
            return web.Response(
                status=409,
                body=_status(
                    409,
                    "Conflict",
                    "Operation cannot be fulfilled: the object has been modified; please apply "
                    "your changes to the latest version and try again (injected)",
                ),
                content_type="application/json",
            )
        if fault == "slow":
            await asyncio.sleep(param)

        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        assert self._session is not None
        url = self.upstream + request.path_qs
        try:
            # A body without Content-Type stays without one (the API server reads it as JSON);
            # aiohttp would otherwise label it application/octet-stream.
            upstream = await self._session.request(
                method,
                url,
                data=body if body else None,
                headers=headers,
                skip_auto_headers=("Content-Type",),
            )
        except OSError as exc:
            return web.Response(
                status=502,
                body=_status(502, "BadGateway", f"upstream unreachable: {exc}"),
                content_type="application/json",
            )
        try:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            if is_watch and upstream.status == 200:
                return await self._stream(request, upstream, out_headers, fault, param)
            data = await upstream.read()
        finally:
            if not is_watch:
                upstream.release()
        with self.stats.lock:
            self.stats.upstream_status[upstream.status] += 1
            if upstream.status >= 400 and upstream.status not in (404, 409):
                self.stats.refused.append(
                    f"{method} {request.path_qs} {request.headers.get('Content-Type')} "
                    f"-> {upstream.status} {data[:300]!r}"
                )
        if fault == "conflict" and 200 <= upstream.status < 300:
            return web.Response(
                status=409,
                body=_status(
                    409,
                    "AlreadyExists",
                    f'"{name}" already exists (injected after the create was applied)',
                    {"name": name},
                ),
                content_type="application/json",
            )
        if fault == "lost" and 200 <= upstream.status < 300:
            return web.Response(
                status=500,
                body=_status(
                    500, "InternalError", "the answer was lost (injected after the write applied)"
                ),
                content_type="application/json",
            )
        return web.Response(status=upstream.status, body=data, headers=out_headers)

    async def _stream(
        self,
        request: web.Request,
        upstream: Any,
        headers: dict[str, str],
        fault: str | None,
        cut_after: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        deadline = time.monotonic() + cut_after if fault == "watch-cut" else None
        abrupt = fault == "watch-cut" and self._coin()
        try:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    chunk = await asyncio.wait_for(upstream.content.readany(), timeout)
                except TimeoutError:
                    break
                if not chunk:
                    break
                await response.write(chunk)
        except (ConnectionError, asyncio.CancelledError):
            upstream.close()
            raise
        finally:
            upstream.close()
        if abrupt and request.transport is not None:
            # No terminating chunk: the client sees the connection drop mid-stream.
            request.transport.close()
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    def _coin(self) -> bool:
        with self._rng_lock:
            return self._rng.random() < 0.5
