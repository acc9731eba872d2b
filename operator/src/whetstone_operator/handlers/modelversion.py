"""ModelVersion handlers: observe (verify Job, signed approval) -> decide -> act -> status."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import kopf

from whetstone_operator import metrics
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.approval import approval_key, verify
from whetstone_operator.handlers.finetunejob import RESYNC_SECONDS, emit, execute
from whetstone_operator.handlers.indexes import all_of, one_of
from whetstone_operator.observe import job_view
from whetstone_operator.reconcile.modelversion import (
    VersionObject,
    decide_modelversion,
    registry_labels,
)
from whetstone_operator.render.verify import verify_job_name
from whetstone_operator.settings import trainer_defaults


def reconcile_modelversion(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    """One reconcile of a ModelVersion."""
    started = time.monotonic()
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    metrics.RECONCILES.labels("ModelVersion").inc()
    try:
        jname = verify_job_name(name)
        verify_job = job_view(
            one_of(kwargs["ws_jobs"], (namespace, jname)),
            all_of(kwargs["ws_pods"], (namespace, jname)),
        )
        mv = VersionObject(
            name=name,
            namespace=namespace,
            uid=meta["uid"],
            generation=meta.get("generation"),
            spec=dict(body.get("spec", {}) or {}),
            status=dict(body.get("status", {}) or {}),
        )
        approval = verify(approval_key(), dict(body))
        decision = decide_modelversion(
            mv, verify_job, approval, datetime.now(UTC), trainer_defaults()
        )
        execute(decision, namespace)
        patch.status.update(decision.status)
        labels = registry_labels(mv.spec, dict(meta.get("labels") or {}))
        if labels:
            patch.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
        emit(body, decision)
        phase = decision.status.get("phase", mv.status.get("phase"))
        metrics.record_phase("ModelVersion", namespace, name, str(phase) if phase else None)
    except Exception:
        metrics.ERRORS.labels("ModelVersion").inc()
        raise
    finally:
        metrics.DURATION.labels("ModelVersion").observe(time.monotonic() - started)


@kopf.on.event(GROUP, VERSION, "modelversions")
def modelversion_event(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    meta = body["metadata"]
    if kwargs.get("type") == "DELETED":
        metrics.record_phase("ModelVersion", meta["namespace"], meta["name"], None)
        return
    reconcile_modelversion(body, patch, **kwargs)


@kopf.timer(
    GROUP,
    VERSION,
    "modelversions",
    interval=RESYNC_SECONDS,
    initial_delay=RESYNC_SECONDS,
    # A failed resync (an API error) is retried at the next interval, not after kopf's 60 s.
    backoff=RESYNC_SECONDS,
)
def modelversion_resync(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    reconcile_modelversion(body, patch, **kwargs)
