"""Rollout control overhead on the real control plane, with a real Prometheus.

(1) Per step: a healthy canary 5 -> 25 -> 50 -> 100 with pauses of `--pause` seconds; the
time between consecutive weight changes that KServe sees, minus the configured pause and
the (simulated) revision start-up, is what the operator adds. (2) Rollback: at 25% the
canary's error rate jumps; the time from the jump until KServe sees canaryTrafficPercent 0,
against the target of one analysis interval + 2 s (Prometheus needs a scrape or two to see
the jump; both figures are reported). Run for each resync interval given.

    .venv/bin/python bench/rollout_overhead.py --resync 1 10   # WHETSTONE_ROLLOUT_RESYNC_SECONDS
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO))

from prometheus import find_or_install  # noqa: E402

from bench_report import write_report  # noqa: E402
from cluster import (  # noqa: E402
    APPROVAL_KEY,
    CRD_DIR,
    ISVC_CRD,
    ControlPlane,
    Kube,
    OperatorProcess,
    chart_rbac_applied,
    make_temp_dir,
    operator_argv,
)
from provision import provision  # noqa: E402
from tenancy import platform_policy  # noqa: E402
from test_rollout import (  # noqa: E402
    ERROR_RATE,
    MAIN,
    FakeKServe,
    analysis_rules,
    prometheus_running,
    ro_path,
    rollout_body,
    rollout_status,
    serving_v1,
)

KSERVE_READY_DELAY = 0.3


@contextlib.contextmanager
def prepared(
    plane: ControlPlane, prom: Any, ns: str, resync: float, log: Path
) -> Iterator[tuple[Kube, FakeKServe, OperatorProcess]]:
    """A namespace with an InferenceService on v1 (KServe played by FakeKServe, healthy
    metrics), v1 and v2 approved, and the operator running under the chart's RBAC."""
    plane.create_namespace(ns)
    for rev in ("grader-predictor-00001", "grader-predictor-00002"):
        prom.exporter.set(ns, rev, ok=20, errors=0)
    with (
        # The platform names the bench's Prometheus `main` for this namespace.
        platform_policy(plane.admin, ns, {"analysis": analysis_rules(prom)}, prefix="bench"),
        serving_v1(plane.admin, ns, ready_delay=KSERVE_READY_DELAY) as fake,
        chart_rbac_applied(plane, f"rb-{ns[-4:]}", ns) as (_, config),
    ):
        env = {
            **os.environ,
            "KUBECONFIG": str(config),
            "WHETSTONE_ROLLOUT_RESYNC_SECONDS": str(resync),
            # The key the fixtures sign v1's and v2's records with.
            "WHETSTONE_APPROVAL_KEY": APPROVAL_KEY,
            # The bench's Prometheus listens on loopback, as on a test cluster.
            "WHETSTONE_ALLOW_LOOPBACK_TARGETS": "true",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        op = OperatorProcess(operator_argv(["--namespace", ns]), log, env)
        try:
            wait(lambda: "Activity '_startup' succeeded" in op.logs(), 60, "operator start")
            yield plane.admin, fake, op
        finally:
            op.stop()


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def healthy_run(
    plane: ControlPlane, prom: Any, resync: float, pause: float, log: Path
) -> dict[str, Any]:
    ns = f"bench-ro-h{int(resync)}"
    with prepared(plane, prom, ns, resync, log) as (kube, fake, op):
        steps: list[dict[str, Any]] = []
        for weight in (5, 25, 50):
            steps += [{"setWeight": weight}, {"pause": {"duration": f"{pause:g}s"}}]
        steps.append({"setWeight": 100})
        query = ERROR_RATE
        kube.create(ro_path(ns), rollout_body("grader", "grader-v2", steps, MAIN, query))
        try:
            wait(lambda: rollout_status(kube, ns).get("phase") == "Succeeded", 120, "Succeeded")
        except TimeoutError:
            raise RuntimeError(
                f"rollout did not finish: {rollout_status(kube, ns)}\n{op.process.tail(30)}"
            ) from None
        changes = []
        last = object()
        for stamp, percent, _ in fake.history:
            if percent != last:
                changes.append((stamp, percent))
                last = percent
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(changes)]
        # Between weight changes: one pause, plus KServe's revision start-up on the first
        # (the canary's revision is created once; later weights only move traffic).
        weight_gaps = gaps[1:4]
        overheads = [
            g - pause - (KSERVE_READY_DELAY if i == 0 else 0.0) for i, g in enumerate(weight_gaps)
        ]
        return {
            "resync_s": resync,
            "pause_s": pause,
            "weights_seen": [p for _, p in changes],
            "step_gaps_s": [round(g, 3) for g in weight_gaps],
            "overhead_per_step_median_s": round(statistics.median(overheads), 3),
            "overhead_per_step_max_s": round(max(overheads), 3),
        }


def failing_run(plane: ControlPlane, prom: Any, resync: float, log: Path) -> dict[str, Any]:
    ns = f"bench-ro-f{int(resync)}"
    with prepared(plane, prom, ns, resync, log) as (kube, fake, _):
        steps = [
            {"setWeight": 5},
            {"pause": {"duration": "2s"}},
            {"setWeight": 25},
            {"pause": {}},
            {"setWeight": 100},
        ]
        kube.create(ro_path(ns), rollout_body("grader", "grader-v2", steps, MAIN, ERROR_RATE))
        wait(lambda: 25 in fake.percents(), 120, "weight 25")
        time.sleep(3)  # a few healthy rounds at 25%
        jump = time.monotonic()
        prom.exporter.set(ns, "grader-predictor-00002", ok=10, errors=10)
        visible: list[float] = []

        def seen_by_prometheus() -> bool:
            value = prom.value(
                ERROR_RATE.replace("{{namespace}}", ns).replace(
                    "{{canary}}", "grader-predictor-00002"
                )
            )
            if value is not None and value > 0.05 and not visible:
                visible.append(time.monotonic())
            return bool(visible)

        wait(lambda: seen_by_prometheus() or fake.percents()[-1] == 0, 60, "jump visible")
        wait(lambda: fake.percents()[-1] == 0, 60, "canary at 0%")
        zero = next(s for s, p, _ in reversed(fake.history) if p == 0)
        return {
            "resync_s": resync,
            "interval_s": 1.0,
            "jump_to_canary_0_s": round(zero - jump, 3),
            "visible_in_prometheus_to_canary_0_s": round(zero - visible[0], 3) if visible else None,
            "target_s": 1.0 + 2.0,
            "phase": rollout_status(kube, ns).get("phase"),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--resync", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--pause", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/rollout_overhead.json")
    args = parser.parse_args()
    workdir = make_temp_dir("whetstone-bench-ro-")
    plane = ControlPlane(provision())
    plane.start([*sorted(CRD_DIR.glob("*.yaml")), ISVC_CRD])
    rows = []
    try:
        with prometheus_running(find_or_install()) as prom:
            for resync in args.resync:
                healthy = healthy_run(plane, prom, resync, args.pause, workdir / f"h{resync}.log")
                failing = failing_run(plane, prom, resync, workdir / f"f{resync}.log")
                rows.append({"healthy": healthy, "failing": failing})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        plane.stop()
    print(
        "\nresync s | step overhead median / max s | failing metric -> canary 0% s "
        "(from Prometheus seeing it) | target s"
    )
    for r in rows:
        h, f = r["healthy"], r["failing"]
        overhead = f"{h['overhead_per_step_median_s']} / {h['overhead_per_step_max_s']}"
        print(
            f"{h['resync_s']:g} | {overhead}"
            f" | {f['jump_to_canary_0_s']} ({f['visible_in_prometheus_to_canary_0_s']}) | "
            f"{f['target_s']}"
        )
    write_report(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
