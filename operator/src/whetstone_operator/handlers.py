"""Thin kopf handlers: observe (indexes, progress) -> decide (pure) -> act (k8s.py) -> status.

Child objects are watched through kopf indexes, so a reconcile makes no API reads; a timer
re-runs the reconcile of every unfinished object, which makes the loop level-triggered and
lets a restarted operator pick up exactly where status says it was.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf

from whetstone_operator import k8s, metrics
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.observe import (
    fetch_progress,
    job_summary,
    job_view,
    pod_summary,
    version_views,
)
from whetstone_operator.reconcile.finetunejob import (
    TERMINAL,
    Create,
    Decision,
    JobObject,
    Observed,
    decide_finetunejob,
)
from whetstone_operator.render.workload import (
    LABEL_JOB,
    MANAGED_BY,
    trainer_job_name,
    validation_job_name,
)
from whetstone_operator.settings import trainer_defaults

RESYNC_SECONDS = float(os.environ.get("WHETSTONE_RESYNC_SECONDS", "10"))
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}


def _now() -> datetime:
    return datetime.now(UTC)


# ----------------------------------------------------------------------------- indexes


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def ws_jobs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """FineTuneJob children Jobs, by (namespace, job name)."""
    meta = body["metadata"]
    return {(meta["namespace"], meta["name"]): job_summary(body)}


@kopf.index("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
def ws_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Pods of our Jobs, by (namespace, Job name)."""
    meta = body["metadata"]
    job = (meta.get("labels") or {}).get("job-name")
    if not job:
        return None
    return {(meta["namespace"], job): pod_summary(body)}


@kopf.index(GROUP, VERSION, "modelversions")
def ws_versions(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
    """ModelVersions by namespace (for version numbers and lineage)."""
    return {
        body["metadata"]["namespace"]: {
            "name": body["metadata"]["name"],
            "model": spec.get("model", ""),
            "version": int(spec.get("version", 0) or 0),
            "fine_tune_job": (spec.get("source") or {}).get("fineTuneJob"),
        }
    }


def _one(index: kopf.Index[Any, Any], key: Any) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def _all(index: kopf.Index[Any, Any], key: Any) -> list[Any]:
    store = index.get(key)
    return list(store) if store is not None else []


# ----------------------------------------------------------------------------- FineTuneJob


def _execute(decision: Decision, namespace: str) -> None:
    for action in decision.actions:
        if isinstance(action, Create):
            k8s.create(action.body)
        else:
            k8s.delete(action.api_version, action.kind, namespace, action.name)


def _emit(body: kopf.Body, decision: Decision) -> None:
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
        tjob = job_view(_one(ws_jobs, (namespace, tname)), _all(ws_pods, (namespace, tname)))
        observed = Observed(
            validation_job=job_view(
                _one(ws_jobs, (namespace, vname)), _all(ws_pods, (namespace, vname))
            ),
            trainer_job=tjob,
            progress=fetch_progress(tjob, defaults.progress_port),
            model_versions=version_views(_all(ws_versions, namespace)),
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
        _execute(decision, namespace)
        patch.status.update(decision.status)
        _emit(body, decision)
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
