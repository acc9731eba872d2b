"""ModelVersion handlers: observe (verify Job, signed approval) -> decide -> act -> status."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from whetstone_operator import metrics
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.approval import approval_key, verify
from whetstone_operator.handlers import resync
from whetstone_operator.handlers.finetunejob import emit, execute
from whetstone_operator.handlers.indexes import all_of, one_of
from whetstone_operator.observe import job_view
from whetstone_operator.reconcile.modelversion import (
    VersionObject,
    decide_modelversion,
    registry_labels,
)
from whetstone_operator.render.verify import verify_job_name
from whetstone_operator.settings import trainer_defaults


def reconcile_modelversion(body: kopf.Body, patch: kopf.Patch, indexes: Mapping[str, Any]) -> None:
    """One reconcile of a ModelVersion; `indexes` holds kopf's ws_jobs and ws_pods."""
    started = time.monotonic()
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    metrics.RECONCILES.labels("ModelVersion").inc()
    try:
        jname = verify_job_name(name)
        verify_job = job_view(
            one_of(indexes["ws_jobs"], (namespace, jname)),
            all_of(indexes["ws_pods"], (namespace, jname)),
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


RESYNC = resync.register("modelversions", reconcile_modelversion)


@kopf.on.event(GROUP, VERSION, "modelversions")
def modelversion_event(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    meta = body["metadata"]
    if kwargs.get("type") == "DELETED":
        RESYNC.seen(body, keep=False)
        metrics.record_phase("ModelVersion", meta["namespace"], meta["name"], None)
        return
    RESYNC.seen(body)
    reconcile_modelversion(body, patch, kwargs)
