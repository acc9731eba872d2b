"""FineTuneJob handlers: observe (indexes, progress) -> decide (pure) -> act (k8s.py) -> status.

A timer re-runs the reconcile of every unfinished job, which makes the loop level-triggered
and lets a restarted operator pick up exactly where status says it was.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from whetstone_operator import k8s, metrics
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.handlers.indexes import all_of, one_of
from whetstone_operator.observe import fetch_progress, job_view, version_views
from whetstone_operator.reconcile.finetunejob import (
    TERMINAL,
    Create,
    Decision,
    JobObject,
    Observed,
    decide_finetunejob,
)
from whetstone_operator.render.workload import (
    trainer_job_name,
    validation_job_name,
)
from whetstone_operator.settings import trainer_defaults

RESYNC_SECONDS = float(os.environ.get("WHETSTONE_RESYNC_SECONDS", "10"))


def _now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- FineTuneJob


def execute(decision: Decision, namespace: str) -> None:
    for action in decision.actions:
        if isinstance(action, Create):
            k8s.create(action.body)
        else:
            k8s.delete(action.api_version, action.kind, namespace, action.name)


def emit(body: kopf.Body, decision: Decision) -> None:
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])


def reconcile_finetunejob(
    body: kopf.Body,
    patch: kopf.Patch,
    ws_jobs: kopf.Index[Any, Any],
    ws_pods: kopf.Index[Any, Any],
    ws_versions: kopf.Index[Any, Any],
) -> None:
    """One reconcile of a FineTuneJob."""
    started = time.monotonic()
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    status = dict(body.get("status", {}) or {})
    defaults = trainer_defaults()
    metrics.RECONCILES.labels("FineTuneJob").inc()
    try:
        attempt = max(int(status.get("attempt", 0) or 0), 1)
        vname = validation_job_name(name)
        tname = trainer_job_name(name, attempt)
        tjob = job_view(one_of(ws_jobs, (namespace, tname)), all_of(ws_pods, (namespace, tname)))
        progress, checkpoints = fetch_progress(tjob, defaults.progress_port)
        observed = Observed(
            validation_job=job_view(
                one_of(ws_jobs, (namespace, vname)), all_of(ws_pods, (namespace, vname))
            ),
            trainer_job=tjob,
            progress=progress,
            checkpoints=checkpoints,
            model_versions=version_views(all_of(ws_versions, namespace)),
        )
        job = JobObject(
            name=name,
            namespace=namespace,
            uid=meta["uid"],
            generation=meta.get("generation"),
            spec=dict(body.get("spec", {}) or {}),
            status=status,
        )
        decision = decide_finetunejob(job, observed, _now(), defaults)
        execute(decision, namespace)
        patch.status.update(decision.status)
        emit(body, decision)
        metrics.record_phase(
            "FineTuneJob", namespace, name, decision.status.get("phase", status.get("phase"))
        )
    except Exception:
        metrics.ERRORS.labels("FineTuneJob").inc()
        raise
    finally:
        metrics.DURATION.labels("FineTuneJob").observe(time.monotonic() - started)


@kopf.on.resume(GROUP, VERSION, "finetunejobs")
@kopf.on.create(GROUP, VERSION, "finetunejobs")
@kopf.on.update(GROUP, VERSION, "finetunejobs", field="spec")
def finetunejob_changed(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    reconcile_finetunejob(body, patch, kwargs["ws_jobs"], kwargs["ws_pods"], kwargs["ws_versions"])


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL


@kopf.timer(GROUP, VERSION, "finetunejobs", interval=RESYNC_SECONDS, when=_unfinished)
def finetunejob_resync(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    reconcile_finetunejob(body, patch, kwargs["ws_jobs"], kwargs["ws_pods"], kwargs["ws_versions"])


@kopf.on.delete(GROUP, VERSION, "finetunejobs", optional=True)
def finetunejob_deleted(body: kopf.Body, **_: Any) -> None:
    # Children go by owner-reference garbage collection; artifacts are never touched.
    metrics.record_phase(
        "FineTuneJob", body["metadata"]["namespace"], body["metadata"]["name"], None
    )
