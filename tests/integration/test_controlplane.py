"""The test control plane itself, against the real API server: CRDs, schema
validation, the status subresource, RBAC, the Job controller driven by a fake
kubelet, owner-reference garbage collection, teardown, and the operator's entry
point running under a ServiceAccount."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import (
    CRD_DIR,
    ISVC_CRD,
    REPO_ROOT,
    ApiError,
    ControlPlane,
    KServe,
    Kube,
    Kubelet,
    ManagedProcess,
    OperatorFactory,
    resource_path,
    wait_for,
)

pytestmark = pytest.mark.integration

API = "whetstone.dev/v1alpha1"


def finetunejob(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "baseModel": {"uri": "tiny://llama"},
        "dataset": {"train": {"uri": "file:///data/train.jsonl"}},
        "output": {"uri": "file:///artifacts/"},
    }
    body.update(spec)
    return {"apiVersion": API, "kind": "FineTuneJob", "metadata": {"name": name}, "spec": body}


def ftj_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return resource_path(API, "finetunejobs", namespace, name, sub)


def crd_docs() -> list[dict[str, Any]]:
    docs = []
    for path in [*sorted(CRD_DIR.glob("*.yaml")), ISVC_CRD]:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def normalized(text: str) -> str:
    return " ".join(text.split())


def kubectl_until_ok(
    control_plane: ControlPlane, *args: str, kubeconfig: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Retry a kubectl command: discovery and RBAC caches settle within moments."""

    def attempt() -> subprocess.CompletedProcess[str] | None:
        proc = control_plane.kubectl(*args, kubeconfig=kubeconfig, check=False)
        return proc if proc.returncode == 0 else None

    return wait_for(attempt, timeout=timeout, what=f"kubectl {' '.join(args)}")


# --------------------------------------------------------------------------- CRDs


def test_crds_are_established(kube: Kube, control_plane: ControlPlane, namespace: str) -> None:
    docs = crd_docs()
    assert {d["spec"]["names"]["kind"] for d in docs} >= {
        "FineTuneJob",
        "ModelVersion",
        "Rollout",
        "InferenceService",
    }
    for doc in docs:
        crd = kube.get(
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{doc['metadata']['name']}"
        )
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True", crd["status"]
        plural = doc["spec"]["names"]["plural"]
        out = control_plane.kubectl("get", plural, "-n", namespace)
        assert out.returncode == 0


def test_kubectl_explain_prints_descriptions(control_plane: ControlPlane) -> None:
    schema = next(d for d in crd_docs() if d["spec"]["names"]["kind"] == "FineTuneJob")["spec"][
        "versions"
    ][0]["schema"]["openAPIV3Schema"]
    hyper = schema["properties"]["spec"]["properties"]["hyperparameters"]
    out = kubectl_until_ok(control_plane, "explain", "finetunejob.spec.hyperparameters")
    text = normalized(out.stdout)
    assert normalized(hyper["description"]) in text
    for field, prop in hyper["properties"].items():
        assert field in text
        if "description" in prop:
            assert normalized(prop["description"]) in text, field


def test_wrong_typed_field_is_rejected_with_field_error(kube: Kube, namespace: str) -> None:
    kube.create(ftj_path(namespace), finetunejob("typed-ok"))
    bad = finetunejob("typed-bad", hyperparameters={"learningRate": "fast", "batchSize": "big"})
    with pytest.raises(ApiError) as err:
        kube.create(ftj_path(namespace), bad)
    assert err.value.status == 422
    assert err.value.reason == "Invalid"
    assert isinstance(err.value.body, dict)
    fields = {c["field"] for c in err.value.body["details"]["causes"]}
    assert {"spec.hyperparameters.learningRate", "spec.hyperparameters.batchSize"} <= fields
    assert "must be of type" in err.value.message or "Invalid value" in err.value.message
    # A required field that is missing is a field error too.
    missing = finetunejob("missing-output")
    del missing["spec"]["output"]
    with pytest.raises(ApiError) as err:
        kube.create(ftj_path(namespace), missing)
    assert "spec.output" in err.value.message


def test_status_subresource_cannot_change_spec(kube: Kube, namespace: str) -> None:
    created = kube.create(ftj_path(namespace), finetunejob("status-only"))
    original_spec = created["spec"]
    # A status write that also tries to change spec: spec is ignored.
    kube.patch(
        ftj_path(namespace, "status-only", "status"),
        {
            "spec": {"baseModel": {"uri": "hf://someone/else"}},
            "status": {"phase": "Running", "observedGeneration": 1},
        },
    )
    after = kube.get(ftj_path(namespace, "status-only"))
    assert after["spec"] == original_spec
    assert after["status"]["phase"] == "Running"
    assert after["metadata"]["generation"] == created["metadata"]["generation"]
    # And the main resource cannot write status.
    kube.patch(ftj_path(namespace, "status-only"), {"status": {"phase": "Failed"}})
    assert kube.get(ftj_path(namespace, "status-only"))["status"]["phase"] == "Running"
    # Status values are validated too.
    with pytest.raises(ApiError) as err:
        kube.patch(ftj_path(namespace, "status-only", "status"), {"status": {"phase": "Bogus"}})
    assert err.value.status == 422


# --------------------------------------------------------------------------- RBAC


def test_service_account_needs_a_role(
    control_plane: ControlPlane, sa_kubeconfig: Callable[[str, str], Path], namespace: str
) -> None:
    config = sa_kubeconfig(namespace, "reader")
    denied = control_plane.kubectl("get", "finetunejobs", kubeconfig=config, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr

    control_plane.apply(
        textwrap.dedent(f"""
        apiVersion: rbac.authorization.k8s.io/v1
        kind: Role
        metadata: {{name: ftj-reader, namespace: {namespace}}}
        rules:
        - apiGroups: [whetstone.dev]
          resources: [finetunejobs]
          verbs: [get, list, watch]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: RoleBinding
        metadata: {{name: ftj-reader, namespace: {namespace}}}
        roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: ftj-reader}}
        subjects:
        - {{kind: ServiceAccount, name: reader, namespace: {namespace}}}
    """)
    )
    allowed = kubectl_until_ok(control_plane, "get", "finetunejobs", kubeconfig=config)
    assert "forbidden" not in allowed.stderr.lower()
    # Exactly what the Role grants: reading yes, writing no.
    sa = control_plane.sa_client(namespace, "reader")
    with pytest.raises(ApiError) as err:
        sa.create(ftj_path(namespace), finetunejob("not-allowed"))
    assert err.value.status == 403
    with pytest.raises(ApiError) as err:
        sa.list(resource_path(API, "finetunejobs", "default"))
    assert err.value.status == 403


# --------------------------------------------------------------------------- controllers


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "example.invalid/trainer:test",
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                }
            },
        },
    }


def test_kubelet_helper_completes_a_job(kube: Kube, kubelet: Kubelet, namespace: str) -> None:
    kube.create(resource_path("batch/v1", "jobs", namespace), job("train"))
    (pod,) = kubelet.wait_job_pods(namespace, "train")
    name = pod["metadata"]["name"]
    running = kubelet.run(namespace, name)
    assert running["status"]["phase"] == "Running"
    wait_for(
        lambda: (
            kube.get(resource_path("batch/v1", "jobs", namespace, "train"))
            .get("status", {})
            .get("active")
            == 1
        ),
        timeout=30,
        what="Job active=1",
    )
    kubelet.succeed(namespace, name, message='{"loss": 1.3}')

    def complete() -> dict[str, Any] | None:
        status = kube.get(resource_path("batch/v1", "jobs", namespace, "train")).get("status", {})
        return status if status.get("succeeded") == 1 else None

    status = wait_for(complete, timeout=60, what="Job succeeded=1")
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in status["conditions"])
    terminated = kube.get(resource_path("v1", "pods", namespace, name))["status"][
        "containerStatuses"
    ][0]["state"]["terminated"]
    assert terminated == {
        **terminated,
        "exitCode": 0,
        "reason": "Completed",
        "message": '{"loss": 1.3}',
    }


def test_kubelet_helper_fails_a_job_with_a_message(
    kube: Kube, kubelet: Kubelet, namespace: str
) -> None:
    kube.create(resource_path("batch/v1", "jobs", namespace), job("oom"))
    (pod,) = kubelet.wait_job_pods(namespace, "oom")
    kubelet.fail(
        namespace, pod["metadata"]["name"], "CUDA out of memory", reason="OOMKilled", exit_code=137
    )

    def failed() -> dict[str, Any] | None:
        status = kube.get(resource_path("batch/v1", "jobs", namespace, "oom")).get("status", {})
        return status if status.get("failed") == 1 else None

    status = wait_for(failed, timeout=60, what="Job failed=1")
    assert any(
        c["type"] == "Failed" and c["reason"] == "BackoffLimitExceeded"
        for c in status.get("conditions", [])
    )
    state = kube.get(resource_path("v1", "pods", namespace, pod["metadata"]["name"]))["status"][
        "containerStatuses"
    ][0]["state"]["terminated"]
    assert (state["reason"], state["exitCode"], state["message"]) == (
        "OOMKilled",
        137,
        "CUDA out of memory",
    )


def test_owner_reference_garbage_collection(kube: Kube, namespace: str) -> None:
    owner = kube.create(ftj_path(namespace), finetunejob("owner"))
    ref = {
        "apiVersion": API,
        "kind": "FineTuneJob",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    cm_path = resource_path("v1", "configmaps", namespace)
    kube.create(
        cm_path,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owner-config", "ownerReferences": [ref]},
            "data": {"config.yaml": "{}"},
        },
    )
    kube.create(
        cm_path,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unowned"}, "data": {}},
    )
    kube.delete(ftj_path(namespace, "owner"), propagation="Background")
    wait_for(
        lambda: not kube.exists(f"{cm_path}/owner-config"),
        timeout=90,
        what="garbage collection of the owned ConfigMap",
    )
    assert kube.exists(f"{cm_path}/unowned")


def test_kserve_helper_writes_inference_service_status(
    kube: Kube, kserve: KServe, namespace: str
) -> None:
    path = resource_path("serving.kserve.io/v1beta1", "inferenceservices", namespace)
    spec = {
        "predictor": {
            "model": {"modelFormat": {"name": "huggingface"}, "storageUri": "s3://models/m/"}
        }
    }
    kube.create(
        path,
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "chat"},
            "spec": spec,
        },
    )
    kserve.mark_ready(
        namespace,
        "chat",
        revisions={"chat-predictor-00001": 90, "chat-predictor-00002": 10},
        canary_revision="chat-predictor-00002",
    )
    isvc = kserve.get(namespace, "chat")
    assert isvc["spec"] == spec
    conditions = {c["type"]: c["status"] for c in isvc["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    traffic = isvc["status"]["components"]["predictor"]["traffic"]
    assert [t["percent"] for t in traffic] == [90, 10]
    kserve.set_status(
        namespace,
        "chat",
        KServe.build_status(
            name="chat", namespace=namespace, ready=False, message="predictor crash-looping"
        ),
    )
    conditions = {
        c["type"]: c["status"] for c in kserve.get(namespace, "chat")["status"]["conditions"]
    }
    assert conditions["Ready"] == "False"


# --------------------------------------------------------------------------- teardown


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    )


def test_process_group_is_killed_with_grandchildren(tmp_path: Path) -> None:
    proc = ManagedProcess(
        "sleepers",
        ["sh", "-c", "trap '' TERM; sleep 300 & echo $!; wait"],
        tmp_path / "sleepers.log",
    )
    grandchild = int(wait_for(lambda: proc.logs().strip(), timeout=10, what="grandchild pid"))
    started = time.monotonic()
    proc.stop(timeout=2)
    assert time.monotonic() - started < 10
    assert not proc.alive()
    wait_for(lambda: not _pid_alive(grandchild), timeout=5, what="grandchild gone")


INTERRUPTED_RUNNER = """
import json, signal, sys, time
# A runner started from a shell without job control inherits SIGINT ignored: restore it.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
from cluster import ControlPlane
from provision import provision
plane = ControlPlane(provision(verify=False))
plane.start()
print(json.dumps({"pids": [p.pid for p in plane.processes.values()],
                  "server": plane.server, "etcd": plane.etcd_url,
                  "workdir": str(plane.workdir)}), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_session_leaves_nothing_behind(sig: int, toolchain: object) -> None:
    runner = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_RUNNER, str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert runner.stdout is not None
        line = runner.stdout.readline()
        assert line, runner.stderr.read() if runner.stderr else ""
        info = json.loads(line)
        ports = [int(info["server"].rsplit(":", 1)[1]), int(info["etcd"].rsplit(":", 1)[1])]
        assert all(_pid_alive(p) for p in info["pids"])
        runner.send_signal(sig)
        # Generous: a loaded 2-core machine can take a while to stop three servers cleanly.
        runner.wait(180)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    wait_for(
        lambda: not any(_pid_alive(p) for p in info["pids"]),
        timeout=60,
        what="control plane processes gone",
    )
    wait_for(lambda: all(_port_is_free(p) for p in ports), timeout=60, what="ports released")
    assert not Path(info["workdir"]).exists()


# --------------------------------------------------------------------------- operator


def test_operator_reconciles_under_its_service_account(
    control_plane: ControlPlane,
    kube: Kube,
    namespace: str,
    operator_rbac: str,
    operator_process: OperatorFactory,
) -> None:
    config = control_plane.sa_kubeconfig(namespace, operator_rbac)
    op = operator_process(config, args=["--namespace", namespace])
    kube.create(ftj_path(namespace), finetunejob("smoke"))

    def reconciled() -> dict[str, Any] | None:
        status = kube.get(ftj_path(namespace, "smoke")).get("status") or {}
        return status if status.get("observedGeneration") == 1 else None

    try:
        status = wait_for(reconciled, timeout=90, what="the operator to write status")
    except TimeoutError:
        pytest.fail(f"operator did not reconcile; its log:\n{op.process.tail(80)}")
    assert status.get("conditions") or status.get("phase")
    assert "forbidden" not in op.logs().lower(), op.process.tail(40)
    code = op.stop()
    assert code in (0, -signal.SIGTERM), f"operator exit code {code}"
