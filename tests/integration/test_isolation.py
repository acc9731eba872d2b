"""One tenant's hostile analysis targets cost that tenant, not the others: while a Rollout in one
namespace queries an endpoint that trickles, one that streams a gigabyte and golden prompts
answered to a catastrophic pattern, another namespace's FineTuneJobs reach `Validating` as fast
as on a quiet operator (within 2x), and the operator's memory stays under its chart limit."""

from __future__ import annotations

import contextlib
import copy
import json
import secrets
import statistics
import time
from typing import Any

import pytest
import yaml

from cluster import (
    ControlPlane,
    Kube,
    OperatorFactory,
    chart_rbac_applied,
    resource_path,
    wait_for,
)
from tenancy import platform_policy
from test_rollout import ro_path, rollout_body, serving_v1
from tests.conftest import REPO_ROOT
from tests.loopback import LoopbackServer, QuietHandler

pytestmark = pytest.mark.integration

API = "whetstone.dev/v1alpha1"
FTJ = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())
MEMORY_LIMIT = 512 * 2**20  # the chart's default limit
GIGABYTE = 2**30


class Hostile:
    """A tenant's server: /trickle answers a byte a second, /stream a gigabyte as fast as it
    goes, /rev/<revision>/... (the canary's tag-routed URL) a golden-prompt answer made for
    catastrophic backtracking."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {"trickle": 0, "stream": 0, "prompt": 0}
        self.server = LoopbackServer(self._handler())
        self.url = self.server.url

    def tag_url(self, revision: str) -> str:
        return f"{self.url}/rev/{revision}"

    def _handler(self) -> type[QuietHandler]:
        hostile = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/trickle"):
                    hostile.hits["trickle"] += 1
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    with contextlib.suppress(OSError):
                        for _ in range(600):
                            self.wfile.write(b"{")
                            self.wfile.flush()
                            time.sleep(1)
                    return
                hostile.hits["stream"] += 1
                self.send_response(200)
                self.end_headers()
                chunk = b"[" * 2**20
                with contextlib.suppress(OSError):
                    for _ in range(GIGABYTE // len(chunk)):
                        self.wfile.write(chunk)

            def do_POST(self) -> None:
                self.read_json()
                hostile.hits["prompt"] += 1
                # The field holds JSON text: a string the schema's pattern must match.
                content = json.dumps("a" * 37 + "!")
                self.reply(200, {"choices": [{"message": {"content": content}}]})

        return Handler

    def close(self) -> None:
        self.server.close()


def time_to_validating(kube: Kube, namespace: str, name: str) -> float:
    body = copy.deepcopy(FTJ)
    body["metadata"] = {"name": name}
    started = time.monotonic()
    kube.create(resource_path(API, "finetunejobs", namespace), body)

    def validating() -> bool:
        obj = kube.get(resource_path(API, "finetunejobs", namespace, name))
        return (obj.get("status") or {}).get("phase") == "Validating"

    wait_for(validating, timeout=60, interval=0.05, what=f"{name} Validating")
    return time.monotonic() - started


def hostile_rollout(hostile: Hostile) -> dict[str, Any]:
    body = rollout_body(
        "grader",
        "grader-v2",
        [{"setWeight": 5}, {"pause": {}}, {"setWeight": 100}],
        {"address": f"{hostile.url}/trickle"},
        "up",
    )
    analysis = body["spec"]["strategy"]["canary"]["analysis"]
    analysis["failureLimit"] = 1000
    analysis["inconclusiveLimit"] = 1000
    metric = analysis["metrics"][0]
    metric["prometheus"]["timeout"] = "20s"
    analysis["metrics"] += [
        {
            "name": "stream",
            "prometheus": {"address": f"{hostile.url}/stream", "query": "up", "timeout": "60s"},
            "thresholdRange": {"max": 1},
        },
        {
            "name": "pattern",
            "http": {
                "prompts": [
                    {"name": "p", "body": {"messages": [{"role": "user", "content": "x"}]}}
                ],
                "responseField": "choices.0.message.content",
                "responseSchema": {"type": "string", "pattern": "^(a+)+$"},
                "timeout": "60s",
            },
            "thresholdRange": {"min": 1},
        },
    ]
    return body


def test_a_hostile_rollout_does_not_slow_another_tenant(
    control_plane: ControlPlane, kube: Kube, operator_process: OperatorFactory
) -> None:
    attacker, victim = (f"iso-{who}-{secrets.token_hex(3)}" for who in ("a", "b"))
    for ns in (attacker, victim):
        control_plane.create_namespace(ns)
    hostile = Hostile()
    analysis = {"allowAddresses": [hostile.url], "goldenPromptHosts": []}
    try:
        with (
            chart_rbac_applied(control_plane, f"iso-{attacker[-6:]}", attacker) as (_, config),
            platform_policy(kube, attacker, {"analysis": analysis}, prefix="iso"),
        ):
            op = operator_process(
                config,
                args=["--namespace", attacker, "--namespace", victim],
                env={"WHETSTONE_ALLOW_LOOPBACK_TARGETS": "true"},
            )
            op.wait_for_log(r"Activity '_startup' succeeded")
            time_to_validating(kube, victim, "warm-up")
            quiet = [time_to_validating(kube, victim, f"quiet-{i}") for i in range(3)]

            with serving_v1(kube, attacker, tag_url=hostile.tag_url):
                kube.create(ro_path(attacker), hostile_rollout(hostile))
                wait_for(
                    lambda: all(hostile.hits.values()), timeout=60, what="every attack running"
                )
                loaded = [time_to_validating(kube, victim, f"loaded-{i}") for i in range(3)]

                def judged() -> dict[str, Any] | None:
                    status = kube.get(ro_path(attacker, "grader")).get("status") or {}
                    done = (status.get("analysis") or {}).get("lastResults")
                    return status if done else None

                # The trickle holds its round to its 20 s deadline, no longer.
                status = wait_for(judged, timeout=60, what="a judged analysis round")
                peak = op.process.rss_bytes(peak=True)
                assert op.alive()
    finally:
        hostile.close()
        for ns in (attacker, victim):
            with contextlib.suppress(Exception):
                control_plane.delete_namespace(ns)

    quiet_s, loaded_s = statistics.median(quiet), statistics.median(loaded)
    print(
        f"\nisolation figures: quiet {quiet_s:.2f}s, under attack {loaded_s:.2f}s "
        f"(medians of 3), operator peak RSS {peak / 2**20:.0f} MiB, hits {hostile.hits}"
    )
    # The attacks really ran and were judged: the pattern answered, nothing echoed back.
    results = {r["metric"]: r for r in (status.get("analysis") or {}).get("lastResults") or []}
    assert set(results) == {"error-rate", "stream", "pattern"}, results
    assert not any(r.get("passed") for r in results.values()), results
    assert "pattern" in results["pattern"]["message"], results
    assert all("aaaa" not in (r.get("message") or "") for r in results.values()), results
    assert loaded_s <= 2 * max(quiet_s, 0.25), (quiet, loaded)
    assert peak < MEMORY_LIMIT, peak
