"""What a tenant cannot make the operator wait on: the trainer's progress endpoint (served by a
tenant-chosen image) costs at most its deadline and byte cap, and a stopping operator exits
within its grace period whatever its handler threads are doing."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from whetstone_operator import observe

from tests.loopback import LoopbackServer, QuietHandler


class Trickle(QuietHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(1000):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)


class Endless(QuietHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        chunk = b" " * 65536
        try:
            for _ in range(1000):
                self.wfile.write(chunk)
        except OSError:
            return


class Fine(QuietHandler):
    def do_GET(self) -> None:
        self.reply(200, {"step": 3})


@pytest.mark.parametrize(
    ("handler", "error"),
    [(Trickle, TimeoutError), (Endless, ValueError)],
    ids=["a trickling answer stops at the deadline", "an endless answer stops at the cap"],
)
def test_a_hostile_progress_answer_is_cut_short(handler: Any, error: type[Exception]) -> None:
    with LoopbackServer(handler) as server:
        started = time.monotonic()
        with pytest.raises(error):
            observe._get_json(server.url + "/progress", timeout=1.0)
        # Bounded by the deadline plus one read's timeout, not by the server (Trickle would
        # take 200 s).
        assert time.monotonic() - started < 10


def test_an_honest_answer_is_read() -> None:
    with LoopbackServer(Fine) as server:
        assert observe._get_json(server.url + "/progress", timeout=1.0) == {"step": 3}


def test_a_stopping_operator_exits_within_its_grace_period_whatever_runs() -> None:
    from whetstone_operator.__main__ import start_stop_watchdog

    exited: list[int] = []
    stuck = threading.Event()  # a handler thread that never returns
    threading.Thread(target=stuck.wait, daemon=True).start()
    timer = start_stop_watchdog(0.2, exited.append)
    timer.join(5)
    assert exited == [1]
