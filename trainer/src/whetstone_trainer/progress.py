"""Progress reporting while training: an HTTP endpoint, a JSON file and a terminal bar.

The operator polls GET /progress (the `Progress` model as JSON) and may read GET
/checkpoints (a list of `CheckpointInfo`: the complete checkpoints kept at the output,
oldest first). The progress JSON is also written to a file, so a person or a sidecar can
read it without the network. Only rank 0 reports; the server is the standard library's,
in a daemon thread.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from whetstone_contract.result import CheckpointInfo, Progress

TERMINATION_LOG_ENV = "WHETSTONE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")


class ProgressReporter:
    """Holds the latest Progress; serves it over HTTP and mirrors it to a file."""

    def __init__(self, file: Path | None = None, *, file_interval_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._progress = Progress()
        self._file = file
        self._file_interval_s = file_interval_s
        self._last_file_write = 0.0
        self._server: _ProgressServer | None = None
        self._started = time.monotonic()
        self._tokens = 0
        self._tokens_at_start: int | None = None
        self._checkpoints: list[CheckpointInfo] = []

    @property
    def progress(self) -> Progress:
        with self._lock:
            return self._progress.model_copy()

    @property
    def checkpoints(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._checkpoints)

    def set_checkpoints(self, checkpoints: list[CheckpointInfo]) -> None:
        """The complete checkpoints kept at the output (served on /checkpoints)."""
        with self._lock:
            self._checkpoints = list(checkpoints)

    def count_tokens(self, n: int) -> None:
        """Tokens consumed by training (for tokens per second)."""
        with self._lock:
            self._tokens += n

    def update(self, *, force_file: bool = False, **fields: Any) -> Progress:
        with self._lock:
            data = self._progress.model_dump() | dict(fields)
            step, total = data["step"], data["total_steps"]
            if total:
                data["percent"] = max(0, min(100, int(100 * step / total)))
            self._progress = Progress.model_validate(data)
            snapshot = self._progress.model_copy()
        now = time.monotonic()
        if self._file is not None and (
            force_file or now - self._last_file_write >= self._file_interval_s
        ):
            self._last_file_write = now
            write_json_atomic(self._file, snapshot.wire())
        return snapshot

    def mark_start(self, step: int) -> None:
        """Training (re)starts at `step`: throughput and ETA count from here."""
        with self._lock:
            self._started = time.monotonic()
            self._tokens_at_start = self._tokens
            self._start_step = step

    def timing(self, step: int, total: int) -> dict[str, Any]:
        """tokensPerSecond and eta from the steps and tokens since mark_start."""
        elapsed = max(1e-6, time.monotonic() - self._started)
        done = step - getattr(self, "_start_step", 0)
        out: dict[str, Any] = {}
        with self._lock:
            tokens = self._tokens - (self._tokens_at_start or 0)
        if tokens:
            out["tokens_per_second"] = round(tokens / elapsed, 1)
        if done > 0 and total > step:
            remaining = elapsed / done * (total - step)
            eta = datetime.now(UTC) + timedelta(seconds=remaining)
            out["eta"] = eta.replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return out

    def serve(self, port: int, host: str = "0.0.0.0") -> int:  # nosec B104 # the operator reads it over the pod IP
        """Serve GET /progress (and /healthz) on host:port; returns the bound port."""
        self._server = _ProgressServer((host, port), self)
        thread = threading.Thread(
            target=self._server.serve_forever, name="progress-http", daemon=True
        )
        thread.start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _ProgressHandler(BaseHTTPRequestHandler):
    """GET /progress, /checkpoints and /healthz of the server's reporter."""

    def do_GET(self) -> None:
        assert isinstance(self.server, _ProgressServer)
        reporter = self.server.reporter
        if self.path.split("?")[0] in ("/progress", "/"):
            body = json.dumps(reporter.progress.wire()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        elif self.path.split("?")[0] == "/checkpoints":
            body = json.dumps([c.wire() for c in reporter.checkpoints]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        elif self.path == "/healthz":
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
        else:
            body = b"not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the operator polls often; access logs would drown the training log


class _ProgressServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], reporter: ProgressReporter) -> None:
        super().__init__(address, _ProgressHandler)
        self.reporter = reporter


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=None, sort_keys=True) + "\n")
    tmp.replace(path)


def termination_log_path() -> Path | None:
    """Where the container's termination message goes: $WHETSTONE_TERMINATION_LOG, else
    /dev/termination-log when the kubelet provided it (an existing, writable file)."""
    configured = os.environ.get(TERMINATION_LOG_ENV)
    if configured:
        return Path(configured)
    if DEFAULT_TERMINATION_LOG.is_file() and os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
        return DEFAULT_TERMINATION_LOG
    return None


def write_termination_message(text: str) -> Path | None:
    """Write the (already < 4 KB) termination message; returns where it went, if anywhere."""
    path = termination_log_path()
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        return None
    return path
