"""FineTuneJob handlers: observe (indexes, progress) -> decide (pure) -> act (k8s.py) -> status.

The resync loop (resync.py) re-runs the reconcile of every unfinished job, which makes the loop
level-triggered; a restarted operator picks up exactly where status says it was.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from whetstone_operator import k8s, metrics
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.handlers import resync
from whetstone_operator.handlers.indexes import MANAGED, all_of, one_of
from whetstone_operator.observe import fetch_progress, job_summary, job_view, version_views
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


def _now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- FineTuneJob


def execute(decision: Decision, namespace: str) -> None:
    for action in decision.actions:
        if isinstance(action, Create):
            if not k8s.create(action.body) and action.body["kind"] == "ModelVersion":
                check_registered_by_us(action.body)
        else:
            k8s.delete(action.api_version, action.kind, namespace, action.name)


def check_registered_by_us(body: dict[str, Any]) -> None:
    """A ModelVersion of that name already exists: fine when this job registered it (a repeated
    reconcile); otherwise another job took that version number first, before the index showed
    it, so the status must not point at it and the next reconcile picks the next free number."""
    meta = body["metadata"]
    mine = body["spec"]["source"]["fineTuneJob"]
    existing = k8s.get_model_version(meta["namespace"], meta["name"])
    owner = ((existing or {}).get("spec") or {}).get("source") or {}
    if existing is None or owner.get("fineTuneJob") != mine:
        raise kopf.TemporaryError(
            f"ModelVersion {meta['name']} was registered by {owner.get('fineTuneJob')}: "
            "registering the next free version",
            delay=1,
        )


def emit(body: kopf.Body, decision: Decision) -> None:
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1024])


def reconcile_finetunejob(body: kopf.Body, patch: kopf.Patch, indexes: Mapping[str, Any]) -> None:
    """One reconcile of a FineTuneJob; `indexes` holds kopf's ws_jobs, ws_pods, ws_versions."""
    ws_jobs, ws_pods, ws_versions = indexes["ws_jobs"], indexes["ws_pods"], indexes["ws_versions"]
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


RESYNC = resync.register("finetunejobs", reconcile_finetunejob)


@kopf.on.event(GROUP, VERSION, "finetunejobs")
def finetunejob_event(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
    # A plain watch handler, not kopf's change handlers: those persist their progress in
    # annotations, two extra writes per object that a level-triggered reconcile never needs.
    meta = body["metadata"]
    if kwargs.get("type") == "DELETED":
        # Children go by owner-reference garbage collection; artifacts are never touched.
        RESYNC.seen(body, keep=False)
        metrics.record_phase("FineTuneJob", meta["namespace"], meta["name"], None)
        return
    # Recorded first: a reconcile that fails is retried by the resync loop one interval later.
    RESYNC.seen(body, keep=(body.get("status") or {}).get("phase") not in TERMINAL)
    reconcile_finetunejob(body, patch, kwargs)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def child_job_event(body: kopf.Body, **kwargs: Any) -> None:
    # A validation or trainer Job that finishes moves its FineTuneJob on at the resync loop's
    # next tick instead of a whole resync interval later. Only finished Jobs count: a kick
    # on every Job change would race the status write of the reconcile that created it.
    if kwargs.get("type") not in ("ADDED", "MODIFIED"):
        return
    summary = job_summary(body)
    if not (summary["complete"] or "failed_reason" in summary):
        return
    namespace = body["metadata"]["namespace"]
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "FineTuneJob" and ref.get("apiVersion", "").startswith(GROUP):
            RESYNC.soon((namespace, str(ref.get("name"))))
