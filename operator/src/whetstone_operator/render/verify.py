"""Builder of a ModelVersion's verify Job: the trainer image recomputes the artifact's digests
with the same storage wiring as training, so the operator never holds storage credentials."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from whetstone_operator.api import API_VERSION
from whetstone_operator.api.modelversion import ModelVersionSpec
from whetstone_operator.api.names import LABEL_MANAGED_BY, LABEL_PART_OF, LABEL_VERSION, MANAGED_BY
from whetstone_operator.render.workload import (
    PVC_ROOT,
    TERMINATION_LOG,
    TrainerDefaults,
    base_env,
    child_name,
    container_security_context,
    label_value,
    pod_security_context,
)


@dataclass(frozen=True)
class VersionOwner:
    """The ModelVersion that owns the verify Job."""

    name: str
    namespace: str
    uid: str


def verify_job_name(version: str) -> str:
    return child_name(version, "verify")


def build_verify_job(
    owner: VersionOwner, spec: ModelVersionSpec, defaults: TrainerDefaults
) -> dict[str, Any]:
    """A short CPU Job running `whetstone_trainer verify <uri> --digest <digest>`."""
    labels = {
        "app.kubernetes.io/name": "whetstone-verify",
        "app.kubernetes.io/instance": label_value(owner.name),
        "app.kubernetes.io/component": "verifier",
        LABEL_PART_OF: "whetstone",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_VERSION: label_value(owner.name),
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    match = re.match(r"^pvc://([^/]+)", spec.artifact.uri)
    if match:
        claim = match.group(1)
        volumes.append(
            {"name": "artifact", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": "artifact", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})
    container: dict[str, Any] = {
        "name": "verify",
        "image": defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "args": ["verify", spec.artifact.uri, "--digest", spec.artifact.digest],
        "env": base_env(),
        "resources": {
            "requests": {"cpu": defaults.validation_cpu, "memory": defaults.validation_memory},
            "limits": {"memory": defaults.validation_memory},
        },
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.artifact.secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": spec.artifact.secret_ref.name}}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": verify_job_name(owner.name),
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "ModelVersion",
                    "name": owner.name,
                    "uid": owner.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 1800,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
