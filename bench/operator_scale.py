"""Operator at scale, side by side with a floor, on the real control plane of the test suite.

For each N: (a) the operator (its own process, the chart's RBAC) takes N FineTuneJobs from
create to a validation Job + status `Validating`, then - once the script has played the
kubelet for every validation pod - to a trainer Job + status `Running`; (b) the floor: a
plain client creating the same FineTuneJobs, child objects and status writes directly, with
as many threads as the operator has workers. Reported: the ratio a/b, create -> first status
latency (p50/p99), API requests per FineTuneJob made by the operator (the API server's audit
log, so the count is exact and only the operator's), the operator's peak RSS, throttling.

    .venv/bin/python bench/operator_scale.py --n 100 500 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))
sys.path.insert(0, str(REPO / "hack"))

from bench_report import write_report  # noqa: E402
from cluster import (  # noqa: E402
    CRD_DIR,
    ISVC_CRD,
    ControlPlane,
    Kube,
    OperatorProcess,
    make_temp_dir,
    operator_argv,
    render_chart_rbac,
    resource_path,
)
from provision import provision  # noqa: E402

API = "whetstone.dev/v1alpha1"
WORKERS = 20  # kopf's settings.execution.max_workers in the operator
SPEC = yaml.safe_load((REPO / "manifests/samples/finetunejob.yaml").read_text())["spec"]
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
"""
REPORT = json.dumps({"examples": 100, "dropped": {}, "redacted": {}})


def ftj(name: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "FineTuneJob", "metadata": {"name": name}, "spec": SPEC}


class Watcher:
    """Records when each FineTuneJob first shows a status phase (watch stream)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.first_status: dict[str, float] = {}
        self.phases: dict[str, str] = {}
        self.kube, self.namespace = kube, namespace
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        path = resource_path(API, "finetunejobs", self.namespace)
        while not self.stop:
            query = urllib.parse.urlencode({"watch": "1", "timeoutSeconds": "30"})
            req = urllib.request.Request(f"{self.kube.server}{path}?{query}")
            req.add_header("Authorization", f"Bearer {self.kube.token}")
            try:
                with urllib.request.urlopen(req, timeout=60, context=self.kube._ssl) as resp:
                    for line in resp:
                        event = json.loads(line)
                        obj = event.get("object", {})
                        name = obj.get("metadata", {}).get("name")
                        phase = (obj.get("status") or {}).get("phase")
                        if name and phase:
                            self.first_status.setdefault(name, time.monotonic())
                            self.phases[name] = phase
                        if self.stop:
                            return
            except OSError:
                time.sleep(0.2)

    def count(self, phase: str) -> int:
        return sum(1 for p in self.phases.values() if p == phase)


def wait(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached in {timeout:.0f}s")
        time.sleep(0.25)
    return time.monotonic()


def audit_counts(log: Path, since: float) -> Counter[str]:
    """Operator requests (verb resource) in the audit log after wall time `since`."""
    counts: Counter[str] = Counter()
    if not log.exists():
        return counts
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        stamp = datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if stamp.timestamp() < since:
            continue
        ref = entry.get("objectRef", {})
        resource = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        code = entry.get("responseStatus", {}).get("code", 0)
        counts[f"{entry['verb']} {resource}"] += 1
        if code == 429:
            counts["throttled"] += 1
    return counts


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_operator(
    plane: ControlPlane, n: int, workdir: Path, first_phase_only: bool = False
) -> dict[str, Any]:
    kube = plane.admin
    ns = f"bench-op-{n}"
    plane.create_namespace(ns)
    rendered = render_chart_rbac(plane.tools.helm, REPO / "charts/whetstone", f"b{n}", ns)
    assert rendered is not None
    docs, account = rendered
    plane.apply(yaml.safe_dump_all(docs))
    config = plane.sa_kubeconfig(ns, account)
    env = {**os.environ, "KUBECONFIG": str(config), "WHETSTONE_RESYNC_SECONDS": "10"}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    op = OperatorProcess(operator_argv(["--namespace", ns]), workdir / f"operator-{n}.log", env)
    try:
        deadline = time.monotonic() + 60
        while "Activity '_startup' succeeded" not in op.logs():
            if time.monotonic() > deadline or not op.alive():
                raise RuntimeError(f"operator did not start:\n{op.process.tail(40)}")
            time.sleep(0.2)
        time.sleep(1.0)
        watcher = Watcher(kube, ns)
        created: dict[str, float] = {}
        wall0, t0 = time.time(), time.monotonic()

        def create(i: int) -> None:
            name = f"job-{i:05d}"
            created[name] = time.monotonic()
            kube.create(resource_path(API, "finetunejobs", ns), ftj(name))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(n)))
        t_created = time.monotonic() - t0
        t_validating = wait(lambda: watcher.count("Validating") >= n, 60 + n, "all Validating") - t0
        jobs = kube.list(resource_path("batch/v1", "jobs", ns))
        assert sum(j["metadata"]["name"].endswith("-validate") for j in jobs) == n
        after_validating = audit_counts(plane.audit_log, wall0)
        if first_phase_only:
            watcher.stop = True
            latencies = sorted(watcher.first_status[k] - created[k] for k in created)
            return {
                "n": n,
                "create_s": round(t_created, 2),
                "to_validating_s": round(t_validating, 2),
                "first_status_p50_s": round(statistics.median(latencies), 3),
                "first_status_p99_s": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 3),
                "requests_per_ftj_to_validating": round(sum(after_validating.values()) / n, 2),
                "request_mix": dict(after_validating.most_common()),
                "operator_peak_rss_mb": round(peak_rss_mb(op.process.pid), 1),
                "throttled": after_validating.get("throttled", 0),
            }

        # Play the kubelet: every validation pod succeeds with a data report.
        t1 = time.monotonic()
        pods = []
        while len(pods) < n:
            pods = kube.list(
                resource_path("v1", "pods", ns), labelSelector="whetstone.dev/role=validator"
            )
            time.sleep(0.5)

        def succeed(pod: dict[str, Any]) -> None:
            name = pod["metadata"]["name"]
            body = kube.get(resource_path("v1", "pods", ns, name))
            body["status"] = {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "validate",
                        "image": "x",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {"exitCode": 0, "reason": "Completed", "message": REPORT}
                        },
                    }
                ],
            }
            kube.replace(resource_path("v1", "pods", ns, name, "status"), body)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(succeed, pods))
        t_running = wait(lambda: watcher.count("Running") >= n, 120 + 2 * n, "all Running") - t1
        total = audit_counts(plane.audit_log, wall0)
        watcher.stop = True
        latencies = sorted(watcher.first_status[k] - created[k] for k in created)
        writes = {k: v for k, v in total.items() if not k.startswith(("get ", "list ", "watch "))}
        return {
            "n": n,
            "create_s": round(t_created, 2),
            "to_validating_s": round(t_validating, 2),
            "validated_to_running_s": round(t_running, 2),
            "first_status_p50_s": round(statistics.median(latencies), 3),
            "first_status_p99_s": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 3),
            "requests_per_ftj_to_validating": round(sum(after_validating.values()) / n, 2),
            "requests_per_ftj_to_running": round(sum(total.values()) / n, 2),
            "writes_per_ftj_to_running": round(sum(writes.values()) / n, 2),
            "request_mix": dict(total.most_common()),
            "operator_peak_rss_mb": round(peak_rss_mb(op.process.pid), 1),
            "throttled": total.get("throttled", 0),
        }
    finally:
        op.stop()


def run_floor(plane: ControlPlane, n: int) -> dict[str, Any]:
    """The same objects and status writes from a plain client, no operator."""
    kube = plane.admin
    ns = f"bench-floor-{n}"
    plane.create_namespace(ns)
    from whetstone_operator.reconcile.core import Obj
    from whetstone_operator.reconcile.finetunejob import Observed, decide_finetunejob

    requests = Counter[str]()

    def one(i: int) -> None:
        name = f"job-{i:05d}"
        obj = kube.create(resource_path(API, "finetunejobs", ns), ftj(name))
        meta = obj["metadata"]
        job = Obj(name, ns, meta["uid"], meta.get("generation"), SPEC, {})
        decision = decide_finetunejob(job, Observed(), datetime.now(UTC))
        for action in decision.actions:
            body = action.body  # type: ignore[union-attr]
            plural = {"ConfigMap": "configmaps", "Job": "jobs"}[body["kind"]]
            kube.create(resource_path(body["apiVersion"], plural, ns), body)
            requests[f"create {plural}"] += 1
        kube.patch(
            resource_path(API, "finetunejobs", ns, name, "status"), {"status": decision.status}
        )
        requests["patch finetunejobs/status"] += 1

    t0 = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(n)))
    return {
        "n": n,
        "to_validating_s": round(time.monotonic() - t0, 2),
        "requests_per_ftj": round(sum(requests.values()) / n, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--json", type=Path, default=REPO / "bench/results/operator_scale.json")
    parser.add_argument(
        "--first-phase-only",
        action="store_true",
        help="stop each size after create -> Validating (for sizes where the rest takes long)",
    )
    args = parser.parse_args()
    workdir = make_temp_dir("whetstone-bench-")
    policy = workdir / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    audit = workdir / "audit.log"
    plane = ControlPlane(
        provision(),
        apiserver_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ],
    )
    plane.audit_log = audit  # type: ignore[attr-defined]
    plane.start([*sorted(CRD_DIR.glob("*.yaml")), ISVC_CRD])
    rows = []
    try:
        for n in args.n:
            floor = run_floor(plane, n)
            op = run_operator(plane, n, workdir, args.first_phase_only)
            op["floor_to_validating_s"] = floor["to_validating_s"]
            op["floor_requests_per_ftj"] = floor["requests_per_ftj"]
            op["ratio"] = round(op["to_validating_s"] / floor["to_validating_s"], 2)
            rows.append(op)
            print(json.dumps(op), flush=True)
    finally:
        plane.stop()
    header = (
        "N",
        "operator s",
        "floor s",
        "ratio",
        "p50 s",
        "p99 s",
        "req/FTJ->Validating",
        "req/FTJ->Running",
        "writes/FTJ",
        "peak RSS MB",
        "429s",
    )
    print("\n" + " | ".join(header))
    for r in rows:
        print(
            " | ".join(
                str(x)
                for x in (
                    r["n"],
                    r["to_validating_s"],
                    r["floor_to_validating_s"],
                    r["ratio"],
                    r["first_status_p50_s"],
                    r["first_status_p99_s"],
                    r["requests_per_ftj_to_validating"],
                    r.get("requests_per_ftj_to_running", "-"),
                    r.get("writes_per_ftj_to_running", "-"),
                    r["operator_peak_rss_mb"],
                    r["throttled"],
                )
            )
        )
    write_report(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
