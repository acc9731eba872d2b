"""Reliability on the real control plane: the operator SIGKILLed at random moments, run through
a fault-injecting proxy, run as two peered replicas, and fed a corpus of bad input. Every object
must end in the right state with nothing duplicated and no status field lost.

Counts are bounded for CI and set by environment variables (``bench/soak.py`` raises them):
WHETSTONE_CHAOS_SEED (replays a run; printed), WHETSTONE_CHAOS_JOBS, WHETSTONE_CHAOS_ROLLOUTS,
WHETSTONE_CHAOS_KILLS, WHETSTONE_CHAOS_SPREAD (seconds over which the jobs are created),
WHETSTONE_FAULT_JOBS, WHETSTONE_FAULT_ROLLOUTS, WHETSTONE_FAULT_RATE.
WHETSTONE_RELIABILITY_REPORT names a file that gets one JSON line of figures per test.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import re
import secrets
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultproxy import FaultPlan, FaultProxy

from whetstone_operator.render.workload import trainer_job_name, validation_job_name

from cluster import (
    REPO_ROOT,
    ApiError,
    ControlPlane,
    Kube,
    Kubelet,
    OperatorFactory,
    OperatorProcess,
    chart_rbac_applied,
    free_port,
    kube_minor_version,
    make_certificate,
    make_temp_dir,
    remove_temp_dir,
    resource_path,
    wait_for,
    webhook_operator_running,
    write_kubeconfig,
)
from signed import sign_model_version
from test_rollout import FakeKServe, create_inference_service
from tests.conftest import sample_header

pytestmark = pytest.mark.integration


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


SEED = _env_int("WHETSTONE_CHAOS_SEED", secrets.randbelow(2**31))
CHAOS_JOBS = _env_int("WHETSTONE_CHAOS_JOBS", 12)
CHAOS_ROLLOUTS = _env_int("WHETSTONE_CHAOS_ROLLOUTS", 2)
CHAOS_KILLS = _env_int("WHETSTONE_CHAOS_KILLS", 6)
CHAOS_SPREAD = _env_float("WHETSTONE_CHAOS_SPREAD", min(20.0, CHAOS_JOBS * 0.6))
FAULT_JOBS = _env_int("WHETSTONE_FAULT_JOBS", 8)
FAULT_ROLLOUTS = _env_int("WHETSTONE_FAULT_ROLLOUTS", 1)
FAULT_RATE = _env_float("WHETSTONE_FAULT_RATE", 0.1)
FAULT_SPREAD = min(10.0, FAULT_JOBS * 0.5)
REPORT = os.environ.get("WHETSTONE_RELIABILITY_REPORT", "")

API = "whetstone.dev/v1alpha1"
SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())
CORPUS = REPO_ROOT / "manifests" / "samples" / "bad-input"
PLURALS = {"FineTuneJob": "finetunejobs", "ModelVersion": "modelversions", "Rollout": "rollouts"}
CLUSTER_PLURALS = {"PlatformPolicy": "platformpolicies"}
OPERATOR_ENV = {
    "WHETSTONE_RESYNC_SECONDS": "1",
    "WHETSTONE_TRAINER_IMAGE": "registry.local/whetstone-trainer:test",
}
STEPS: list[dict[str, Any]] = [
    {"setWeight": 10},
    {"pause": {"duration": "2s"}},
    {"setWeight": 40},
    {"pause": {"duration": "2s"}},
    {"setWeight": 70},
    {"pause": {"duration": "1s"}},
    {"setWeight": 100},
]
EXPECTED_PERCENTS: list[int | None] = [None, 10, 40, 70, 100, None]
SUCCEEDED_FIELDS = (
    "phase",
    "message",
    "observedGeneration",
    "conditions",
    "dataReport",
    "hyperparameters",
    "metrics",
    "artifactUri",
    "artifactDigest",
    "modelVersion",
    "attempt",
    "startTime",
    "completionTime",
    "progress",
)
ROLLOUT_FIELDS = (
    "phase",
    "currentStepIndex",
    "canaryWeight",
    "stableModelVersion",
    "canaryModelVersion",
    "stableStorage",
    "startTime",
    "completionTime",
    "conditions",
    "observedGeneration",
)


def path(kind: str, ns: str, name: str | None = None, sub: str | None = None) -> str:
    if kind in CLUSTER_PLURALS:
        return resource_path(API, CLUSTER_PLURALS[kind], None, name, sub)
    return resource_path(API, PLURALS[kind], ns, name, sub)


def record(test: str, figures: dict[str, Any]) -> None:
    """Print the figures; append them to WHETSTONE_RELIABILITY_REPORT when set."""
    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(f"\nreliability figures: {line}")
    if REPORT:
        with open(REPORT, "a") as out:
            out.write(line + "\n")


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class JobPlan:
    """One FineTuneJob and how the test's kubelet treats its pods."""

    name: str
    model: str
    bad_data: bool
    create_after: float
    validate_after: float
    train_after: float

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def artifact_uri(self) -> str:
        return f"s3://models/{self.model}/{self.name}/final/"

    @property
    def terminal(self) -> str:
        return "Failed" if self.bad_data else "Succeeded"

    def body(self) -> dict[str, Any]:
        body = copy.deepcopy(SAMPLE)
        body["metadata"] = {"name": self.name}
        body["spec"]["registration"]["model"] = self.model
        return body

    def report(self) -> dict[str, Any]:
        if self.bad_data:
            return {
                "examples": 0,
                "dropped": {"invalid": 2},
                "invalidLines": ["train.jsonl:3: not JSON", "train.jsonl:9: no assistant turn"],
            }
        return {"examples": 120, "validationExamples": 12, "dropped": {"duplicate": 3}}

    def result(self) -> dict[str, Any]:
        return {
            "artifactUri": self.artifact_uri,
            "artifactFormat": "merged",
            "manifestDigest": self.digest,
            "metrics": {
                "evalLoss": 0.9,
                "exactMatch": 0.86,
                "rougeL": 0.71,
                "baseline": {"exactMatch": 0.6, "rougeL": 0.5},
            },
            "dataReport": {**self.report(), "datasetDigest": "sha256:" + "cd" * 32},
            "hyperparameters": {"learningRate": 2e-5, "epochs": 3, "batchSize": 4},
            "steps": 30,
        }


def make_plans(rng: random.Random, count: int, prefix: str, spread: float) -> list[JobPlan]:
    """Jobs spread over `spread` seconds; about one in five has bad data. A few registered
    models are shared, so concurrent successes compete for the next version number."""
    models = [f"{prefix}-m{i}" for i in range(max(1, count // 4))]
    return [
        JobPlan(
            name=f"{prefix}-{i:03d}",
            model=rng.choice(models),
            bad_data=rng.random() < 0.2,
            create_after=rng.uniform(0, spread),
            validate_after=rng.uniform(0.2, 2.5),
            train_after=rng.uniform(0.5, 4.0),
        )
        for i in range(count)
    ]


# --------------------------------------------------------------------------- the kubelet


class Actors:
    """Plays the kubelet for every pod of the plans' Jobs (validation, trainer) and for the
    verify pods (registered ModelVersions', Rollouts' checks before first traffic), on a
    thread, until stopped."""

    def __init__(self, kube: Kube, namespace: str, plans: list[JobPlan]) -> None:
        self.kube = kube
        self.kubelet = Kubelet(kube)
        self.namespace = namespace
        self.by_job: dict[str, tuple[str, JobPlan]] = {}
        for plan in plans:
            self.by_job[validation_job_name(plan.name)] = ("validate", plan)
            self.by_job[trainer_job_name(plan.name, 1)] = ("train", plan)
        self.seen: dict[str, float] = {}
        self.done: set[str] = set()
        self.writes = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Actors:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except (ApiError, OSError) as exc:
                self.errors.append(str(exc))
            self._stop.wait(0.25)

    def _tick(self) -> None:
        now = time.monotonic()
        pods = self.kubelet.pods(self.namespace, "app.kubernetes.io/managed-by=whetstone")
        for pod in pods:
            name = pod["metadata"]["name"]
            if name in self.done or (pod.get("status") or {}).get("phase") in (
                "Succeeded",
                "Failed",
            ):
                continue
            since = self.seen.setdefault(name, now)
            job = (pod["metadata"].get("labels") or {}).get("job-name", "")
            try:
                if self._act(pod, job, now - since):
                    self.done.add(name)
                    self.writes += 1
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise

    def _act(self, pod: dict[str, Any], job: str, age: float) -> bool:
        name = pod["metadata"]["name"]
        if (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "verifier":
            args = pod["spec"]["containers"][0].get("args") or []
            digest = args[args.index("--digest") + 1] if "--digest" in args else ""
            message = json.dumps({"ok": True, "digest": digest})
            self.kubelet.succeed(self.namespace, name, message=message)
            return True
        role, plan = self.by_job.get(job, ("", None))
        if plan is None:
            return False
        if role == "validate" and age >= plan.validate_after:
            report = json.dumps(plan.report())
            if plan.bad_data:
                self.kubelet.fail(self.namespace, name, message=report, exit_code=3)
            else:
                self.kubelet.succeed(self.namespace, name, message=report)
            return True
        if role == "train" and age >= plan.train_after:
            self.kubelet.succeed(self.namespace, name, message=json.dumps(plan.result()))
            return True
        return False


# --------------------------------------------------------------------------- rollouts


@dataclass
class RolloutRig:
    """One InferenceService played by FakeKServe, two ModelVersions and a Rollout of v2."""

    name: str
    fake: FakeKServe
    create_after: float = 0.0

    @property
    def v1(self) -> str:
        return f"{self.name}-v1"

    @property
    def v2(self) -> str:
        return f"{self.name}-v2"


def uri(rollout: str, version: int) -> str:
    return f"s3://models/{rollout}/v{version}/"


def rollout_rig(kube: Kube, ns: str, name: str, create_after: float) -> RolloutRig:
    """The InferenceService serving v1, its KServe, approved v1 and v2 (the Rollout itself is
    created `create_after` seconds into the scenario)."""
    create_inference_service(kube, ns, name, uri(name, 1))
    rig = RolloutRig(name, FakeKServe(kube, ns, name).start(), create_after)
    wait_for(lambda: rig.fake.revisions, timeout=20, what=f"{name} revision 1")
    for version in (1, 2):
        mv = f"{name}-v{version}"
        kube.create(
            path("ModelVersion", ns),
            {
                "apiVersion": API,
                "kind": "ModelVersion",
                "metadata": {"name": mv},
                "spec": {
                    "model": name,
                    "version": version,
                    "artifact": {
                        "uri": uri(name, version),
                        "format": "merged",
                        "digest": "sha256:" + "ab" * 32,
                    },
                },
            },
        )
        sign_model_version(kube, ns, mv)
    return rig


def rollout_body(rig: RolloutRig) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Rollout",
        "metadata": {"name": rig.name},
        "spec": {
            "modelVersion": rig.v2,
            "inferenceService": {"name": rig.name},
            "strategy": {"canary": {"steps": STEPS}},
            "progressDeadlineSeconds": 300,
        },
    }


# --------------------------------------------------------------------------- observation


def status_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("status") or {})


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in items}


def snapshot(kube: Kube, ns: str) -> dict[str, dict[str, dict[str, Any]]]:
    return {kind: by_name(kube.list(path(kind, ns))) for kind in PLURALS}


def is_settled(
    world: dict[str, dict[str, dict[str, Any]]], plans: list[JobPlan], rigs: list[RolloutRig]
) -> bool:
    """Every job terminal (a registered version verified), every rollout finished."""
    jobs, versions, rollouts = world["FineTuneJob"], world["ModelVersion"], world["Rollout"]
    for plan in plans:
        status = status_of(jobs.get(plan.name))
        if status.get("phase") not in ("Succeeded", "Failed"):
            return False
        if status.get("phase") == "Succeeded":
            mv = status_of(versions.get(status.get("modelVersion", "")))
            if mv.get("phase") not in ("Verified", "Rejected"):
                return False
    for rig in rigs:
        if status_of(rollouts.get(rig.name)).get("phase") not in ("Succeeded", "Aborted", "Failed"):
            return False
        if status_of(versions.get(rig.v1)).get("phase") not in ("Retired",):
            return False
    return True


def phases(world: dict[str, dict[str, dict[str, Any]]]) -> Counter[str]:
    return Counter(
        f"{kind}/{status_of(obj).get('phase')}"
        for kind, objs in world.items()
        for obj in objs.values()
    )


def in_flight(kind: str, snapshots: list[dict[str, int]]) -> int:
    """How many of the snapshots show an object of `kind` not yet finished."""
    done = ("Succeeded", "Failed", "Aborted")
    return sum(
        any(key.startswith(f"{kind}/") and key.split("/")[1] not in done for key in snap)
        for snap in snapshots
    )


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def check_jobs(kube: Kube, ns: str, plans: list[JobPlan]) -> list[str]:
    """Problems with the FineTuneJobs: wrong terminal state, duplicate or missing children,
    lost status fields, version numbers taken twice or skipped."""
    problems: list[str] = []
    world = snapshot(kube, ns)
    jobs, versions = world["FineTuneJob"], world["ModelVersion"]
    k8s_jobs = kube.list(resource_path("batch/v1", "jobs", ns))
    config_maps = kube.list(
        resource_path("v1", "configmaps", ns), labelSelector="whetstone.dev/finetunejob"
    )
    services = kube.list(
        resource_path("v1", "services", ns), labelSelector="whetstone.dev/finetunejob"
    )
    registered: dict[str, list[int]] = {}
    for plan in plans:
        obj = jobs.get(plan.name)
        if obj is None:
            problems.append(f"{plan.name}: missing")
            continue
        uid = obj["metadata"]["uid"]
        status = status_of(obj)

        def owned(items: list[dict[str, Any]], uid: str = uid) -> list[str]:
            return sorted(
                i["metadata"]["name"]
                for i in items
                if any(r.get("uid") == uid for r in i["metadata"].get("ownerReferences") or [])
            )

        want_jobs = sorted(
            [validation_job_name(plan.name)]
            + ([] if plan.bad_data else [trainer_job_name(plan.name, 1)])
        )
        if owned(k8s_jobs) != want_jobs:
            problems.append(f"{plan.name}: Jobs {owned(k8s_jobs)}, want {want_jobs}")
        if len(owned(config_maps)) != 1:
            problems.append(f"{plan.name}: ConfigMaps {owned(config_maps)}, want exactly one")
        if owned(services):
            problems.append(f"{plan.name}: Services {owned(services)}, want none")
        mine = [
            v
            for v in versions.values()
            if ((v["spec"].get("source") or {}).get("fineTuneJob")) == plan.name
        ]
        if status.get("phase") != plan.terminal:
            problems.append(
                f"{plan.name}: phase {status.get('phase')}, want {plan.terminal} "
                f"({status.get('message')})"
            )
        if plan.bad_data:
            if mine:
                names = [v["metadata"]["name"] for v in mine]
                problems.append(f"{plan.name}: bad data yet ModelVersions {names}")
            if not (status.get("dataReport") or {}).get("invalidLines"):
                problems.append(f"{plan.name}: dataReport.invalidLines lost")
            if condition(status, "DataValidated").get("status") != "False":
                problems.append(f"{plan.name}: DataValidated is not False")
            if not status.get("completionTime"):
                problems.append(f"{plan.name}: completionTime lost")
            continue
        lost = [f for f in SUCCEEDED_FIELDS if status.get(f) in (None, "", [], {})]
        if lost:
            problems.append(f"{plan.name}: status fields lost: {lost}")
        for kind in ("Valid", "DataValidated", "Training"):
            if condition(status, kind).get("status") != "True":
                problems.append(f"{plan.name}: condition {kind} is {condition(status, kind)}")
        if status.get("attempt") != 1 or status.get("restarts", 0) != 0:
            problems.append(f"{plan.name}: attempt {status.get('attempt')}, want 1")
        if status.get("artifactDigest") != plan.digest:
            problems.append(f"{plan.name}: artifactDigest {status.get('artifactDigest')}")
        if (status.get("progress") or {}).get("percent") != 100:
            problems.append(f"{plan.name}: progress {status.get('progress')}")
        if len(mine) != 1:
            names = [v["metadata"]["name"] for v in mine]
            problems.append(
                f"{plan.name}: {len(mine)} ModelVersions {names}, want exactly one "
                f"(status.modelVersion {status.get('modelVersion')})"
            )
            continue
        mv = mine[0]
        if mv["metadata"]["name"] != status.get("modelVersion"):
            problems.append(
                f"{plan.name}: status.modelVersion {status.get('modelVersion')} but its "
                f"ModelVersion is {mv['metadata']['name']}"
            )
        if mv["spec"]["artifact"] != {
            "uri": plan.artifact_uri,
            "format": "merged",
            "digest": plan.digest,
            "secretRef": {"name": "s3-creds"},
        }:
            problems.append(f"{plan.name}: ModelVersion artifact {mv['spec']['artifact']}")
        mv_status = status_of(mv)
        if mv_status.get("phase") != "Verified" or mv_status.get("verifiedDigest") != plan.digest:
            problems.append(f"{plan.name}: ModelVersion {mv_status.get('phase')} {mv_status}")
        verify = [
            j["metadata"]["name"]
            for j in k8s_jobs
            if any(
                r.get("uid") == mv["metadata"]["uid"]
                for r in j["metadata"].get("ownerReferences") or []
            )
        ]
        if len(verify) != 1:
            problems.append(f"{mv['metadata']['name']}: verify Jobs {verify}, want exactly one")
        registered.setdefault(plan.model, []).append(int(mv["spec"]["version"]))
    for model, numbers in sorted(registered.items()):
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            problems.append(f"model {model}: versions {sorted(numbers)}, want 1..{len(numbers)}")
    return problems


def check_rollouts(kube: Kube, ns: str, rigs: list[RolloutRig]) -> list[str]:
    problems: list[str] = []
    world = snapshot(kube, ns)
    for rig in rigs:
        status = status_of(world["Rollout"].get(rig.name))
        if status.get("phase") != "Succeeded":
            problems.append(f"rollout {rig.name}: {status.get('phase')}: {status.get('message')}")
        lost = [f for f in ROLLOUT_FIELDS if status.get(f) in (None, "", [], {})]
        if lost:
            problems.append(f"rollout {rig.name}: status fields lost: {lost}")
        if status.get("stableModelVersion") != rig.v2 or status.get("canaryWeight") != 100:
            problems.append(f"rollout {rig.name}: stable {status.get('stableModelVersion')}")
        seen = rig.fake.percents()
        if seen != EXPECTED_PERCENTS:
            problems.append(f"rollout {rig.name}: KServe saw {seen}, want {EXPECTED_PERCENTS}")
        predictor = kube.get(rig.fake.path)["spec"]["predictor"]
        if predictor["model"].get("storageUri") != uri(rig.name, 2) or (
            "canaryTrafficPercent" in predictor
        ):
            problems.append(f"rollout {rig.name}: InferenceService predictor {predictor}")
        v1, v2 = (
            status_of(world["ModelVersion"].get(rig.v1)),
            status_of(world["ModelVersion"].get(rig.v2)),
        )
        stable = [
            {
                "rollout": rig.name,
                "inferenceService": rig.name,
                "trafficPercent": 100,
                "role": "stable",
            }
        ]
        if v2.get("deployments") != stable or v2.get("phase") != "Serving":
            problems.append(f"{rig.v2}: {v2.get('phase')} deployments {v2.get('deployments')}")
        if (
            v1.get("deployments")
            or v1.get("supersededBy") != rig.v2
            or v1.get("phase") != "Retired"
        ):
            problems.append(f"{rig.v1}: {v1.get('phase')} {v1}")
    return problems


# --------------------------------------------------------------------------- the operator


class Supervisor:
    """Starts the operator, SIGKILLs it, starts it again; keeps every process for its log."""

    def __init__(self, start: Callable[[], OperatorProcess]) -> None:
        self._start = start
        self.processes: list[OperatorProcess] = []
        self.kills = 0

    def start(self) -> OperatorProcess:
        op = self._start()
        self.processes.append(op)
        return op

    @property
    def current(self) -> OperatorProcess:
        return self.processes[-1]

    def kill(self) -> None:
        op = self.current
        op.process.signal_group(signal.SIGKILL)
        op.process.popen.wait(10)
        self.kills += 1

    def logs(self) -> str:
        return "\n".join(op.logs() for op in self.processes)

    def unexpected_exits(self) -> list[int | None]:
        """Exit codes of processes that ended other than by our SIGKILL."""
        return [
            op.process.popen.returncode
            for op in self.processes
            if not op.alive() and op.process.popen.returncode != -signal.SIGKILL
        ]


@pytest.fixture
def rbac_for(
    control_plane: ControlPlane, namespace: str
) -> Iterator[Callable[..., tuple[str, Path]]]:
    """``rbac_for(*values)`` applies the chart's RBAC rendered with ``--set`` values and returns
    (service account, its kubeconfig); cluster-scoped objects are removed afterwards."""
    with contextlib.ExitStack() as stack:

        def apply(*values: str) -> tuple[str, Path]:
            release = f"rel-{namespace[-6:]}"
            return stack.enter_context(
                chart_rbac_applied(control_plane, release, namespace, values)
            )

        yield apply


def operator_env(**extra: str) -> dict[str, str]:
    # Nothing listens on the progress port: an unreachable trainer costs no wait.
    return {**OPERATOR_ENV, "WHETSTONE_PROGRESS_PORT": str(free_port()), **extra}


# --------------------------------------------------------------------------- scenario


@dataclass
class Outcome:
    elapsed: float
    kills: int
    phases_at_kills: list[dict[str, int]] = field(default_factory=list)


def run_scenario(
    kube: Kube,
    ns: str,
    plans: list[JobPlan],
    rollouts: dict[str, float],
    supervisor: Supervisor,
    *,
    rng: random.Random | None,
    max_kills: int,
    timeout: float,
    diagnose: Callable[[], str] = str,
) -> tuple[Outcome, list[RolloutRig]]:
    """Create the objects (`rollouts`: name -> seconds until its Rollout is created), run the
    operator (killing it `max_kills` times at random moments when `rng` is given) and wait
    until everything is settled."""
    rigs = [rollout_rig(kube, ns, name, after) for name, after in rollouts.items()]
    actors = Actors(kube, ns, plans).start()
    started = time.monotonic()
    outcome = Outcome(elapsed=0.0, kills=0)

    def create_all() -> None:
        bodies = [(p.create_after, "FineTuneJob", p.body()) for p in plans]
        bodies += [(r.create_after, "Rollout", rollout_body(r)) for r in rigs]
        for after, kind, body in sorted(bodies, key=lambda b: b[0]):
            delay = started + after - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            kube.create(path(kind, ns), body)

    creator = threading.Thread(target=create_all, daemon=True)
    creator.start()
    supervisor.start()
    deadline = started + timeout
    try:
        if rng is not None:
            while supervisor.kills < max_kills and time.monotonic() < deadline:
                pause_until = time.monotonic() + rng.uniform(1.5, 5.0)
                while time.monotonic() < pause_until:
                    time.sleep(0.2)
                world = snapshot(kube, ns)
                if not creator.is_alive() and is_settled(world, plans, rigs):
                    break
                outcome.phases_at_kills.append(dict(phases(world)))
                supervisor.kill()
                time.sleep(rng.uniform(0.0, 1.0))
                supervisor.start()
        creator.join(max(1.0, deadline - time.monotonic()))

        def settled() -> bool:
            if not supervisor.current.alive():
                raise RuntimeError(f"operator exited:\n{supervisor.current.process.tail(60)}")
            return is_settled(snapshot(kube, ns), plans, rigs)

        try:
            wait_for(settled, timeout=max(5.0, deadline - time.monotonic()), what="settled")
        except TimeoutError:
            pytest.fail(
                f"not settled after {timeout:.0f}s (seed {SEED}): "
                f"{dict(phases(snapshot(kube, ns)))}"
                f"\nkubelet errors: {actors.errors[-5:]}\n{diagnose()}\n"
                + "".join(
                    f"rollout {rig.name}: KServe saw {rig.fake.percents()}; status "
                    f"{status_of(snapshot(kube, ns)['Rollout'].get(rig.name))}\n"
                    for rig in rigs
                )
                + supervisor.current.process.tail(80)
            )
    finally:
        actors.stop()
        for rig in rigs:
            rig.fake.stop()
    outcome.elapsed = time.monotonic() - started
    outcome.kills = supervisor.kills
    return outcome, rigs


# --------------------------------------------------------------------------- tests


def test_operator_killed_at_random_moments_loses_and_duplicates_nothing(
    kube: Kube,
    namespace: str,
    operator_rbac: str,
    control_plane: ControlPlane,
    operator_process: OperatorFactory,
) -> None:
    print(f"\nchaos seed {SEED} (WHETSTONE_CHAOS_SEED={SEED} replays the plan)")
    rng = random.Random(SEED)
    plans = make_plans(rng, CHAOS_JOBS, "chaos", spread=CHAOS_SPREAD)
    config = control_plane.sa_kubeconfig(namespace, operator_rbac)
    env = operator_env()
    supervisor = Supervisor(
        lambda: operator_process(config, args=["--namespace", namespace], env=env)
    )
    rigs = {f"svc-{i}": rng.uniform(0, CHAOS_SPREAD) for i in range(CHAOS_ROLLOUTS)}
    outcome, rigs_out = run_scenario(
        kube,
        namespace,
        plans,
        rigs,
        supervisor,
        rng=rng,
        max_kills=CHAOS_KILLS,
        timeout=120 + CHAOS_SPREAD + 6 * CHAOS_JOBS,
    )
    problems = check_jobs(kube, namespace, plans) + check_rollouts(kube, namespace, rigs_out)
    assert supervisor.unexpected_exits() == [], supervisor.logs()[-5000:]
    assert supervisor.kills >= min(CHAOS_KILLS, 1)
    record(
        "chaos",
        {
            "seed": SEED,
            "jobs": len(plans),
            "badData": sum(p.bad_data for p in plans),
            "rollouts": len(rigs_out),
            "kills": outcome.kills,
            "killsDuringRollouts": in_flight("Rollout", outcome.phases_at_kills),
            "killsDuringJobs": in_flight("FineTuneJob", outcome.phases_at_kills),
            "elapsedSeconds": round(outcome.elapsed, 1),
            "phasesAtKills": outcome.phases_at_kills,
            "lostOrDuplicated": len(problems),
        },
    )
    assert problems == [], f"seed {SEED}:\n" + "\n".join(problems)


@pytest.fixture
def fault_proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    workdir = make_temp_dir("whetstone-proxy-")
    cert, key = make_certificate(workdir)
    plan = FaultPlan(seed=SEED, rate=FAULT_RATE)
    proxy = FaultProxy(control_plane.server, control_plane.ca_file, cert, key, plan)
    try:
        with proxy:
            yield proxy
    finally:
        remove_temp_dir(workdir)


def test_api_faults_through_a_proxy_converge_the_same(
    kube: Kube,
    namespace: str,
    operator_rbac: str,
    control_plane: ControlPlane,
    fault_proxy: FaultProxy,
    operator_process: OperatorFactory,
) -> None:
    print(f"\nfault seed {SEED}, rate {FAULT_RATE} (WHETSTONE_CHAOS_SEED, WHETSTONE_FAULT_RATE)")
    rng = random.Random(SEED)
    plans = make_plans(rng, FAULT_JOBS, "fault", spread=FAULT_SPREAD)
    token = control_plane.service_account_token(namespace, operator_rbac)
    config = write_kubeconfig(
        control_plane.workdir / f"proxy-{namespace}.kubeconfig",
        fault_proxy.url,
        fault_proxy.cert.read_bytes(),
        f"system:serviceaccount:{namespace}:{operator_rbac}",
        token,
        namespace=namespace,
    )
    env = operator_env()
    supervisor = Supervisor(
        lambda: operator_process(config, args=["--namespace", namespace], env=env)
    )
    outcome, rigs = run_scenario(
        kube,
        namespace,
        plans,
        {f"svc-{i}": rng.uniform(0, FAULT_SPREAD) for i in range(FAULT_ROLLOUTS)},
        supervisor,
        rng=None,
        max_kills=0,
        timeout=150 + 6 * FAULT_JOBS,
        diagnose=lambda: f"proxy: {fault_proxy.stats.summary()} {fault_proxy.stats.refused[-10:]}",
    )
    fault_proxy.enabled = False
    problems = check_jobs(kube, namespace, plans) + check_rollouts(kube, namespace, rigs)
    logs = supervisor.logs()
    stats = fault_proxy.stats
    figures = {
        "seed": SEED,
        "rate": FAULT_RATE,
        "jobs": len(plans),
        "rollouts": len(rigs),
        "elapsedSeconds": round(outcome.elapsed, 1),
        **stats.summary(),
        "kopfRequestRetries": len(
            re.findall(r"Request attempt #\d+(?:/\d+)? failed; will retry", logs)
        ),
        "handlerRetries": len(re.findall(r"failed (?:with an exception|temporarily)", logs)),
        "lostOrDuplicated": len(problems),
    }
    record("faults", figures)
    assert supervisor.current.alive(), supervisor.current.process.tail(80)
    assert stats.refused == [], stats.refused[:10]
    assert figures["injectedTotal"] > 0 and figures["injected"].get("watch-cut"), figures
    assert figures["retriedTotal"] > 0, figures
    assert problems == [], f"seed {SEED}:\n" + "\n".join(problems)


PEERING_CRDS = REPO_ROOT / "charts" / "whetstone" / "crds" / "kopf.dev_peerings.yaml"
PEERING_LIFETIME = 6
HANDLER_RUN = re.compile(
    r"(?:Handler|Timer) '\w+' succeeded|created (?:Job|ConfigMap|ModelVersion) "
)


def drive(kube: Kube, ns: str, plans: list[JobPlan], timeout: float = 90) -> None:
    """Create the jobs, play their kubelet, wait until all are settled."""
    actors = Actors(kube, ns, plans).start()
    try:
        for plan in plans:
            kube.create(path("FineTuneJob", ns), plan.body())
        wait_for(
            lambda: is_settled(snapshot(kube, ns), plans, []),
            timeout=timeout,
            what=f"{[p.name for p in plans]} settled",
        )
    finally:
        actors.stop()


def plain_plans(prefix: str, count: int) -> list[JobPlan]:
    return [JobPlan(f"{prefix}-{i}", prefix, False, 0.0, 0.2, 0.5) for i in range(count)]


def test_two_peered_replicas_one_acts_and_the_survivor_takes_over(
    kube: Kube,
    namespace: str,
    control_plane: ControlPlane,
    rbac_for: Callable[..., tuple[str, Path]],
    operator_process: OperatorFactory,
) -> None:
    control_plane.install_crds([PEERING_CRDS])
    # The chart's RBAC for a namespaced install: the peering rules come in its Role.
    _, config = rbac_for(f"watchNamespaces[0]={namespace}")
    kube.create(
        resource_path("kopf.dev/v1", "kopfpeerings", namespace),
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "whetstone"}},
    )
    args = ["--namespace", namespace, "--peering", "whetstone"]

    def replica(priority: int) -> OperatorProcess:
        env = operator_env(
            WHETSTONE_PRIORITY=str(priority), WHETSTONE_PEERING_LIFETIME=str(PEERING_LIFETIME)
        )
        return operator_process(config, args=args, env=env)

    peering = resource_path("kopf.dev/v1", "kopfpeerings", namespace, "whetstone")

    def peers() -> list[int]:
        return sorted(p["priority"] for p in (kube.get(peering).get("status") or {}).values())

    active = replica(200)
    active.wait_for_log(r"Activity '_startup' succeeded")
    wait_for(lambda: peers() == [200], timeout=60, what="the first replica in the peering")
    standby = replica(100)
    # A replica that meets a higher priority at start begins paused and says nothing; the
    # peering record shows both, and only the active one's log shows handler runs.
    wait_for(lambda: peers() == [100, 200], timeout=60, what="both replicas in the peering")

    drive(kube, namespace, plain_plans("peer-a", 3))
    assert len(HANDLER_RUN.findall(active.logs())) > 0, active.process.tail(40)
    assert HANDLER_RUN.findall(standby.logs()) == [], standby.process.tail(40)
    assert "Resuming operations" not in standby.logs()
    assert "Pausing operations" not in active.logs()

    active.process.signal_group(signal.SIGKILL)
    active.process.popen.wait(10)
    killed = time.monotonic()
    standby.wait_for_log(r"Resuming operations after the pause", timeout=PEERING_LIFETIME + 30)
    handover = time.monotonic() - killed
    drive(kube, namespace, plain_plans("peer-b", 2))
    taken_over = time.monotonic() - killed
    assert len(HANDLER_RUN.findall(standby.logs())) > 0
    record(
        "peering",
        {
            "lifetimeSeconds": PEERING_LIFETIME,
            "handoverSeconds": round(handover, 1),
            "newJobsSucceededAfterSeconds": round(taken_over, 1),
            "standbyHandlerRunsWhilePaused": 0,
        },
    )
    assert handover <= PEERING_LIFETIME + 15, handover


@pytest.fixture
def webhook_operator(
    control_plane: ControlPlane,
    namespace: str,
    rbac_for: Callable[..., tuple[str, Path]],
    operator_process: OperatorFactory,
) -> Iterator[OperatorProcess]:
    """The operator with its admission webhook, enforcing immutability only: spec validation
    stays with the schema and the reconcile, each of which the corpus exercises."""
    _, config = rbac_for(
        "webhook.enabled=true",
        "webhook.configurations=operator",
        f"webhook.configurationName=bad-{namespace[-6:]}.whetstone.dev",
    )
    with webhook_operator_running(
        control_plane,
        operator_process,
        config,
        namespace,
        f"bad-{namespace[-6:]}.whetstone.dev",
        operator_env(
            WHETSTONE_WEBHOOK_VALIDATE_SPECS="false", WHETSTONE_APPROVAL_KEY="reliability"
        ),
    ) as op:
        yield op


def test_bad_input_corpus_is_refused_and_the_operator_survives(
    kube: Kube,
    namespace: str,
    control_plane: ControlPlane,
    webhook_operator: OperatorProcess,
) -> None:
    files = sorted(CORPUS.glob("*.yaml"))
    assert len(files) >= 60
    cel = kube_minor_version(control_plane.tools.kube_apiserver) >= 25
    problems: list[str] = []
    awaiting: dict[str, tuple[str, str, str]] = {}
    refused: Counter[str] = Counter()
    started = time.monotonic()
    cluster_scoped: list[str] = []
    for file in files:
        head = sample_header(file)
        field_, refuser = head["field"], head["refused-by"]
        docs = [d for d in yaml.safe_load_all(file.read_text()) if d]
        kind, name = docs[0]["kind"], docs[0]["metadata"]["name"]
        try:
            kube.create(path(kind, namespace), docs[0])
            if kind in CLUSTER_PLURALS:
                cluster_scoped.append(path(kind, namespace, name))
        except ApiError as exc:
            allowed = refuser == "schema" or (cel and refuser == "operator")
            # The 1.20 API server names list items without their index: spec.gates.metric.
            named = field_ in exc.message or re.sub(r"\[\d+\]", "", field_) in exc.message
            if exc.status == 422 and allowed and named:
                refused["schema"] += 1
            else:
                problems.append(f"{file.name}: create refused ({exc.status}): {exc.message}")
            continue
        if refuser == "schema":
            problems.append(f"{file.name}: accepted, but the schema should refuse {field_}")
        elif refuser == "operator":
            awaiting[name] = (kind, field_, head.get("mentions", ""))
        else:
            try:
                # The operator may write the object meanwhile (labels, status): retry a 409.
                kube.update_with_retry(
                    path(kind, namespace, name),
                    lambda current, change=docs[1]: {**change, "metadata": current["metadata"]},
                )
                problems.append(f"{file.name}: the change of {field_} was accepted")
            except ApiError as exc:
                if field_ in exc.message:
                    refused["webhook"] += 1
                else:
                    problems.append(f"{file.name}: refused without naming {field_}: {exc}")

    def marked() -> bool:
        for name, (kind, field_, mentions) in list(awaiting.items()):
            status = status_of(kube.get(path(kind, namespace, name)))
            valid = condition(status, "Valid")
            if valid.get("status") == "False":
                message = valid.get("message", "")
                if field_ not in message or mentions not in message:
                    problems.append(f"{name}: Valid=False without naming {field_}: {message}")
                refused["operator"] += 1
                del awaiting[name]
        return not awaiting

    try:
        wait_for(marked, timeout=90, what="Valid=False on every object the schema lets through")
    except TimeoutError:
        problems.append(f"never marked Valid=False: {sorted(awaiting)}")
    finally:
        for where in cluster_scoped:
            kube.delete(where)
    log = webhook_operator.logs()
    jobs = [
        j["metadata"]["name"]
        for j in kube.list(resource_path("batch/v1", "jobs", namespace))
        if not j["metadata"]["name"].startswith("mv-change-")
        and not j["metadata"]["name"].startswith("mv-remove-")
    ]
    record(
        "bad-input",
        {
            "inputs": len(files),
            "refused": dict(refused),
            "seconds": round(time.monotonic() - started, 1),
            "operatorAlive": webhook_operator.alive(),
            "tracebacks": log.count("Traceback"),
        },
    )
    assert webhook_operator.alive(), webhook_operator.process.tail(60)
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert jobs == [], f"children created for invalid objects: {jobs}"
    assert problems == [], "\n".join(problems)
    assert sum(refused.values()) == len(files)


def test_names_longer_than_a_label_value_still_run(
    kube: Kube,
    namespace: str,
    control_plane: ControlPlane,
    operator_rbac: str,
    operator_process: OperatorFactory,
) -> None:
    # Kubernetes names hold 253 characters, label values 63: the children carry the owner's
    # name in their labels, and a registered ModelVersion's name grows with the model's.
    name = "a-fine-tune-whose-name-is-much-longer-than-any-label-value-may-be-" + "x" * 40
    plan = JobPlan(name, "m" * 40, False, 0.0, 0.2, 0.3)
    config = control_plane.sa_kubeconfig(namespace, operator_rbac)
    op = operator_process(config, args=["--namespace", namespace], env=operator_env())
    drive(kube, namespace, [plan])
    assert check_jobs(kube, namespace, [plan]) == []
    assert "Traceback" not in op.logs()
