"""Builders of the trainer workload: one table of specs, the properties every Job must have."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from whetstone_contract.config import TrainerConfig
from whetstone_operator.api.finetunejob import FineTuneJobSpec
from whetstone_operator.render.trainer_config import build_trainer_config
from whetstone_operator.render.workload import (
    COMPLETION_INDEX_ANNOTATION,
    Owner,
    Placement,
    TrainerDefaults,
    build_config_map,
    build_rendezvous_service,
    build_trainer_job,
    build_validation_job,
)

from tests.conftest import REPO_ROOT

OWNER = Owner("grader-v3", "ml", "0b6c9a4e-1111-2222-3333-444455556666")
DEFAULTS = TrainerDefaults(image="registry.local/trainer:1", progress_port=8080)
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())["spec"]
# The tenant repeats the GPU nodes' toleration (allowed where the policy has it).
SAMPLE["resources"]["tolerations"] = [GPU_TOLERATION]


def _spec(**changes: Any) -> FineTuneJobSpec:
    raw = {**SAMPLE, **changes}
    return FineTuneJobSpec.model_validate(raw)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


CASES = {
    "single-node-8-gpus": {"nodes": 1, "gpus": 8, "indexed": False},
    "two-nodes-indexed": {"nodes": 2, "gpus": 4, "indexed": True},
    "cpu-only": {"nodes": 1, "gpus": 0, "indexed": False},
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_trainer_job(case: str) -> None:
    want = CASES[case]
    resources = {**SAMPLE["resources"], "nodes": want["nodes"], "gpusPerNode": want["gpus"]}
    spec = _spec(resources=resources)
    job = build_trainer_job(OWNER, spec, DEFAULTS, attempt=1)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)

    assert job["metadata"]["name"] == "grader-v3-train-1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == want["nodes"]
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p4d.24xlarge"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert {"secretRef": {"name": "hf-token"}} in container["envFrom"]
    assert {"secretRef": {"name": "s3-creds"}} in container["envFrom"]
    assert len(container["envFrom"]) == 2, "a Secret named twice is mounted once"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "whetstone"
    assert labels["app.kubernetes.io/instance"] == "grader-v3"
    assert env["NNODES"] == str(want["nodes"])
    assert env["WORLD_SIZE"] == str(want["nodes"] * max(want["gpus"], 1))
    if want["gpus"]:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(want["gpus"])
        assert container["resources"]["requests"]["nvidia.com/gpu"] == str(want["gpus"])
    else:
        assert "nvidia.com/gpu" not in str(container["resources"])
    if want["indexed"]:
        assert job["spec"]["completionMode"] == "Indexed"
        assert pod["subdomain"] == "grader-v3-ranks"
        assert env["MASTER_ADDR"] == "grader-v3-train-1-0.grader-v3-ranks.ml.svc"
        assert COMPLETION_INDEX_ANNOTATION in env["NODE_RANK"]["fieldRef"]["fieldPath"]
        service = build_rendezvous_service(OWNER)
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert (
            service["spec"]["selector"].items()
            <= job["spec"]["template"]["metadata"]["labels"].items()
        )
    else:
        assert "completionMode" not in job["spec"]
        assert env["NODE_RANK"] == "0"


def test_validation_job_requests_no_gpu_and_reads_only_data_secrets() -> None:
    spec = _spec()
    job = build_validation_job(OWNER, spec, DEFAULTS)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "gpu" not in str(container["resources"])
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "--validate-only" in container["args"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert job["spec"]["backoffLimit"] == 0
    assert pod["automountServiceAccountToken"] is False


TEAM_TOLERATION = {"key": "team", "value": "ml", "effect": "NoSchedule"}
PLACEMENTS = {
    "nothing forced: the tenant's": (
        Placement(),
        {"node.kubernetes.io/instance-type": "p4d.24xlarge"},
        [GPU_TOLERATION],
    ),
    "the policy's label wins over the tenant's": (
        Placement(node_selector={"node.kubernetes.io/instance-type": "a100", "pool": "ml"}),
        {"node.kubernetes.io/instance-type": "a100", "pool": "ml"},
        [GPU_TOLERATION],
    ),
    "the policy's tolerations are added once": (
        Placement(tolerations=[GPU_TOLERATION, TEAM_TOLERATION]),
        {"node.kubernetes.io/instance-type": "p4d.24xlarge"},
        [GPU_TOLERATION, TEAM_TOLERATION],
    ),
}


@pytest.mark.parametrize("case", PLACEMENTS, ids=list(PLACEMENTS))
def test_trainer_pods_take_the_forced_placement(case: str) -> None:
    forced, selector, tolerations = PLACEMENTS[case]
    job = build_trainer_job(OWNER, _spec(), DEFAULTS, 1, forced)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == selector
    assert pod["tolerations"] == tolerations


def test_validation_pods_take_only_the_forced_placement() -> None:
    forced = Placement(node_selector={"pool": "ml"}, tolerations=[TEAM_TOLERATION])
    pod = build_validation_job(OWNER, _spec(), DEFAULTS, forced)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "ml"}
    assert pod["tolerations"] == [TEAM_TOLERATION]


def test_pvc_uris_become_mounts() -> None:
    spec = _spec(
        dataset={**SAMPLE["dataset"], "train": {"uri": "pvc://datasets/grading/train.jsonl"}},
        output={"uri": "pvc://models/grader/"},
    )
    pod = build_trainer_job(OWNER, spec, DEFAULTS, 1)["spec"]["template"]["spec"]
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["datasets", "models"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/mnt/pvc/datasets", "/mnt/pvc/models"} <= mounts


def test_rendered_config_round_trips_through_the_trainer_validator() -> None:
    spec = _spec()
    config = build_trainer_config(OWNER.name, OWNER.namespace, spec)
    cm = build_config_map(OWNER, config)
    loaded = TrainerConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert loaded == config
    assert loaded.distributed.procs_per_node == 8
    assert loaded.deepspeed is not None and loaded.deepspeed.bf16 is True
    assert "secretRef" not in cm["data"]["config.yaml"], "credentials never enter the config"


def test_the_data_classification_stays_out_of_the_trainer_config() -> None:
    spec = _spec(dataset={**SAMPLE["dataset"], "classification": "restricted"})
    assert spec.dataset.classification == "restricted"
    config = build_trainer_config(OWNER.name, OWNER.namespace, spec)
    assert "classification" not in build_config_map(OWNER, config)["data"]["config.yaml"]


def test_same_input_same_objects() -> None:
    spec = _spec()
    assert build_trainer_job(OWNER, spec, DEFAULTS, 1) == build_trainer_job(
        OWNER, spec, DEFAULTS, 1
    )
    assert build_trainer_job(OWNER, spec, DEFAULTS, 2)["metadata"]["name"] == "grader-v3-train-2"
