"""Operator options and kopf settings (storage of kopf's own bookkeeping, timeouts, logging)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import kopf

from whetstone_operator.render.workload import TrainerDefaults


@dataclass(frozen=True)
class OperatorOptions:
    """How this operator process runs."""

    namespaces: tuple[str, ...] = ()
    peering: str = ""
    peering_lifetime: int = 60
    liveness: str = ""
    metrics_port: int = 0
    trainer_image: str = "ghcr.io/whetstone/trainer:0.1.0"
    progress_port: int = 8080
    log_format: str = "plain"
    verbose: bool = False
    webhook_port: int = 0
    webhook_addr: str = "0.0.0.0"
    webhook_host: str = ""
    webhook_cert: str = ""
    webhook_key: str = ""
    webhook_managed: str = ""


OPTIONS = OperatorOptions()


def configure(options: OperatorOptions) -> None:
    """Remember the options for the startup handler, which applies them to kopf."""
    global OPTIONS
    OPTIONS = options


def trainer_defaults() -> TrainerDefaults:
    """Trainer pod defaults: the image and progress port options, plus the JSON object in
    WHETSTONE_TRAINER_DEFAULTS (nodeSelector, tolerations, gpuResourceName, shmSize,
    validationCpu, validationMemory, imagePullPolicy)."""
    extra = json.loads(os.environ.get("WHETSTONE_TRAINER_DEFAULTS", "") or "{}")
    return TrainerDefaults(
        image=OPTIONS.trainer_image,
        progress_port=OPTIONS.progress_port,
        node_selector=dict(extra.get("nodeSelector", {})),
        tolerations=list(extra.get("tolerations", [])),
        gpu_resource_name=str(extra.get("gpuResourceName") or "nvidia.com/gpu"),
        shm_size=str(extra["shmSize"]) if extra.get("shmSize") else None,
        validation_cpu=str(extra.get("validationCpu", "500m")),
        validation_memory=str(extra.get("validationMemory", "2Gi")),
        image_pull_policy=str(extra.get("imagePullPolicy", "IfNotPresent")),
    )


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations under our own prefix; status stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="whetstone.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="whetstone.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "whetstone.dev/finalizer"
    # A standby replica takes over this long after the active one stopped renewing its record.
    settings.peering.lifetime = OPTIONS.peering_lifetime
    settings.posting.level = 20
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.execution.max_workers = 20
    if OPTIONS.webhook_port:
        settings.admission.server = kopf.WebhookServer(
            addr=OPTIONS.webhook_addr,
            port=OPTIONS.webhook_port,
            host=OPTIONS.webhook_host or None,
            certfile=OPTIONS.webhook_cert or None,
            pkeyfile=OPTIONS.webhook_key or None,
        )
        if OPTIONS.webhook_managed:
            # kopf keeps the webhook configurations current (installs without the chart's).
            settings.admission.managed = OPTIONS.webhook_managed
    if OPTIONS.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(OPTIONS.metrics_port)
