"""FineTuneJob: observe its validation and trainer Jobs, the trainer's progress, the
namespace's ModelVersions and PlatformPolicy; decide (reconcile/finetunejob.py); the loop does
the rest."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from whetstone_operator import metrics, settings
from whetstone_operator.api import GROUP
from whetstone_operator.api.finetunejob import FINETUNEJOB_FINISHED
from whetstone_operator.handlers import runtime
from whetstone_operator.handlers.indexes import MANAGED, all_of, one_of
from whetstone_operator.handlers.platformpolicy import namespace_policy
from whetstone_operator.observe import fetch_progress, job_summary, job_view, version_views
from whetstone_operator.reconcile.core import Decision, Obj, apply_merge_patch
from whetstone_operator.reconcile.finetunejob import Observed, decide_finetunejob
from whetstone_operator.render.workload import trainer_job_name, validation_job_name


def observe(job: Obj, indexes: Mapping[str, Any], now: datetime) -> Observed:
    """The children from kopf's ws_jobs, ws_pods and ws_versions indexes, the namespace's
    policy from the policy indexes, and the running trainer's progress endpoint."""
    ws_jobs, ws_pods, ws_versions = indexes["ws_jobs"], indexes["ws_pods"], indexes["ws_versions"]
    defaults = settings.OPTIONS.trainer
    namespace = job.namespace
    attempt = max(int(job.status.get("attempt", 0) or 0), 1)
    vname = validation_job_name(job.name)
    tname = trainer_job_name(job.name, attempt)
    tjob = job_view(one_of(ws_jobs, (namespace, tname)), all_of(ws_pods, (namespace, tname)))
    progress, checkpoints = fetch_progress(tjob, defaults.progress_port)
    return Observed(
        validation_job=job_view(
            one_of(ws_jobs, (namespace, vname)), all_of(ws_pods, (namespace, vname))
        ),
        trainer_job=tjob,
        progress=progress,
        checkpoints=checkpoints,
        model_versions=version_views(all_of(ws_versions, namespace)),
        defaults=defaults,
        policy=namespace_policy(namespace, indexes),
    )


def _gpu_seconds(status: Mapping[str, Any]) -> float:
    return float((status.get("cost") or {}).get("gpuSeconds") or 0)


def record(obj: Obj, decision: Decision) -> None:
    """Add the GPU time this reconcile newly counted to whetstone_gpu_seconds_total."""
    after = _gpu_seconds(apply_merge_patch(obj.status, decision.status))
    grown = after - _gpu_seconds(obj.status)
    if grown > 0:
        model = str((obj.spec.get("registration") or {}).get("model") or "")
        metrics.GPU_SECONDS.labels(obj.namespace, model).inc(grown)


LOOP = runtime.register(
    runtime.Kind(
        kind="FineTuneJob",
        plural="finetunejobs",
        observe=observe,
        decide=decide_finetunejob,
        period=lambda options: float(options.resync_seconds),
        finished=lambda status: status.get("phase") in FINETUNEJOB_FINISHED,
        record=record,
    )
)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
def child_job_event(body: kopf.Body, **kwargs: Any) -> None:
    # A validation or trainer Job that finishes moves its FineTuneJob on at the resync loop's
    # next tick instead of a whole resync period later. Only finished Jobs count: a kick
    # on every Job change would race the status write of the reconcile that created it.
    if kwargs.get("type") not in ("ADDED", "MODIFIED"):
        return
    summary = job_summary(body)
    if not (summary["complete"] or "failed_reason" in summary):
        return
    namespace = body["metadata"]["namespace"]
    for ref in body["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "FineTuneJob" and ref.get("apiVersion", "").startswith(GROUP):
            LOOP.soon((namespace, str(ref.get("name"))))
