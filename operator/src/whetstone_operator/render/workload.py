"""Builders of a FineTuneJob's children: trainer ConfigMap, validation Job, trainer Job, Service.

Names are deterministic and every child carries an owner reference to the FineTuneJob, so
re-running a reconcile never duplicates anything and deleting the job removes its pods.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from whetstone_contract.config import TrainerConfig
from whetstone_operator.api import API_VERSION
from whetstone_operator.api.finetunejob import FineTuneJobSpec
from whetstone_operator.api.names import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_PART_OF,
    LABEL_ROLE,
    MANAGED_BY,
)

CONFIG_KEY = "config.yaml"
CONFIG_DIR = "/etc/whetstone"
PVC_ROOT = "/mnt/pvc"
RENDEZVOUS_PORT = 29500
TERMINATION_LOG = "/dev/termination-log"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
USER_ID = 10001


@dataclass(frozen=True)
class Owner:
    """The FineTuneJob that owns the children."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "FineTuneJob",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class TrainerDefaults:
    """Operator-wide defaults for trainer pods (Helm values)."""

    image: str = "ghcr.io/whetstone/trainer:0.1.0"
    progress_port: int = 8080
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    gpu_resource_name: str = "nvidia.com/gpu"
    shm_size: str | None = None
    validation_cpu: str = "500m"
    validation_memory: str = "2Gi"
    image_pull_policy: str = "IfNotPresent"


@dataclass(frozen=True)
class Placement:
    """Placement the namespace's PlatformPolicy forces onto every trainer and validation pod."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


def place(
    pod_spec: dict[str, Any],
    node_selector: dict[str, str],
    tolerations: list[dict[str, Any]],
    forced: Placement,
) -> None:
    """Set the pod's nodeSelector (`forced` wins over the tenant's labels) and tolerations
    (`forced` added, each once)."""
    selector = {**node_selector, **forced.node_selector}
    if selector:
        pod_spec["nodeSelector"] = selector
    merged = list(tolerations)
    merged += [t for t in forced.tolerations if t not in merged]
    if merged:
        pod_spec["tolerations"] = merged


def child_name(parent: str, suffix: str, limit: int = 63) -> str:
    """`<parent>-<suffix>`, shortened with a hash when longer than `limit`: Job names end up
    in pod labels, which hold at most 63 characters."""
    name = f"{parent}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(parent.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{parent[:keep].rstrip('-')}-{digest}-{suffix}"


def label_value(name: str) -> str:
    """An object name as a label value: label values hold at most 63 characters, object names
    up to 253, so a longer name is shortened with a hash (as child_name does)."""
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-._')}-{digest}"


def config_map_name(job: str) -> str:
    return child_name(job, "trainer-config", limit=253)


def validation_job_name(job: str) -> str:
    return child_name(job, "validate")


def trainer_job_name(job: str, attempt: int) -> str:
    return child_name(job, f"train-{attempt}")


def rendezvous_service_name(job: str) -> str:
    return child_name(job, "ranks")


def labels(owner: Owner, role: str, attempt: int | None = None) -> dict[str, str]:
    """Recommended app.kubernetes.io labels plus our selectors."""
    out = {
        "app.kubernetes.io/name": "whetstone-trainer",
        "app.kubernetes.io/instance": label_value(owner.name),
        "app.kubernetes.io/component": role,
        LABEL_PART_OF: "whetstone",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: label_value(owner.name),
        LABEL_ROLE: role,
    }
    if attempt is not None:
        out[LABEL_ATTEMPT] = str(attempt)
    return out


def object_meta(owner: Owner, name: str, role: str, attempt: int | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, role, attempt),
        "ownerReferences": [owner.reference()],
    }


def build_config_map(owner: Owner, config: TrainerConfig) -> dict[str, Any]:
    """The ConfigMap that holds the trainer configuration."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(owner, config_map_name(owner.name), "config"),
        "data": {CONFIG_KEY: yaml.safe_dump(config.wire(), sort_keys=False)},
    }


def pvc_claims(spec: FineTuneJobSpec) -> list[str]:
    """Claims named by pvc:// URIs of the spec, in first-seen order."""
    uris = [spec.base_model.uri, spec.dataset.train.uri, spec.output.uri]
    uris += [f.uri for f in (spec.dataset.validation, spec.dataset.test) if f is not None]
    claims: list[str] = []
    for uri in uris:
        match = re.match(r"^pvc://([^/]+)", uri)
        if match and match.group(1) not in claims:
            claims.append(match.group(1))
    return claims


def secret_env(spec: FineTuneJobSpec, *, data_only: bool) -> list[dict[str, Any]]:
    refs = [spec.dataset.secret_ref]
    if not data_only:
        refs += [spec.base_model.secret_ref, spec.output.secret_ref]
    names: list[str] = []
    for ref in refs:
        if ref is not None and ref.name not in names:
            names.append(ref.name)
    return [{"secretRef": {"name": n}} for n in names]


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        "fsGroup": USER_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _volumes(owner: Owner, claims: list[str], shm: str | None) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(owner.name)}},
        {"name": "workspace", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if shm is not None:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
    volumes += [
        {"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}}
        for i, claim in enumerate(claims)
    ]
    return volumes


def _mounts(claims: list[str], shm: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "workspace", "mountPath": "/workspace"},
        {"name": "tmp", "mountPath": "/tmp"},  # nosec B108 # the pod's own emptyDir
    ]
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})  # nosec B108 # the pod's own memory emptyDir
    mounts += [
        {"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{claim}"} for i, claim in enumerate(claims)
    ]
    return mounts


def base_env() -> list[dict[str, Any]]:
    return [
        {"name": "HOME", "value": "/workspace"},
        {"name": "HF_HOME", "value": "/workspace/.cache/huggingface"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": "/workspace/.cache/torch_extensions"},
        {"name": "WHETSTONE_PVC_ROOT", "value": PVC_ROOT},
        {"name": "WHETSTONE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def shm_size(spec: FineTuneJobSpec, defaults: TrainerDefaults) -> str:
    """/dev/shm size: NCCL and DeepSpeed need far more than the 64 MiB default."""
    if spec.resources.shm_size:
        return spec.resources.shm_size
    if defaults.shm_size:
        return defaults.shm_size
    return f"{max(spec.resources.gpus_per_node, 1) * 8}Gi"


def build_validation_job(
    owner: Owner,
    spec: FineTuneJobSpec,
    defaults: TrainerDefaults,
    forced: Placement | None = None,
) -> dict[str, Any]:
    """A short CPU-only Job: the trainer image in validate-only mode, no GPU requested. It
    takes none of the tenant's GPU placement, only what the policy forces."""
    claims = pvc_claims(spec)
    container = {
        "name": "validate",
        "image": spec.image or defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}", "--validate-only"],
        "env": base_env(),
        "envFrom": secret_env(spec, data_only=True),
        "resources": {
            "requests": {"cpu": defaults.validation_cpu, "memory": defaults.validation_memory},
            "limits": {"memory": defaults.validation_memory},
        },
        "volumeMounts": _mounts(claims, shm=False),
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": _volumes(owner, claims, shm=None),
    }
    place(pod_spec, {}, [], forced or Placement())
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(owner, validation_job_name(owner.name), "validator"),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 1800,
            "template": {
                "metadata": {"labels": labels(owner, "validator")},
                "spec": pod_spec,
            },
        },
    }


def build_trainer_job(
    owner: Owner,
    spec: FineTuneJobSpec,
    defaults: TrainerDefaults,
    attempt: int,
    forced: Placement | None = None,
) -> dict[str, Any]:
    """The trainer Job: one pod per node; for nodes > 1 an Indexed Job with torchrun ranks.
    `forced`: the policy's placement, over the tenant's."""
    res = spec.resources
    claims = pvc_claims(spec)
    shm = shm_size(spec, defaults)
    name = trainer_job_name(owner.name, attempt)
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.gpus_per_node:
        gpu = res.gpu_resource_name or defaults.gpu_resource_name
        requests[gpu] = limits[gpu] = str(res.gpus_per_node)
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    env = [
        *base_env(),
        {"name": "NNODES", "value": str(res.nodes)},
        {"name": "NPROC_PER_NODE", "value": str(max(res.gpus_per_node, 1))},
        {"name": "WORLD_SIZE", "value": str(res.nodes * max(res.gpus_per_node, 1))},
        {"name": "MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": res.nodes,
        "parallelism": res.nodes,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "volumes": _volumes(owner, claims, shm=shm),
    }
    if res.nodes > 1:
        service = rendezvous_service_name(owner.name)
        job_spec["completionMode"] = "Indexed"
        pod_spec["subdomain"] = service
        env += [
            {
                "name": "NODE_RANK",
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"
                    }
                },
            },
            # Indexed Job pods get the hostname <job>-<index>; rank 0 is the rendezvous host.
            {
                "name": "MASTER_ADDR",
                "value": f"{name}-0.{service}.{owner.namespace}.svc",
            },
        ]
    else:
        env += [
            {"name": "NODE_RANK", "value": "0"},
            {"name": "MASTER_ADDR", "value": "127.0.0.1"},
        ]
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    place(
        pod_spec,
        {**defaults.node_selector, **res.node_selector},
        res.tolerations or defaults.tolerations,
        forced or Placement(),
    )
    if res.affinity:
        pod_spec["affinity"] = res.affinity
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    container: dict[str, Any] = {
        "name": "trainer",
        "image": spec.image or defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "env": env,
        "envFrom": secret_env(spec, data_only=False),
        "ports": [
            {"name": "progress", "containerPort": defaults.progress_port},
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
        ],
        "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        "volumeMounts": _mounts(claims, shm=True),
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec["containers"] = [container]
    job_spec["template"] = {
        "metadata": {"labels": labels(owner, "trainer", attempt)},
        "spec": pod_spec,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(owner, name, "trainer", attempt),
        "spec": job_spec,
    }


def build_rendezvous_service(owner: Owner) -> dict[str, Any]:
    """Headless Service giving Indexed Job pods stable DNS names for the rendezvous."""
    selector = {LABEL_JOB: label_value(owner.name), LABEL_ROLE: "trainer"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(owner, rendezvous_service_name(owner.name), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }
