"""FineTuneJob end to end on the real control plane: the operator runs as a subprocess under
the chart's RBAC, the test plays the kubelet (pod status, termination messages) and the
trainer's progress endpoint."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import yaml

from cluster import (
    ControlPlane,
    Kube,
    Kubelet,
    OperatorFactory,
    free_port,
    resource_path,
    wait_for,
)
from tenancy import platform_policy, policy_path
from tests.conftest import REPO_ROOT
from tests.loopback import LoopbackServer, QuietHandler

API = "whetstone.dev/v1alpha1"
SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())
DIGEST = "sha256:" + "ab" * 32
REPORT = {
    "examples": 120,
    "validationExamples": 12,
    "dropped": {"duplicate": 3},
    "redacted": {"email": 2},
}
RESULT = {
    "artifactUri": "s3://models/grader/tiny/final/",
    "artifactFormat": "merged",
    "manifestDigest": DIGEST,
    "metrics": {
        "evalLoss": 0.9,
        "perplexity": 2.46,
        "exactMatch": 0.86,
        "rougeL": 0.71,
        "baseline": {"exactMatch": 0.6, "rougeL": 0.5},
    },
    "dataReport": {**REPORT, "datasetDigest": "sha256:" + "cd" * 32},
    "hyperparameters": {"learningRate": 2e-5, "epochs": 3, "batchSize": 4},
    "steps": 30,
}


def ftj_path(ns: str, name: str | None = None) -> str:
    return resource_path(API, "finetunejobs", ns, name)


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(autouse=True)
def tenant_policy(kube: Kube, namespace: str) -> Iterator[str]:
    """A PlatformPolicy for this test's namespace, as a platform team writes one: it gives
    every trainer pod the GPU nodes' toleration."""
    with platform_policy(
        kube, namespace, {"training": {"tolerations": [GPU_TOLERATION]}}, prefix="ftj"
    ) as name:
        yield name


def finetunejob(name: str, **spec_changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    body["metadata"] = {"name": name}
    body["spec"].update(spec_changes)
    return body


class ProgressServer:
    """Stands in for the trainer's progress endpoint on a loopback port."""

    def __init__(self, port: int) -> None:
        self.payload: dict[str, Any] = {}
        self.checkpoints: list[dict[str, Any]] = []
        self.hits = 0
        outer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                data = {"/progress": outer.payload, "/checkpoints": outer.checkpoints}
                self.reply(200 if self.path in data else 404, data.get(self.path, {}))

        self.server = LoopbackServer(Handler, port)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def progress_port() -> Iterator[ProgressServer]:
    server = ProgressServer(free_port())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def start_operator(
    control_plane: ControlPlane,
    namespace: str,
    operator_rbac: str,
    operator_process: OperatorFactory,
    progress_port: ProgressServer,
) -> Callable[[], Any]:
    config = control_plane.sa_kubeconfig(namespace, operator_rbac)
    env = {
        "WHETSTONE_PROGRESS_PORT": str(progress_port.server.port),
        "WHETSTONE_TRAINER_IMAGE": "registry.local/whetstone-trainer:test",
    }

    def start(resync_seconds: float = 1) -> Any:
        return operator_process(
            config,
            args=["--namespace", namespace],
            env={**env, "WHETSTONE_RESYNC_SECONDS": str(resync_seconds)},
        )

    return start


def wait_status(
    kube: Kube,
    ns: str,
    name: str,
    probe: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 60,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.get(ftj_path(ns, name))
        status = obj.get("status") or {}
        return obj if probe(status) else None

    return wait_for(check, timeout=timeout, what=what)


def jobs(kube: Kube, ns: str) -> list[dict[str, Any]]:
    """The FineTuneJobs' Jobs (a registered ModelVersion's verify Job is not one)."""
    return kube.list(
        resource_path("batch/v1", "jobs", ns), labelSelector="whetstone.dev/finetunejob"
    )


def set_pod_ip(kube: Kube, ns: str, pod: str, ip: str) -> None:
    path = resource_path("v1", "pods", ns, pod, "status")

    def mutate(obj: dict[str, Any]) -> dict[str, Any]:
        obj["status"]["podIP"] = ip
        return obj

    kube.update_with_retry(path, mutate)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def events_for(kube: Kube, ns: str, name: str) -> list[str]:
    items = kube.list(resource_path("v1", "events", ns))
    return [e["reason"] for e in items if e.get("involvedObject", {}).get("name") == name]


def drive_to_training(kube: Kube, kubelet: Kubelet, ns: str, name: str) -> dict[str, Any]:
    """Validation pod succeeds with a data report; returns the trainer Job."""
    (vpod,) = kubelet.wait_job_pods(ns, f"{name}-validate")
    kubelet.succeed(ns, vpod["metadata"]["name"], message=json.dumps(REPORT))
    return wait_for(
        lambda: next(
            (j for j in jobs(kube, ns) if j["metadata"]["name"] == f"{name}-train-1"), None
        ),
        timeout=60,
        what="the trainer Job",
    )


def test_happy_path_to_a_registered_model_version(
    kube: Kube,
    kubelet: Kubelet,
    control_plane: ControlPlane,
    namespace: str,
    start_operator: Callable[[], Any],
    progress_port: ProgressServer,
) -> None:
    ns, name = namespace, "grader-v3"
    op = start_operator()
    kube.create(ftj_path(ns), finetunejob(name))

    obj = wait_status(kube, ns, name, lambda s: s.get("phase") == "Validating", "Validating")
    # No finalizer: deleting a job never waits for the operator.
    assert not obj["metadata"].get("finalizers"), obj["metadata"]
    (vjob,) = [j for j in jobs(kube, ns) if j["metadata"]["name"] == f"{name}-validate"]
    vcontainer = vjob["spec"]["template"]["spec"]["containers"][0]
    assert "--validate-only" in vcontainer["args"]
    assert "nvidia.com/gpu" not in json.dumps(vcontainer["resources"])
    assert vjob["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    tjob = drive_to_training(kube, kubelet, ns, name)
    pod_spec = tjob["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod_spec["automountServiceAccountToken"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "registry.local/whetstone-trainer:test"

    (tpod,) = kubelet.wait_job_pods(ns, f"{name}-train-1")
    pod_name = tpod["metadata"]["name"]
    kubelet.run(ns, pod_name)
    set_pod_ip(kube, ns, pod_name, "127.0.0.1")
    progress_port.payload = {
        "step": 12,
        "totalSteps": 30,
        "epoch": 1.2,
        "percent": 40,
        "loss": 0.91,
        "evalLoss": 1.02,
        "tokensPerSecond": 51000.0,
        "eta": "2026-11-22T21:40:00Z",
    }
    progress_port.checkpoints = [
        {"step": 10, "uri": "s3://models/grader/grader-v3/checkpoints/step-10/", "evalLoss": 1.1}
    ]
    obj = wait_status(
        kube,
        ns,
        name,
        lambda s: (s.get("progress") or {}).get("percent") == 40 and s.get("checkpoints"),
        "progress 40% and a checkpoint in status",
    )
    assert obj["status"]["checkpoints"][0]["step"] == 10
    assert obj["status"]["phase"] == "Running"
    assert obj["status"]["dataReport"]["redacted"] == {"email": 2}
    table = control_plane.kubectl("get", "ftj", name, "-n", ns).stdout
    assert "Running" in table and "40" in table and "0.91" in table, table

    kubelet.succeed(ns, pod_name, message=json.dumps(RESULT))
    obj = wait_status(kube, ns, name, lambda s: s.get("phase") == "Succeeded", "Succeeded")
    status = obj["status"]
    assert status["artifactDigest"] == DIGEST
    assert status["metrics"]["exactMatch"] == 0.86
    mv_name = status["modelVersion"]
    assert mv_name.startswith("grader-llama-3-2-1b-instruct-v1-")
    mv = kube.get(resource_path(API, "modelversions", ns, mv_name))
    assert mv["spec"]["artifact"] == {
        "uri": RESULT["artifactUri"],
        "format": "merged",
        "digest": DIGEST,
        "secretRef": {"name": "s3-creds"},
    }
    assert mv["spec"]["source"]["fineTuneJob"] == name
    assert mv["spec"]["gates"] == SAMPLE["spec"]["registration"]["gates"]
    assert len(kube.list(resource_path(API, "modelversions", ns))) == 1
    reasons = events_for(kube, ns, name)
    for reason in ("ValidationStarted", "TrainingStarted", "Registered", "Succeeded"):
        assert reason in reasons, reasons
    assert sorted(j["metadata"]["name"] for j in jobs(kube, ns)) == [
        f"{name}-train-1",
        f"{name}-validate",
    ]
    # The chart's RBAC is exactly enough: the whole path ran without a single refusal.
    assert "forbidden" not in op.logs().lower(), op.process.tail(40)


def test_invalid_spec_creates_nothing_until_fixed(
    kube: Kube, namespace: str, start_operator: Callable[[], Any]
) -> None:
    ns, name = namespace, "bad-spec"
    start_operator()
    body = finetunejob(name)
    body["spec"]["dataset"]["validationSplit"] = 0.1  # and validation.uri: contradictory
    kube.create(ftj_path(ns), body)
    obj = wait_status(
        kube,
        ns,
        name,
        lambda s: any(
            c["type"] == "Valid" and c["status"] == "False" for c in s.get("conditions", [])
        ),
        "Valid=False",
    )
    assert "spec.dataset" in obj["status"]["message"]
    assert "validationSplit" in obj["status"]["message"]
    assert "InvalidSpec" in events_for(kube, ns, name)
    assert jobs(kube, ns) == []

    kube.patch(ftj_path(ns, name), {"spec": {"dataset": {"validationSplit": None}}})
    wait_status(kube, ns, name, lambda s: s.get("phase") == "Validating", "Validating after fix")
    assert [j["metadata"]["name"] for j in jobs(kube, ns)] == [f"{name}-validate"]


def test_bad_data_fails_without_any_gpu_pod(
    kube: Kube, kubelet: Kubelet, namespace: str, start_operator: Callable[[], Any]
) -> None:
    ns, name = namespace, "bad-data"
    start_operator()
    kube.create(ftj_path(ns), finetunejob(name))
    (vpod,) = kubelet.wait_job_pods(ns, f"{name}-validate")
    report = {
        "examples": 0,
        "dropped": {"invalid": 2},
        "invalidLines": ["train.jsonl:3: not JSON", "train.jsonl:9: no assistant turn"],
    }
    kubelet.fail(ns, vpod["metadata"]["name"], message=json.dumps(report), exit_code=3)
    obj = wait_status(kube, ns, name, lambda s: s.get("phase") == "Failed", "Failed")
    assert obj["status"]["dataReport"]["invalidLines"] == report["invalidLines"]
    assert "train.jsonl:3" in obj["status"]["message"]
    pods = kubelet.pods(ns)
    # The policy's tolerations reach the validation pod too; GPUs never do.
    containers = [c for p in pods for c in p["spec"]["containers"]]
    assert containers and all("gpu" not in json.dumps(c.get("resources")) for c in containers)
    assert [j["metadata"]["name"] for j in jobs(kube, ns)] == [f"{name}-validate"]


def test_operator_restart_mid_run_duplicates_nothing(
    kube: Kube, kubelet: Kubelet, namespace: str, start_operator: Callable[[], Any]
) -> None:
    ns, name = namespace, "restarted"
    op = start_operator()
    kube.create(ftj_path(ns), finetunejob(name))
    drive_to_training(kube, kubelet, ns, name)
    op.process.signal_group(9)
    op.process.popen.wait(10)
    start_operator()
    (tpod,) = kubelet.wait_job_pods(ns, f"{name}-train-1")
    kubelet.succeed(ns, tpod["metadata"]["name"], message=json.dumps(RESULT))
    wait_status(kube, ns, name, lambda s: s.get("phase") == "Succeeded", "Succeeded")
    assert len(jobs(kube, ns)) == 2
    assert (
        len(
            kube.list(
                resource_path("v1", "configmaps", ns), labelSelector="whetstone.dev/finetunejob"
            )
        )
        == 1
    )
    assert len(kube.list(resource_path(API, "modelversions", ns))) == 1


def test_a_finished_child_job_moves_its_finetunejob_on_without_waiting_for_the_resync(
    kube: Kube, kubelet: Kubelet, namespace: str, start_operator: Callable[..., Any]
) -> None:
    """With a resync interval of 10 minutes, only the Job events can move the job along in
    time: validation done -> trainer Job, trainer done -> Succeeded and registered."""
    ns, name = namespace, "prompt"
    start_operator(resync_seconds=600)
    kube.create(ftj_path(ns), finetunejob(name))
    started = time.monotonic()
    drive_to_training(kube, kubelet, ns, name)
    to_training = time.monotonic() - started
    (tpod,) = kubelet.wait_job_pods(ns, f"{name}-train-1")
    kubelet.succeed(ns, tpod["metadata"]["name"], message=json.dumps(RESULT))
    started = time.monotonic()
    wait_status(kube, ns, name, lambda s: s.get("phase") == "Succeeded", "Succeeded", 120)
    to_success = time.monotonic() - started
    print(f"\nchild Job done -> next phase: {to_training:.1f}s, {to_success:.1f}s")
    assert len(kube.list(resource_path(API, "modelversions", ns))) == 1


def test_a_spec_change_mid_run_is_reported_and_never_mixed_into_new_pods(
    kube: Kube, kubelet: Kubelet, namespace: str, start_operator: Callable[..., Any]
) -> None:
    ns, name = namespace, "changed"
    start_operator()
    kube.create(ftj_path(ns), finetunejob(name))
    drive_to_training(kube, kubelet, ns, name)
    started_lr = SAMPLE["spec"]["hyperparameters"]["learningRate"]
    kube.patch(ftj_path(ns, name), {"spec": {"hyperparameters": {"learningRate": 1e-3}}})

    def spec_applied(status: dict[str, Any]) -> str | None:
        found = [c for c in status.get("conditions") or [] if c["type"] == "SpecApplied"]
        return found[0]["status"] if found else None

    obj = wait_status(kube, ns, name, lambda s: spec_applied(s) == "False", "SpecApplied False")
    assert obj["status"]["phase"] == "Running"  # the started run goes on
    assert "SpecChangedAfterStart" in events_for(kube, ns, name)

    # Suspend and resume: no trainer pod is made from a spec the run did not start with.
    kube.patch(ftj_path(ns, name), {"spec": {"suspend": True}})
    wait_status(kube, ns, name, lambda s: s.get("phase") == "Suspended", "Suspended")
    kube.patch(ftj_path(ns, name), {"spec": {"suspend": False}})
    wait_status(
        kube,
        ns,
        name,
        lambda s: "not starting trainer pods" in s.get("message", ""),
        "the resume held",
    )
    time.sleep(3)  # three resyncs
    held = kube.get(ftj_path(ns, name))
    assert held["status"]["phase"] == "Suspended", held["status"]
    assert [j["metadata"]["name"] for j in jobs(kube, ns)] == [f"{name}-validate"]

    # Reverted: the run resumes as it started.
    kube.patch(ftj_path(ns, name), {"spec": {"hyperparameters": {"learningRate": started_lr}}})
    resumed = wait_status(kube, ns, name, lambda s: s.get("attempt") == 2, "a second run")
    assert spec_applied(resumed["status"]) == "True"
    assert f"{name}-train-2" in [j["metadata"]["name"] for j in jobs(kube, ns)]


def test_delete_mid_run_garbage_collects_children(
    kube: Kube, kubelet: Kubelet, namespace: str, start_operator: Callable[[], Any]
) -> None:
    ns, name = namespace, "deleted"
    start_operator()
    kube.create(ftj_path(ns), finetunejob(name))
    drive_to_training(kube, kubelet, ns, name)
    kube.delete(ftj_path(ns, name))
    wait_for(lambda: not jobs(kube, ns) or None, timeout=90, what="Jobs garbage-collected")
    wait_for(
        lambda: (
            not kube.list(
                resource_path("v1", "configmaps", ns), labelSelector="whetstone.dev/finetunejob"
            )
            or None
        ),
        timeout=90,
        what="ConfigMap garbage-collected",
    )


def test_suspend_stops_pods_and_resume_starts_a_new_run(
    kube: Kube, kubelet: Kubelet, namespace: str, start_operator: Callable[[], Any]
) -> None:
    ns, name = namespace, "suspended"
    start_operator()
    kube.create(ftj_path(ns), finetunejob(name))
    drive_to_training(kube, kubelet, ns, name)
    kube.patch(ftj_path(ns, name), {"spec": {"suspend": True}})
    wait_status(kube, ns, name, lambda s: s.get("phase") == "Suspended", "Suspended")
    wait_for(
        lambda: all(j["metadata"]["name"] != f"{name}-train-1" for j in jobs(kube, ns)) or None,
        timeout=60,
        what="trainer Job deleted",
    )
    kube.patch(ftj_path(ns, name), {"spec": {"suspend": False}})
    obj = wait_status(kube, ns, name, lambda s: s.get("phase") == "Running", "Running again")
    assert obj["status"]["attempt"] == 2
    wait_for(
        lambda: any(j["metadata"]["name"] == f"{name}-train-2" for j in jobs(kube, ns)) or None,
        timeout=30,
        what="run 2 Job",
    )


def test_a_secret_value_never_leaves_its_secret(
    kube: Kube,
    kubelet: Kubelet,
    control_plane: ControlPlane,
    namespace: str,
    start_operator: Callable[[], Any],
) -> None:
    """A sentinel credential is only ever referenced: it shows up in no ConfigMap, status,
    Event, ModelVersion or operator log line, and no pod spec carries it."""
    ns, name = namespace, "sentinel"
    sentinel = "SENTINEL-" + "7f3a9c" * 4
    kube.create(
        resource_path("v1", "secrets", ns),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds"},
            "stringData": {"AWS_SECRET_ACCESS_KEY": sentinel, "HF_TOKEN": sentinel},
        },
    )
    op = start_operator()
    kube.create(ftj_path(ns), finetunejob(name))
    drive_to_training(kube, kubelet, ns, name)
    (tpod,) = kubelet.wait_job_pods(ns, f"{name}-train-1")
    kubelet.succeed(ns, tpod["metadata"]["name"], message=json.dumps(RESULT))
    wait_status(kube, ns, name, lambda s: s.get("phase") == "Succeeded", "Succeeded")
    seen = {
        "configmaps": kube.list(resource_path("v1", "configmaps", ns)),
        "finetunejobs": kube.list(ftj_path(ns)),
        "modelversions": kube.list(resource_path(API, "modelversions", ns)),
        "events": kube.list(resource_path("v1", "events", ns)),
        "jobs": kube.list(resource_path("batch/v1", "jobs", ns)),
        "pods": kube.list(resource_path("v1", "pods", ns)),
    }
    for kind, items in seen.items():
        assert sentinel not in json.dumps(items), f"the secret value leaked into {kind}"
    assert sentinel not in op.logs()


def test_the_platform_policy_admits_places_and_counts_gpu_time(
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    tenant_policy: str,
    start_operator: Callable[[], Any],
) -> None:
    """A job over the policy's GPU limit waits in Pending with nothing created; the raised
    limit starts it, with the policy's node label forced onto its pods; its GPU time is in
    status.cost."""
    ns, name = namespace, "governed"
    kube.patch(policy_path(tenant_policy), {"spec": {"training": {"maxGPUsPerJob": 4}}})
    start_operator()
    kube.create(ftj_path(ns), finetunejob(name))
    obj = wait_status(
        kube,
        ns,
        name,
        lambda s: condition(s, "PolicyAllowed").get("status") == "False",
        "PolicyAllowed False",
    )
    message = condition(obj["status"], "PolicyAllowed")["message"]
    assert "spec.resources.gpusPerNode" in message, message
    assert f"PlatformPolicy {tenant_policy} spec.training.maxGPUsPerJob" in message, message
    assert obj["status"]["phase"] == "Pending"
    time.sleep(3)  # three resyncs: still nothing created, one Event
    assert jobs(kube, ns) == []
    assert events_for(kube, ns, name).count("PolicyViolation") == 1

    kube.patch(
        policy_path(tenant_policy),
        {"spec": {"training": {"maxGPUsPerJob": 8, "nodeSelector": {"pool": "training"}}}},
    )
    obj = wait_status(kube, ns, name, lambda s: s.get("phase") == "Validating", "Validating")
    assert condition(obj["status"], "PolicyAllowed")["status"] == "True"
    (vjob,) = jobs(kube, ns)
    assert vjob["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "training"}
    tjob = drive_to_training(kube, kubelet, ns, name)
    assert tjob["spec"]["template"]["spec"]["nodeSelector"] == {
        **SAMPLE["spec"]["resources"]["nodeSelector"],
        "pool": "training",
    }

    (tpod,) = kubelet.wait_job_pods(ns, f"{name}-train-1")
    kubelet.run(ns, tpod["metadata"]["name"])
    time.sleep(1.5)
    done = kubelet.succeed(ns, tpod["metadata"]["name"], message=json.dumps(RESULT))
    obj = wait_status(kube, ns, name, lambda s: s.get("phase") == "Succeeded", "Succeeded")
    started = done["status"]["startTime"]
    finished = done["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    assert seconds >= 1
    assert obj["status"]["cost"] == {
        "gpuSeconds": seconds * 8,
        "attempts": [
            {
                "attempt": 1,
                "gpus": 8,
                "startTime": started,
                "endTime": finished,
                "gpuSeconds": seconds * 8,
            }
        ],
    }
