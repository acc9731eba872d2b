"""End to end on a kind cluster: images built with Docker, the Helm chart installed, a CPU
fine-tune of the tiny example run by real trainer pods, its ModelVersion verified.

Runs where a Docker engine and `kind` exist (it creates and deletes its own cluster);
skipped elsewhere, saying which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e


def _missing() -> str | None:
    for tool in ("docker", "kind", "kubectl", "helm"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return "no Docker engine answers `docker info`"
    return None


def run(*args: str, timeout: float = 1800, **kw: object) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return str(proc.stdout)


@pytest.fixture(scope="module")
def kind_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    reason = _missing()
    if reason:
        pytest.skip(f"e2e needs Docker and kind: {reason}")
    name = f"whetstone-e2e-{uuid.uuid4().hex[:6]}"
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    run(
        "kind",
        "create",
        "cluster",
        "--name",
        name,
        "--kubeconfig",
        str(kubeconfig),
        "--wait",
        "120s",
    )
    try:
        tag = name
        run(
            "docker",
            "build",
            "-f",
            "Dockerfile.operator",
            "-t",
            f"whetstone-operator:{tag}",
            ".",
            cwd=REPO_ROOT,
        )
        run(
            "docker",
            "build",
            "-f",
            "Dockerfile.trainer",
            "--build-arg",
            "DS_ACCELERATOR=cpu",
            "--build-arg",
            "TRAINER_LOCK=requirements/trainer-cpu.txt",
            "--build-arg",
            "TORCH_INDEX=https://download.pytorch.org/whl/cpu",
            "-t",
            f"whetstone-trainer:{tag}",
            ".",
            cwd=REPO_ROOT,
        )
        for image in (f"whetstone-operator:{tag}", f"whetstone-trainer:{tag}"):
            run("kind", "load", "docker-image", image, "--name", name)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        run(
            "helm",
            "install",
            "whetstone",
            str(REPO_ROOT / "charts/whetstone"),
            "--namespace",
            "whetstone-system",
            "--create-namespace",
            "--wait",
            "--set",
            "image.repository=whetstone-operator",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "trainer.image.repository=whetstone-trainer",
            "--set",
            f"trainer.image.tag={tag}",
            "--set",
            "trainer.image.pullPolicy=Never",
            env=env,
        )
        yield kubeconfig
    finally:
        subprocess.run(["kind", "delete", "cluster", "--name", name], check=False)


def test_tiny_finetune_on_kind_registers_a_verified_model_version(kind_cluster: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(kind_cluster)}
    ns = "e2e"
    run("kubectl", "create", "namespace", ns, env=env)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    job = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob-tiny.yaml").read_text())
    job["metadata"]["namespace"] = ns
    job["spec"]["dataset"]["train"]["uri"] = "file:///opt/whetstone/samples/data/tiny-chat.jsonl"
    job["spec"]["output"]["uri"] = "pvc://models/tiny-chat/"
    run("kubectl", "apply", "-f", "-", input=yaml.safe_dump_all([claim, job]), env=env)
    deadline = time.monotonic() + 1800
    status: dict[str, object] = {}
    while time.monotonic() < deadline:
        out = run("kubectl", "get", "ftj", "tiny-chat", "-n", ns, "-o", "json", env=env)
        status = json.loads(out).get("status", {})
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(10)
    assert status.get("phase") == "Succeeded", status
    mv = str(status["modelVersion"])
    run(
        "kubectl",
        "wait",
        f"modelversion/{mv}",
        "-n",
        ns,
        "--for=jsonpath={.status.phase}=Verified",
        "--timeout=600s",
        env=env,
    )
