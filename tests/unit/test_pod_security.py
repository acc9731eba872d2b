"""Every pod the operator renders meets the Kubernetes "restricted" Pod Security Standard,
carries no API credentials, and credentials reach it only by Secret reference."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from whetstone_operator.api.finetunejob import FineTuneJobSpec
from whetstone_operator.api.modelversion import ModelVersionSpec
from whetstone_operator.render.trainer_config import build_trainer_config
from whetstone_operator.render.verify import VersionOwner, build_verify_job
from whetstone_operator.render.workload import (
    Owner,
    TrainerDefaults,
    build_config_map,
    build_trainer_job,
    build_validation_job,
)

from tests.conftest import REPO_ROOT

OWNER = Owner("job", "ml", "uid-1")
DEFAULTS = TrainerDefaults()
FTJ = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())["spec"]
MV = yaml.safe_load((REPO_ROOT / "manifests/samples/modelversion.yaml").read_text())["spec"]
ALLOWED_VOLUMES = {"configMap", "emptyDir", "persistentVolumeClaim", "secret", "projected"}


def _renderings() -> dict[str, dict[str, Any]]:
    single = FineTuneJobSpec.model_validate(FTJ)
    multi = FineTuneJobSpec.model_validate({**FTJ, "resources": {**FTJ["resources"], "nodes": 4}})
    pvc = FineTuneJobSpec.model_validate(
        {
            **FTJ,
            "output": {"uri": "pvc://models/out/"},
            "dataset": {**FTJ["dataset"], "train": {"uri": "pvc://data/train.jsonl"}},
        }
    )
    mv = ModelVersionSpec.model_validate(
        {**MV, "artifact": {**MV["artifact"], "secretRef": {"name": "s3-creds"}}}
    )
    return {
        "validation": build_validation_job(OWNER, single, DEFAULTS),
        "trainer": build_trainer_job(OWNER, single, DEFAULTS, 1),
        "trainer-multinode": build_trainer_job(OWNER, multi, DEFAULTS, 1),
        "trainer-pvc": build_trainer_job(OWNER, pvc, DEFAULTS, 2),
        "verify": build_verify_job(VersionOwner("mv", "ml", "uid-2"), mv, DEFAULTS),
    }


RENDERINGS = _renderings()


@pytest.mark.parametrize("name", RENDERINGS)
def test_restricted_pod_security_standard(name: str) -> None:
    pod = RENDERINGS[name]["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host), host
    assert pod["automountServiceAccountToken"] is False, "trainer pods get no API credentials"
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= ALLOWED_VOLUMES, f"{name}: volume {volume}"
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert not sc.get("privileged")
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["capabilities"].get("add")
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
        assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0
        seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost")
        assert not container.get("ports") or all("hostPort" not in p for p in container["ports"])


@pytest.mark.parametrize("name", RENDERINGS)
def test_credentials_only_by_secret_reference(name: str) -> None:
    pod = RENDERINGS[name]["spec"]["template"]["spec"]
    for container in pod["containers"]:
        for env in container.get("env", []):
            assert "secretKeyRef" not in json.dumps(env), "credentials come via envFrom only"
            assert not any(word in env["name"] for word in ("SECRET", "TOKEN", "PASSWORD"))
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", [])]
        assert set(refs) <= {"hf-token", "s3-creds"}


def test_trainer_config_never_holds_credentials() -> None:
    spec = FineTuneJobSpec.model_validate(FTJ)
    text = json.dumps(build_config_map(OWNER, build_trainer_config("job", "ml", spec)))
    for name in ("hf-token", "s3-creds", "secretRef"):
        assert name not in text


def test_the_operator_is_never_granted_secrets() -> None:
    rules = yaml.safe_load((REPO_ROOT / "charts/whetstone/rbac-rules.yaml").read_text())
    resources = {r for group in rules.values() for rule in group for r in rule["resources"]}
    assert "secrets" not in resources
