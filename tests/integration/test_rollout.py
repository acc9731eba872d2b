"""Rollouts against the real control plane: the operator runs as a subprocess under the chart's
RBAC, the test plays the KServe controller, and the analysis queries a real Prometheus that
scrapes a small exporter whose request counters the test controls. Prometheus listens on
127.0.0.1, so the operator runs with --allow-loopback-targets (as on a test cluster) and each
test's namespace is governed by a PlatformPolicy that names it `main`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from prometheus import find_or_install  # hack/, put on sys.path by cluster

from whetstone_operator import analysis
from whetstone_operator.api.names import ROLLOUT_TARGET_ANNOTATION

from cluster import (
    ApiError,
    ControlPlane,
    KServe,
    Kube,
    Kubelet,
    ManagedProcess,
    OperatorFactory,
    OperatorProcess,
    chart_rbac_applied,
    free_port,
    make_temp_dir,
    now_rfc3339,
    remove_temp_dir,
    resource_path,
    wait_for,
)
from signed import sign_model_version
from tenancy import platform_policy, policy_path
from tests.loopback import LoopbackServer, QuietHandler

pytestmark = pytest.mark.integration

API = "whetstone.dev/v1alpha1"
ISVC_API = "serving.kserve.io/v1beta1"
DIGEST = "sha256:" + "ab" * 32
V1_URI = "s3://models/grader/v1/"
V2_URI = "s3://models/grader/v2/"
# Prometheus and the test's model servers listen on loopback: a test cluster's option.
OPERATOR_ENV = {"WHETSTONE_RESYNC_SECONDS": "1", "WHETSTONE_ALLOW_LOOPBACK_TARGETS": "true"}
LOOPBACK = analysis.Guard(allow_loopback=True)
MAIN = {"endpoint": "main"}
ERROR_RATE = (
    'sum(rate(model_requests_total{{namespace="{{{{namespace}}}}",revision="{{{{canary}}}}",'
    'code=~"5.."}}[{w}])) / sum(rate(model_requests_total{{namespace="{{{{namespace}}}}",'
    'revision="{{{{canary}}}}"}}[{w}]))'
).format(w="4s")


# --------------------------------------------------------------------------- exporter


class Exporter:
    """Request counters per (namespace, revision, code) that grow at rates the test sets."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (namespace, revision, code) -> (count at `since`, rate per second, since)
        self._series: dict[tuple[str, str, str], tuple[float, float, float]] = {}
        self.server = LoopbackServer(self._handler())
        self.port = self.server.port

    def set(self, namespace: str, revision: str, *, ok: float, errors: float) -> None:
        now = time.monotonic()
        with self._lock:
            for code, rate in (("200", ok), ("500", errors)):
                key = (namespace, revision, code)
                count, old, since = self._series.get(key, (0.0, 0.0, now))
                self._series[key] = (count + old * (now - since), rate, now)

    def render(self) -> str:
        now = time.monotonic()
        lines = ["# TYPE model_requests_total counter"]
        with self._lock:
            for (ns, rev, code), (count, rate, since) in sorted(self._series.items()):
                value = count + rate * (now - since)
                lines.append(
                    f'model_requests_total{{namespace="{ns}",revision="{rev}",code="{code}"}} '
                    f"{value:.3f}"
                )
        return "\n".join(lines) + "\n"

    def _handler(self) -> type[QuietHandler]:
        exporter = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.reply(200, exporter.render(), "text/plain; version=0.0.4")

        return Handler

    def close(self) -> None:
        self.server.close()


@dataclass
class Prometheus:
    url: str
    exporter: Exporter
    started_s: float

    def value(self, query: str) -> float | None:
        try:
            return analysis.query_prometheus(self.url, query, 5.0, LOOPBACK)
        except analysis.QueryError:
            return None


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Prometheus]:
    """Debian's Prometheus on a free loopback port, scraping the exporter every second."""
    try:
        binary = find_or_install()
    except Exception as exc:
        pytest.fail(f"no Prometheus: {exc}", pytrace=False)
    with prometheus_running(binary) as prom:
        yield prom


@contextlib.contextmanager
def prometheus_running(binary: str | os.PathLike[str]) -> Iterator[Prometheus]:
    """Prometheus (`binary`) on a free loopback port scraping a fresh Exporter every second."""
    started = time.monotonic()
    exporter = Exporter()
    workdir = make_temp_dir("whetstone-prom-")
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "model-server",
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }
                ],
            }
        )
    )
    proc = ManagedProcess(
        "prometheus",
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        workdir / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"prometheus exited:\n{proc.tail()}")
            try:
                return analysis.query_prometheus(url, "up", 2.0, LOOPBACK) == 1.0
            except analysis.QueryError:
                return False

        wait_for(ready, timeout=60, what="Prometheus scraping the exporter")
        yield Prometheus(url, exporter, time.monotonic() - started)
    finally:
        proc.stop()
        exporter.close()
        remove_temp_dir(workdir)


# --------------------------------------------------------------------------- KServe


@dataclass
class VerifyPods:
    """Plays the kubelet for the verify pods of one namespace: each one (a ModelVersion's, or
    a Rollout's check before its first traffic) finds the files matching the digest it was
    asked about, unless its artifact URI is in `changed` (the files differ in storage)."""

    kube: Kube
    namespace: str
    changed: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> VerifyPods:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        kubelet = Kubelet(self.kube)
        while not self._stop.is_set():
            with contextlib.suppress(ApiError, OSError):
                for pod in kubelet.pods(self.namespace, "app.kubernetes.io/component=verifier"):
                    name = pod["metadata"]["name"]
                    if name in self.finished:
                        continue
                    args = pod["spec"]["containers"][0]["args"]  # verify URI --digest D
                    uri, digest = args[1], args[-1]
                    found = "sha256:" + "0" * 64 if uri in self.changed else digest
                    message = json.dumps({"ok": found == digest, "digest": found})
                    kubelet.succeed(self.namespace, name, message=message)
                    self.finished.add(name)
            self._stop.wait(0.2)


@dataclass
class FakeKServe:
    """Plays the KServe controller for one InferenceService: a new storage makes a new
    revision, canaryTrafficPercent splits traffic with the last rolled-out one."""

    kube: Kube
    namespace: str
    name: str
    ready_delay: float = 0.3
    revisions: list[tuple[str, Any]] = field(default_factory=list)
    rolled_out: str | None = None
    history: list[tuple[float, int | None, str | None]] = field(default_factory=list)
    on_change: Callable[[int | None, str | None], None] | None = None
    # With tag routing (serving.kserve.io/enable-tag-routing), each traffic entry's URL.
    tag_url: Callable[[str], str] | None = None
    # Storage URIs whose revision never gets ready (e.g. an image that cannot be pulled).
    never_ready: set[str] = field(default_factory=set)
    _seen: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return resource_path(ISVC_API, "inferenceservices", self.namespace, self.name)

    def start(self) -> FakeKServe:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiError, OSError):
                obj = self.kube.get(self.path)
                generation = int(obj["metadata"].get("generation", 1))
                if generation != self._seen:
                    self._reconcile(obj, generation)
                    self._seen = generation
            self._stop.wait(0.1)

    def _reconcile(self, obj: dict[str, Any], generation: int) -> None:
        predictor = obj["spec"]["predictor"]
        model = predictor.get("model", {})
        storage = (model.get("storageUri"), predictor.get("storageUris"))
        percent = predictor.get("canaryTrafficPercent")
        self.history.append((time.monotonic(), percent, model.get("storageUri")))
        if self.on_change is not None:
            self.on_change(percent, model.get("storageUri"))
        if not self.revisions or self.revisions[-1][1] != storage:
            self.revisions.append((f"{self.name}-predictor-{len(self.revisions) + 1:05d}", storage))
            time.sleep(self.ready_delay)  # the new revision's pods come up
        latest = self.revisions[-1][0]
        if model.get("storageUri") in self.never_ready:
            self._stuck(generation, latest)
            return
        previous = self.rolled_out
        if percent is None or latest == self.rolled_out or self.rolled_out is None:
            traffic: list[dict[str, Any]] = [
                {"revisionName": latest, "percent": 100, "latestRevision": True}
            ]
            if percent is None or self.rolled_out is None:
                self.rolled_out = latest
        else:
            traffic = [
                {
                    "revisionName": latest,
                    "percent": percent,
                    "latestRevision": True,
                    "tag": "latest",
                },
                {
                    "revisionName": self.rolled_out,
                    "percent": 100 - percent,
                    "latestRevision": False,
                    "tag": "prev",
                },
            ]
        if self.tag_url is not None:
            for entry in traffic:
                entry["url"] = self.tag_url(str(entry["revisionName"]))
        stamp = now_rfc3339()
        status = {
            "observedGeneration": generation,
            "url": f"http://{self.name}.{self.namespace}.example.com",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": stamp}
                for t in ("IngressReady", "PredictorReady", "Ready")
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": latest,
                    "latestReadyRevision": latest,
                    "latestRolledoutRevision": self.rolled_out,
                    "previousRolledoutRevision": previous,
                    "traffic": traffic,
                }
            },
        }
        KServe(self.kube).set_status(self.namespace, self.name, status)

    def _stuck(self, generation: int, latest: str) -> None:
        """The new revision fails to come up: KServe keeps all traffic where it was."""
        stamp = now_rfc3339()
        message = f"Revision {latest} failed with message: Back-off pulling image"
        status = {
            "observedGeneration": generation,
            "conditions": [
                {"type": t, "status": "False", "lastTransitionTime": stamp, "message": message}
                for t in ("PredictorReady", "Ready")
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": latest,
                    "latestReadyRevision": self.rolled_out,
                    "latestRolledoutRevision": self.rolled_out,
                    "traffic": [
                        {"revisionName": self.rolled_out, "percent": 100, "latestRevision": False}
                    ],
                }
            },
        }
        KServe(self.kube).set_status(self.namespace, self.name, status)

    def percents(self) -> list[int | None]:
        """canaryTrafficPercent values in the order KServe saw them, repeats collapsed."""
        out: list[int | None] = []
        for _, percent, _ in self.history:
            if not out or out[-1] != percent:
                out.append(percent)
        return out


# --------------------------------------------------------------------------- helpers


def mv_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return resource_path(API, "modelversions", namespace, name, sub)


def ro_path(namespace: str, name: str | None = None) -> str:
    return resource_path(API, "rollouts", namespace, name)


def create_model_version(
    kube: Kube, namespace: str, name: str, version: int, uri: str, *, approved: bool = True
) -> None:
    """A ModelVersion whose artifact the operator verified, approved by alice unless said."""
    kube.create(
        mv_path(namespace),
        {
            "apiVersion": API,
            "kind": "ModelVersion",
            "metadata": {"name": name},
            "spec": {
                "model": "grader",
                "version": version,
                "artifact": {"uri": uri, "format": "merged", "digest": DIGEST},
                "baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"},
            },
        },
    )
    sign_model_version(kube, namespace, name, approvers=("alice",) if approved else ())


def approve(kube: Kube, namespace: str, name: str) -> None:
    """alice approves (the record the approval webhook would write)."""
    sign_model_version(kube, namespace, name, approvers=("alice",))


def create_inference_service(
    kube: Kube, namespace: str, name: str = "grader", storage_uri: str = V1_URI
) -> None:
    kube.create(
        resource_path(ISVC_API, "inferenceservices", namespace),
        {
            "apiVersion": ISVC_API,
            "kind": "InferenceService",
            # Its owner lets the Rollout of the same name drive it.
            "metadata": {"name": name, "annotations": {ROLLOUT_TARGET_ANNOTATION: name}},
            "spec": {
                "predictor": {
                    "model": {"modelFormat": {"name": "huggingface"}, "storageUri": storage_uri}
                }
            },
        },
    )


def rollout_body(
    name: str,
    model_version: str,
    steps: list[dict[str, Any]],
    target: dict[str, str],
    query: str,
    inconclusive_limit: int = 2,
) -> dict[str, Any]:
    """A Rollout of `model_version` whose error-rate metric queries `target` (MAIN: the
    policy's endpoint; {"address": ...}: a raw address the policy allows)."""
    return {
        "apiVersion": API,
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "modelVersion": model_version,
            "inferenceService": {"name": "grader"},
            "strategy": {
                "canary": {
                    "steps": steps,
                    "analysis": {
                        "interval": "1s",
                        "failureLimit": 0,
                        "inconclusiveLimit": inconclusive_limit,
                        "metrics": [
                            {
                                "name": "error-rate",
                                "prometheus": {**target, "query": query},
                                "thresholdRange": {"max": 0.05},
                            }
                        ],
                    },
                }
            },
            "progressDeadlineSeconds": 60,
        },
    }


def rollout_status(kube: Kube, namespace: str, name: str = "grader") -> dict[str, Any]:
    return kube.get(ro_path(namespace, name)).get("status") or {}


def wait_phase(
    kube: Kube, namespace: str, phase: str, op: OperatorProcess, timeout: float = 60
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = rollout_status(kube, namespace)
        return status if status.get("phase") == phase else None

    try:
        return wait_for(reached, timeout=timeout, what=f"Rollout phase {phase}")
    except TimeoutError:
        pytest.fail(
            f"Rollout never reached {phase}: {rollout_status(kube, namespace)}\n"
            f"operator log:\n{op.process.tail(60)}"
        )


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def deployments(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return list((kube.get(mv_path(namespace, name)).get("status") or {}).get("deployments") or [])


def analysis_rules(prom: Prometheus, **more: list[Any]) -> dict[str, Any]:
    """The test platform's analysis rules: its Prometheus named `main`, reachable by raw
    address too."""
    return {
        "prometheus": [{"name": "main", "address": prom.url}, *more.pop("prometheus", [])],
        "allowAddresses": [prom.url, *more.pop("allowAddresses", [])],
        **more,
    }


@pytest.fixture(autouse=True)
def analysis_policy(kube: Kube, namespace: str, prometheus: Prometheus) -> Iterator[str]:
    """The PlatformPolicy of this test's namespace, as the platform team writes one."""
    with platform_policy(
        kube, namespace, {"analysis": analysis_rules(prometheus)}, prefix="ro"
    ) as name:
        yield name


@pytest.fixture
def operator(
    control_plane: ControlPlane, namespace: str, operator_process: OperatorFactory
) -> Iterator[Callable[[], OperatorProcess]]:
    """Starts the operator for `namespace` under the Helm chart's ServiceAccount and RBAC."""
    with chart_rbac_applied(control_plane, f"ro-{namespace[-6:]}", namespace) as (_, config):

        def start() -> OperatorProcess:
            return operator_process(config, args=["--namespace", namespace], env=OPERATOR_ENV)

        yield start


@contextlib.contextmanager
def serving_v1(
    kube: Kube, namespace: str, *, v2_approved: bool = True, **kserve: Any
) -> Iterator[FakeKServe]:
    """InferenceService grader serving v1, KServe played by a FakeKServe (`kserve` options),
    ModelVersions grader-v1 (approved) and grader-v2 (approved unless said)."""
    create_inference_service(kube, namespace)
    fake = FakeKServe(kube, namespace, "grader", **kserve).start()
    verifier = VerifyPods(kube, namespace).start()
    try:
        wait_for(lambda: fake.revisions, timeout=10, what="revision 1")
        create_model_version(kube, namespace, "grader-v1", 1, V1_URI)
        create_model_version(kube, namespace, "grader-v2", 2, V2_URI, approved=v2_approved)
        yield fake
    finally:
        verifier.stop()
        fake.stop()


def healthy(prom: Prometheus, namespace: str) -> None:
    for rev in ("grader-predictor-00001", "grader-predictor-00002", "grader-predictor-00003"):
        prom.exporter.set(namespace, rev, ok=20, errors=0)


# --------------------------------------------------------------------------- tests


def test_unapproved_refused_then_healthy_canary_promoted_across_a_restart(
    kube: Kube,
    namespace: str,
    prometheus: Prometheus,
    operator: Callable[[], OperatorProcess],
) -> None:
    healthy(prometheus, namespace)
    with serving_v1(kube, namespace, v2_approved=False) as fake:
        steps = [
            {"setWeight": 5},
            {"pause": {"duration": "2s"}},
            {"setWeight": 25},
            {"pause": {"duration": "8s"}},
            {"setWeight": 50},
            {"pause": {"duration": "2s"}},
            {"setWeight": 100},
        ]
        kube.create(
            ro_path(namespace),
            rollout_body("grader", "grader-v2", steps, MAIN, ERROR_RATE),
        )
        op = operator()

        # Refused while the candidate is only Verified: nothing touches the InferenceService.
        pending = wait_phase(kube, namespace, "Pending", op)
        ready = condition(pending, "ModelVersionReady")
        assert ready.get("status") == "False", pending
        assert "not Approved: approve it first" in ready["message"]
        time.sleep(2)
        assert fake.percents() == [None]
        assert rollout_status(kube, namespace)["phase"] == "Pending"

        # Approved: the rollout starts by itself on the next resync.
        approve(kube, namespace, "grader-v2")
        approved_at = time.monotonic()
        wait_phase(kube, namespace, "Progressing", op, timeout=30)
        started_after = time.monotonic() - approved_at

        # Kill the operator during the 8s pause at 25% and start a new one.
        def at_pause_25() -> dict[str, Any] | None:
            status = rollout_status(kube, namespace)
            return status if status.get("currentStepIndex") == 3 else None

        before = wait_for(at_pause_25, timeout=60, what="the pause at 25%")
        op.process.signal_group(signal.SIGKILL)
        op.process.popen.wait(10)
        killed_at = time.monotonic()
        op = operator()
        op.wait_for_log(r"Rollout \S+ reconciled \(first run in this operator\)")
        restarted = time.monotonic() - killed_at
        after = rollout_status(kube, namespace)
        if after.get("currentStepIndex") == 3:
            assert after["stepStartTime"] == before["stepStartTime"], (before, after)

        done = wait_phase(kube, namespace, "Succeeded", op, timeout=90)

        def phase_of(name: str) -> str:
            return str((kube.get(mv_path(namespace, name)).get("status") or {}).get("phase"))

        # The ModelVersion reconciler derives the phases from what the Rollout wrote.
        wait_for(lambda: phase_of("grader-v2") == "Serving", timeout=20, what="v2 Serving")
        old_phase = phase_of("grader-v1")

    # The chart's RBAC is exactly enough for a whole rollout.
    assert "forbidden" not in op.logs().lower(), op.process.tail(40)
    assert fake.percents() == [None, 5, 25, 50, 100, None], fake.history
    assert done["stableModelVersion"] == "grader-v2"
    assert done["canaryWeight"] == 100
    assert done["analysis"]["failures"] == 0
    assert done["analysis"]["successes"] >= 1
    assert condition(done, "Progressing")["reason"] == "Promoted"
    isvc = kube.get(fake.path)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == V2_URI
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert deployments(kube, namespace, "grader-v2") == [
        {"rollout": "grader", "inferenceService": "grader", "trafficPercent": 100, "role": "stable"}
    ]
    old = kube.get(mv_path(namespace, "grader-v1"))["status"]
    assert old.get("deployments", []) == []
    assert old.get("supersededBy") == "grader-v2"
    reasons = [
        e["reason"]
        for e in kube.list(resource_path("v1", "events", namespace))
        if e["involvedObject"]["kind"] == "Rollout"
    ]
    for reason in ("ModelVersionNotApproved", "Started", "WeightSet", "Paused", "Promoted"):
        assert reason in reasons, reasons
    changes: list[tuple[float, int | None]] = []
    for t, percent, _ in fake.history:
        if not changes or changes[-1][1] != percent:
            changes.append((t, percent))
    at = [t for t, _ in changes]  # None, 5, 25, 50, 100, None
    # Between two weights: KServe's readiness (0.3s for a new revision), the pause, and the
    # operator noticing both (the resync interval is 1s).
    overhead = [at[2] - at[1] - 2.0 - 0.3, at[4] - at[3] - 2.0, at[5] - at[4]]
    print(
        f"\nrollout figures: Prometheus ready in {prometheus.started_s:.1f}s; "
        f"start after approval {started_after:.1f}s; operator killed -> new one reconciled "
        f"{restarted:.1f}s (caught at step 3: {after.get('currentStepIndex') == 3}); "
        f"operator overhead per step {', '.join(f'{o:.2f}s' for o in overhead)}; "
        f"total {done['startTime']} -> {done['completionTime']}; old stable now {old_phase}"
    )


def test_bad_error_rate_at_25_percent_aborts_and_restores_the_stable_version(
    kube: Kube,
    namespace: str,
    prometheus: Prometheus,
    operator: Callable[[], OperatorProcess],
) -> None:
    healthy(prometheus, namespace)
    turned_bad: list[float] = []

    def on_change(percent: int | None, _uri: str | None) -> None:
        if percent == 25 and not turned_bad:
            prometheus.exporter.set(namespace, "grader-predictor-00002", ok=10, errors=10)
            turned_bad.append(time.monotonic())

    with serving_v1(kube, namespace, on_change=on_change) as fake:
        steps = [
            {"setWeight": 5},
            {"pause": {"duration": "2s"}},
            {"setWeight": 25},
            {"pause": {"duration": "60s"}},
            {"setWeight": 100},
        ]
        kube.create(
            ro_path(namespace),
            rollout_body("grader", "grader-v2", steps, MAIN, ERROR_RATE),
        )
        op = operator()
        wait_for(lambda: turned_bad, timeout=60, what="the canary at 25%")
        query = ERROR_RATE.replace("{{namespace}}", namespace).replace(
            "{{canary}}", "grader-predictor-00002"
        )
        wait_for(
            lambda: (prometheus.value(query) or 0) > 0.05,
            timeout=30,
            interval=0.1,
            what="Prometheus to see the error rate",
        )
        visible = time.monotonic()
        aborted = wait_phase(kube, namespace, "Aborted", op, timeout=30)
        wait_for(lambda: fake.percents()[-1] == 0, timeout=10, what="canary at 0%")
        zero = next(t for t, p, _ in fake.history if p == 0)

    reaction = zero - visible
    print(
        f"\nabort figures: bad metric -> visible in Prometheus {visible - turned_bad[0]:.1f}s; "
        f"visible -> canary 0% {reaction:.1f}s; bad metric -> canary 0% "
        f"{zero - turned_bad[0]:.1f}s"
    )
    # One analysis interval (1s) and one resync (1s), plus a margin for the round's queries.
    assert reaction <= 5.0, reaction
    assert "error-rate" in aborted["abortReason"], aborted
    assert aborted["canaryWeight"] == 0
    assert aborted["analysis"]["failures"] == 1
    assert condition(aborted, "Analysis")["status"] == "False"
    isvc = kube.get(fake.path)
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == V1_URI
    traffic = {
        t["revisionName"]: t["percent"]
        for t in isvc["status"]["components"]["predictor"]["traffic"]
    }
    assert traffic["grader-predictor-00001"] == 100, traffic
    assert deployments(kube, namespace, "grader-v2") == []
    assert deployments(kube, namespace, "grader-v1") == [
        {"rollout": "grader", "inferenceService": "grader", "trafficPercent": 100, "role": "stable"}
    ]


def test_no_data_holds_and_kubectl_plugin_abort_retry_pause_resume_promote(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    prometheus: Prometheus,
    operator: Callable[[], OperatorProcess],
) -> None:
    missing = 'sum(rate(no_such_metric_total{revision="{{canary}}"}[4s]))'

    def annotate(key: str, value: str) -> None:
        """`kubectl whetstone <command>`: the plugin, run against the real API server."""
        full = value.startswith("full-")
        args = [key, "grader", "-n", namespace, "--id", value.removeprefix("full-")]
        proc = subprocess.run(
            [sys.executable, "-m", "whetstone_operator.kubectl_plugin", *args]
            + (["--full"] if full else [])
            + ["--kubeconfig", str(control_plane.admin_kubeconfig)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "KUBECTL": str(control_plane.tools.kubectl)},
        )
        assert proc.returncode == 0, proc.stderr
        assert f"{key} requested for grader" in proc.stdout

    with serving_v1(kube, namespace) as fake:
        steps = [{"setWeight": 5}, {"setWeight": 100}]
        kube.create(
            ro_path(namespace),
            rollout_body("grader", "grader-v2", steps, {"address": prometheus.url}, missing, 0),
        )
        op = operator()

        # No data is inconclusive: held at 5%, never promoted.
        wait_phase(kube, namespace, "Paused", op, timeout=60)
        wait_for(
            lambda: "inconclusive" in rollout_status(kube, namespace).get("message", ""),
            timeout=20,
            what="an inconclusive analysis round",
        )
        time.sleep(3)
        held = rollout_status(kube, namespace)
        assert held["phase"] == "Paused"
        assert condition(held, "Analysis")["status"] == "Unknown"
        assert held["analysis"]["successes"] == 0
        assert fake.percents() == [None, 5]

        annotate("abort", "t1")
        aborted = wait_phase(kube, namespace, "Aborted", op, timeout=20)
        assert "whetstone.dev/abort=t1" in aborted["abortReason"]
        wait_for(lambda: fake.percents()[-1] == 0, timeout=10, what="canary at 0%")

        annotate("retry", "t2")
        wait_phase(kube, namespace, "Paused", op, timeout=30)
        assert fake.percents()[-1] == 5

        annotate("pause", "t3")
        held = wait_for(
            lambda: (st := rollout_status(kube, namespace)).get("pausedByCommand") == "t3" and st,
            timeout=20,
            what="the pause command",
        )
        assert "paused by whetstone.dev/pause=t3" in held["message"], held
        assert condition(held, "Progressing")["reason"] == "PausedByCommand"
        annotate("resume", "t4")
        resumed = wait_for(
            lambda: (
                (st := rollout_status(kube, namespace)).get("handledCommands", {}).get("resume")
                == "t4"
                and st
            ),
            timeout=20,
            what="the resume command",
        )
        assert "pausedByCommand" not in resumed, resumed

        annotate("promote", "full-t5")
        done = wait_phase(kube, namespace, "Succeeded", op, timeout=30)

    assert done["handledCommands"] == {
        "abort": "t1",
        "retry": "t2",
        "pause": "t3",
        "resume": "t4",
        "promote": "full-t5",
    }
    assert fake.percents() == [None, 5, 0, 5, None]
    spec = kube.get(ro_path(namespace, "grader"))["spec"]
    assert spec["modelVersion"] == "grader-v2"  # commands never touch the spec


# --------------------------------------------------------------------------- golden prompts

GRADE_SCHEMA = {
    "type": "object",
    "required": ["grade", "score"],
    "properties": {"grade": {"enum": ["A", "B", "C", "D", "F"]}, "score": {"type": "number"}},
}


class ModelServer:
    """Plays each revision's OpenAI-compatible endpoint behind its tag-routed URL
    (/rev/<revision>/...): a revision loading a storage in `broken` answers prose where the
    contract wants JSON."""

    def __init__(self, broken: set[str]) -> None:
        self.fake: FakeKServe | None = None  # set once KServe is played
        self.broken = broken
        self.calls: list[str] = []
        self.server = LoopbackServer(self._handler())
        self.url = self.server.url

    def storage_of(self, revision: str) -> str | None:
        revisions = self.fake.revisions if self.fake is not None else []
        return next((s[0] for name, s in revisions if name == revision), None)

    def tag_url(self, revision: str) -> str:
        return f"{self.url}/rev/{revision}"

    def _handler(self) -> type[QuietHandler]:
        model = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.read_json()
                revision = self.path.split("/")[2]
                model.calls.append(revision)
                good = model.storage_of(revision) not in model.broken
                content = '{"grade": "A", "score": 0.9}' if good else "I would give it an A."
                self.reply(200, {"choices": [{"message": {"content": content}}]})

        return Handler

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.server.close()


def test_golden_prompts_abort_a_contract_break_and_a_new_version_rolls_out(
    kube: Kube,
    namespace: str,
    prometheus: Prometheus,
    operator: Callable[[], OperatorProcess],
) -> None:
    """The canary's structured output breaks the response schema: aborted at 5% by the golden
    prompts though its error rate is fine; a fixed version set in spec.modelVersion starts a
    fresh rollout from the same stable version and is promoted."""
    healthy(prometheus, namespace)
    for rev in ("grader-predictor-00004", "grader-predictor-00005"):
        prometheus.exporter.set(namespace, rev, ok=20, errors=0)
    model = ModelServer(broken={V2_URI})
    v3_uri = "s3://models/grader/v3/"
    with model, serving_v1(kube, namespace, tag_url=model.tag_url) as fake:
        model.fake = fake
        create_model_version(kube, namespace, "grader-v3", 3, v3_uri)
        body = rollout_body(
            "grader",
            "grader-v2",
            [{"setWeight": 5}, {"pause": {"duration": "2s"}}, {"setWeight": 100}],
            MAIN,
            ERROR_RATE,
        )
        body["spec"]["strategy"]["canary"]["analysis"]["metrics"].append(
            {
                "name": "golden-prompts",
                "http": {
                    "prompts": [
                        {
                            "name": "essay-1",
                            "body": {"messages": [{"role": "user", "content": "Grade: ..."}]},
                        }
                    ],
                    "responseField": "choices.0.message.content",
                    "responseSchema": GRADE_SCHEMA,
                    "timeout": "5s",
                },
                "thresholdRange": {"min": 1},
            }
        )
        kube.create(ro_path(namespace), body)
        op = operator()
        aborted = wait_phase(kube, namespace, "Aborted", op, timeout=60)
        wait_for(lambda: fake.percents()[-1] == 0, timeout=10, what="canary at 0%")
        assert "golden-prompts" in aborted["abortReason"], aborted
        assert "not JSON text" in aborted["abortReason"], aborted
        assert "error-rate" not in aborted["abortReason"]
        assert "grader-predictor-00002" in model.calls  # the canary alone was asked
        assert "grader-predictor-00001" not in model.calls

        kube.patch(ro_path(namespace, "grader"), {"spec": {"modelVersion": "grader-v3"}})
        done = wait_phase(kube, namespace, "Succeeded", op, timeout=90)

    assert done["stableModelVersion"] == "grader-v3"
    assert done["analysis"]["failures"] == 0
    golden = next(r for r in done["analysis"]["lastResults"] if r["metric"] == "golden-prompts")
    assert golden["passed"] is True and golden["value"] == 1.0, golden
    # v2 at 5%, back to 0% on v1, then v3 from 5% to promotion.
    uris = [uri for _, _, uri in fake.history]
    assert uris.index(V2_URI) < uris.index(v3_uri)
    assert fake.percents() == [None, 5, 0, 5, 100, None], fake.history
    reasons = [
        e["reason"]
        for e in kube.list(resource_path("v1", "events", namespace))
        if e["involvedObject"]["kind"] == "Rollout"
    ]
    assert "NewModelVersion" in reasons and "AnalysisFailed" in reasons, reasons
    assert deployments(kube, namespace, "grader-v1") == []
    assert kube.get(mv_path(namespace, "grader-v1"))["status"].get("supersededBy") == "grader-v3"


def test_a_canary_that_never_gets_ready_is_aborted_at_the_progress_deadline(
    kube: Kube,
    namespace: str,
    prometheus: Prometheus,
    operator: Callable[[], OperatorProcess],
) -> None:
    healthy(prometheus, namespace)
    with serving_v1(kube, namespace, never_ready={V2_URI}) as fake:
        body = rollout_body(
            "grader",
            "grader-v2",
            [{"setWeight": 5}, {"setWeight": 100}],
            MAIN,
            ERROR_RATE,
        )
        body["spec"]["progressDeadlineSeconds"] = 3
        kube.create(ro_path(namespace), body)
        op = operator()
        wait_for(lambda: 5 in fake.percents(), timeout=30, what="the canary at 5%")
        asked = next(t for t, p, _ in fake.history if p == 5)
        aborted = wait_phase(kube, namespace, "Aborted", op, timeout=30)
        wait_for(lambda: fake.percents()[-1] == 0, timeout=10, what="canary at 0%")
        zero = next(t for t, p, _ in fake.history if p == 0)

    print(f"\nprogress deadline 3s: canary asked -> rolled back {zero - asked:.1f}s")
    # The deadline (its clock starts as the patch is decided, just before KServe sees it), then
    # one resync (1s) and the write, with a margin for a loaded machine.
    assert 2.5 <= zero - asked <= 8.0, zero - asked
    assert condition(aborted, "Progressing")["reason"] == "ProgressDeadlineExceeded"
    assert "progressDeadlineSeconds 3" in aborted["abortReason"]
    assert "Back-off pulling image" in aborted["abortReason"], aborted["abortReason"]
    assert aborted["canaryWeight"] == 0
    assert "analysis" not in aborted or aborted["analysis"].get("successes", 0) == 0
    isvc = kube.get(fake.path)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == V1_URI
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert deployments(kube, namespace, "grader-v2") == []


# --------------------------------------------------------------------------- refused targets

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class Vault:
    """A loopback 'metadata service' answering with cloud credentials to every request."""

    def __init__(self) -> None:
        self.hits = 0
        self.server = LoopbackServer(self._handler())
        self.url = self.server.url

    def _handler(self) -> type[QuietHandler]:
        vault = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                vault.hits += 1
                self.reply(200, {"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": SECRET})

        return Handler

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *_: object) -> None:
        self.server.close()


def test_analysis_targets_are_refused_and_no_answer_is_echoed(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    prometheus: Prometheus,
    analysis_policy: str,
    operator: Callable[[], OperatorProcess],
) -> None:
    """A tenant aims analysis at the API server (under an address prefix the platform allowed),
    at the cloud metadata address (allowed by nothing) and at a 'Prometheus' the platform
    named that answers with credentials: the first two are refused before any byte is sent,
    all three fail the round, the canary is rolled back, and no byte of the credentials
    reaches the Rollout, its Events or the operator's log."""
    healthy(prometheus, namespace)
    with Vault() as vault, serving_v1(kube, namespace) as fake:
        kube.patch(
            policy_path(analysis_policy),
            {
                "spec": {
                    "analysis": analysis_rules(
                        prometheus,
                        prometheus=[{"name": "vault", "address": vault.url}],
                        allowAddresses=[control_plane.server],
                    )
                }
            },
        )
        body = rollout_body(
            "grader", "grader-v2", [{"setWeight": 5}, {"setWeight": 100}], MAIN, ERROR_RATE
        )
        metrics = body["spec"]["strategy"]["canary"]["analysis"]["metrics"]
        for name, target in (
            ("apiserver", {"address": control_plane.server}),
            ("metadata", {"address": "http://169.254.169.254/latest/meta-data/"}),
            ("vault", {"endpoint": "vault"}),
        ):
            metrics.append(
                {
                    "name": name,
                    "prometheus": {**target, "query": "up"},
                    "thresholdRange": {"max": 1},
                    "noData": "fail",
                }
            )
        kube.create(ro_path(namespace), body)
        op = operator()
        aborted = wait_phase(kube, namespace, "Aborted", op, timeout=60)
        wait_for(lambda: fake.percents()[-1] == 0, timeout=10, what="canary at 0%")

    results = {r["metric"]: r for r in aborted["analysis"]["lastResults"]}
    assert results["error-rate"]["passed"] is True, results
    api = results["apiserver"]["message"]
    assert "refused, nothing sent" in api and "Kubernetes API server's address" in api, api
    metadata = results["metadata"]["message"]
    assert f"PlatformPolicy {analysis_policy} spec.analysis.allowAddresses" in metadata
    assert "not a successful query result" in results["vault"]["message"]
    assert vault.hits >= 1  # the platform's endpoint was asked; its answer stays out
    allowed = condition(aborted, "AnalysisTargetsAllowed")
    assert allowed["status"] == "False" and allowed["reason"] == "TargetRefused", allowed
    events = [
        e
        for e in kube.list(resource_path("v1", "events", namespace))
        if e["involvedObject"]["kind"] == "Rollout"
    ]
    assert "AnalysisTargetRefused" in [e["reason"] for e in events]
    shown = json.dumps([kube.get(ro_path(namespace, "grader")), events]) + op.logs()
    for secret in (SECRET, "wJalr", "AKIAIOSFODNN7", "EXAMPLEKEY"):
        assert secret not in shown
