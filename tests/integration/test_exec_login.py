"""A kubeconfig whose user is an `exec` credential plugin (as on EKS, GKE and AKS), against the
real API server: k8s.py's requests and the operator's kopf login both get their token from the
plugin, under the chart's RBAC."""

from __future__ import annotations

import base64
import copy
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from whetstone_operator import k8s

from cluster import (
    ControlPlane,
    Kube,
    OperatorFactory,
    make_temp_dir,
    remove_temp_dir,
    resource_path,
    wait_for,
)
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

API = "whetstone.dev/v1alpha1"
SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())

# Prints an ExecCredential with the token kept beside it, and counts its runs.
PLUGIN = textwrap.dedent(
    """
    import json, pathlib, sys
    here = pathlib.Path(sys.argv[1])
    with (here / "calls").open("a") as calls:
        calls.write("run\\n")
    print(json.dumps({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": (here / "token").read_text().strip()},
    }))
    """
)


class ExecKubeconfig:
    """A kubeconfig with no credential of its own: its user runs PLUGIN."""

    def __init__(self, plane: ControlPlane, directory: Path, token: str, namespace: str) -> None:
        self.dir = directory
        (directory / "plugin.py").write_text(PLUGIN)
        self.set_token(token)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": plane.server,
                        "certificate-authority-data": base64.b64encode(
                            plane.ca_file.read_bytes()
                        ).decode(),
                    },
                }
            ],
            "users": [
                {
                    "name": "exec-user",
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1",
                            "command": sys.executable,
                            "args": [str(directory / "plugin.py"), str(directory)],
                            "interactiveMode": "Never",
                        }
                    },
                }
            ],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": "exec-user", "namespace": namespace},
                }
            ],
            "current-context": "test",
        }
        self.path = directory / "kubeconfig"
        self.path.write_text(yaml.safe_dump(config))
        self.path.chmod(0o600)

    def set_token(self, token: str) -> None:
        (self.dir / "token").write_text(token)

    @property
    def runs(self) -> int:
        calls = self.dir / "calls"
        return len(calls.read_text().splitlines()) if calls.exists() else 0


@pytest.fixture
def exec_kubeconfig(
    control_plane: ControlPlane, namespace: str, operator_rbac: str
) -> Iterator[ExecKubeconfig]:
    """The operator's ServiceAccount token (the chart's RBAC), handed out by an exec plugin."""
    directory = make_temp_dir("whetstone-exec-")
    token = control_plane.service_account_token(namespace, operator_rbac)
    try:
        yield ExecKubeconfig(control_plane, directory, token, namespace)
    finally:
        remove_temp_dir(directory)


@pytest.fixture
def k8s_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """k8s.py in this process, logging in afresh from the environment."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(k8s, "_client", None)
    yield


def finetunejob(name: str) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    body["metadata"] = {"name": name}
    return body


def test_k8s_requests_use_the_exec_plugins_token(
    kube: Kube,
    namespace: str,
    exec_kubeconfig: ExecKubeconfig,
    k8s_on: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube.create(resource_path(API, "finetunejobs", namespace), finetunejob("direct"))
    monkeypatch.setenv("KUBECONFIG", str(exec_kubeconfig.path))

    obj = k8s.get(API, "FineTuneJob", namespace, "direct")
    assert obj is not None and obj["metadata"]["name"] == "direct"
    assert k8s.get(API, "FineTuneJob", namespace, "absent") is None
    answer = k8s.patch(
        API, "FineTuneJob", namespace, "direct", {"status": {"message": "hi"}}, subresource="status"
    )
    assert answer is not None and answer["status"]["message"] == "hi"
    assert exec_kubeconfig.runs >= 1
    info = k8s.login()
    assert info.token == exec_kubeconfig.dir.joinpath("token").read_text()
    assert info.default_namespace == namespace

    # The chart's RBAC holds for the plugin's identity: no Secrets.
    with pytest.raises(k8s.ApiException) as caught:
        k8s._request("GET", f"/api/v1/namespaces/{namespace}/secrets")
    assert caught.value.status == 403

    # A token the server does not accept is a 401, after one fresh run of the plugin.
    exec_kubeconfig.set_token("not-a-token")
    monkeypatch.setattr(k8s, "_client", None)
    runs = exec_kubeconfig.runs
    with pytest.raises(k8s.ApiException) as caught:
        k8s.get(API, "FineTuneJob", namespace, "direct")
    assert caught.value.status == 401
    assert exec_kubeconfig.runs >= runs + 2


def test_the_operator_reconciles_with_an_exec_plugin_kubeconfig(
    kube: Kube,
    namespace: str,
    exec_kubeconfig: ExecKubeconfig,
    operator_process: OperatorFactory,
) -> None:
    op = operator_process(
        exec_kubeconfig.path,
        args=["--namespace", namespace],
        env={
            "WHETSTONE_RESYNC_SECONDS": "1",
            "WHETSTONE_TRAINER_IMAGE": "registry.local/whetstone-trainer:test",
        },
    )
    name = "via-exec"
    kube.create(resource_path(API, "finetunejobs", namespace), finetunejob(name))

    def validating() -> dict[str, Any] | None:
        obj = kube.get(resource_path(API, "finetunejobs", namespace, name))
        return obj if (obj.get("status") or {}).get("phase") == "Validating" else None

    wait_for(validating, timeout=90, what="phase Validating")
    # The operator created the validation Job: k8s.py's writes went through the plugin's token.
    job = kube.get(resource_path("batch/v1", "jobs", namespace, f"{name}-validate"))
    assert job["metadata"]["ownerReferences"][0]["name"] == name
    assert exec_kubeconfig.runs >= 2  # kopf's login and k8s.py's client
    logs = op.logs().lower()
    assert "forbidden" not in logs and "unauthorized" not in logs, op.process.tail(40)
