"""Builder of a verify Job: the trainer image recomputes an artifact's digests with the same
storage wiring as training, so the operator never holds storage credentials. A ModelVersion
verifies its artifact once registered; a Rollout verifies it again before its first traffic."""

from __future__ import annotations

import hashlib
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
    """The object that owns the verify Job (a ModelVersion, or a Rollout)."""

    name: str
    namespace: str
    uid: str
    kind: str = "ModelVersion"


def verify_job_name(version: str) -> str:
    return child_name(version, "verify")


def rollout_verify_job_name(rollout: str, version: str, digest: str) -> str:
    """The Rollout's verify Job for one version and digest (a new candidate, a new Job)."""
    tag = hashlib.sha256(f"{version}\n{digest}".encode()).hexdigest()[:10]
    return child_name(rollout, f"verify-{tag}")


def build_verify_job(
    owner: VersionOwner,
    spec: ModelVersionSpec,
    defaults: TrainerDefaults,
    *,
    job_name: str | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """A short CPU Job running `whetstone_trainer verify <uri> --digest <digest>` for the
    ModelVersion `version` (default: the owner itself)."""
    labels = {
        "app.kubernetes.io/name": "whetstone-verify",
        "app.kubernetes.io/instance": label_value(owner.name),
        "app.kubernetes.io/component": "verifier",
        LABEL_PART_OF: "whetstone",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_VERSION: label_value(version or owner.name),
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # nosec B108 # the pod's own emptyDir
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
            "name": job_name or verify_job_name(owner.name),
            "namespace": owner.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": owner.kind,
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
