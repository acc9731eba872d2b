"""Operator options and kopf settings (storage of kopf's own bookkeeping, timeouts, logging).

The options are read once, at start-up, from flags and the environment (`__main__.py`), and
handed to `configure`; nothing reads the environment at import time."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from whetstone_operator.api.names import FINALIZER
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
    webhook_addr: str = "0.0.0.0"  # nosec B104 # the API server calls it over the pod IP
    webhook_host: str = ""
    webhook_cert: str = ""
    webhook_key: str = ""
    webhook_managed: str = ""
    webhook_validate_specs: bool = True
    priority: int = 0
    # FineTuneJobs and ModelVersions re-reconcile every resync_seconds; Rollouts every
    # rollout_resync_seconds, since pauses and analysis rounds fall due on the clock.
    resync_seconds: float = 10.0
    rollout_resync_seconds: float = 1.0
    # Analysis may reach loopback addresses (Prometheus on 127.0.0.1): test and development
    # clusters only; the API server's own port stays refused.
    allow_loopback_targets: bool = False
    # Signs approvals and verifications; see signing_key().
    approval_key: bytes | None = field(default=None, repr=False)
    trainer: TrainerDefaults = field(default_factory=TrainerDefaults)


OPTIONS = OperatorOptions()
_EPHEMERAL_KEY = secrets.token_bytes(32)


def signing_key() -> bytes:
    """The key that signs and checks approval and verification records. Without a configured
    key, one drawn at start-up: records then hold until this process exits (the chart always
    configures one)."""
    return OPTIONS.approval_key or _EPHEMERAL_KEY


def configure(options: OperatorOptions) -> None:
    """Remember the options for the startup handler, which applies them to kopf."""
    global OPTIONS
    OPTIONS = options


def trainer_defaults(
    image: str, progress_port: int, extra: Mapping[str, object] | None = None
) -> TrainerDefaults:
    """Trainer pod defaults: the image and progress port options, plus the JSON object of
    WHETSTONE_TRAINER_DEFAULTS (nodeSelector, tolerations, gpuResourceName, shmSize,
    validationCpu, validationMemory, imagePullPolicy)."""
    extra = dict(extra or {})
    return TrainerDefaults(
        image=image,
        progress_port=progress_port,
        node_selector=dict(extra.get("nodeSelector") or {}),  # type: ignore[call-overload]
        tolerations=list(extra.get("tolerations") or []),  # type: ignore[call-overload]
        gpu_resource_name=str(extra.get("gpuResourceName") or "nvidia.com/gpu"),
        shm_size=str(extra["shmSize"]) if extra.get("shmSize") else None,
        validation_cpu=str(extra.get("validationCpu", "500m")),
        validation_memory=str(extra.get("validationMemory", "2Gi")),
        image_pull_policy=str(extra.get("imagePullPolicy", "IfNotPresent")),
    )


def parse_trainer_defaults(text: str) -> dict[str, object]:
    """WHETSTONE_TRAINER_DEFAULTS: a JSON object (empty = none)."""
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ValueError("WHETSTONE_TRAINER_DEFAULTS must be a JSON object")
    return value


def read_approval_key(env: Mapping[str, str]) -> bytes | None:
    """The key from WHETSTONE_APPROVAL_KEY_FILE or WHETSTONE_APPROVAL_KEY; None when unset."""
    path = env.get("WHETSTONE_APPROVAL_KEY_FILE")
    if path:
        return Path(path).read_bytes().strip()
    value = env.get("WHETSTONE_APPROVAL_KEY")
    return value.encode() if value else None


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations under our own prefix; status stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="whetstone.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="whetstone.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
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
