"""Rollout handlers: observe (indexes, Prometheus) -> decide (pure) -> act (k8s.py) -> status.

A Rollout is reconciled when it changes, on every resync, and whenever its InferenceService
changes (KServe reporting the canary ready moves the step on at once). Unlike the other
kinds, a run re-reads the object and writes its status itself, under a per-Rollout lock:
these triggers run concurrently in kopf, and a decision taken on a status another run has
just moved on would repeat or undo a step (or count an analysis round twice).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from prometheus_client import Counter, Gauge

from whetstone_operator import analysis, k8s, metrics
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.reconcile.rollout import (
    Decision,
    PatchPredictor,
    RolloutObject,
    SetDeployment,
    VersionInfo,
    World,
    decide_rollout,
    due_queries,
)
from whetstone_operator.rollout import ServiceView, service_view

# Pauses end and analysis rounds fall due on the clock, and a rollout's timing is only as fine
# as its resync: rollouts are few, so they resync every second (FineTuneJobs every 10 s).
RESYNC_SECONDS = float(os.environ.get("WHETSTONE_ROLLOUT_RESYNC_SECONDS", "1"))
FINISHED = ("Succeeded", "Failed")

CANARY_WEIGHT = Gauge(
    "whetstone_rollout_canary_weight", "Traffic share of the canary (%).", ["namespace", "rollout"]
)
ANALYSIS_ROUNDS = Counter(
    "whetstone_rollout_analysis_rounds",
    "Analysis rounds by outcome.",
    ["namespace", "rollout", "outcome"],
)
ABORTS = Counter("whetstone_rollout_aborts", "Rollouts aborted.", ["namespace", "rollout"])

_LOCKS: dict[tuple[str, str], asyncio.Lock] = {}


# ----------------------------------------------------------------------------- indexes


@kopf.index(GROUP, VERSION, "modelversions")
def ws_rollout_versions(
    body: kopf.Body, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], VersionInfo]:
    """ModelVersions by (namespace, name): artifact, phase, conditions, deployments."""
    meta = body["metadata"]
    artifact = spec.get("artifact") or {}
    return {
        (meta["namespace"], meta["name"]): VersionInfo(
            name=meta["name"],
            phase=status.get("phase"),
            conditions={
                str(c.get("type")): str(c.get("status")) for c in status.get("conditions") or []
            },
            artifact_uri=artifact.get("uri"),
            artifact_format=str(artifact.get("format") or "merged"),
            base_uri=(spec.get("baseModel") or {}).get("uri"),
            deployments=tuple(dict(d) for d in status.get("deployments") or []),
        )
    }


@kopf.index("serving.kserve.io", "v1beta1", "inferenceservices")
def ws_inference_services(body: kopf.Body, **_: Any) -> dict[tuple[str, str], ServiceView]:
    """KServe InferenceServices by (namespace, name): storage, split, readiness."""
    meta = body["metadata"]
    return {(meta["namespace"], meta["name"]): service_view(body)}


def _values(index: kopf.Index[Any, Any], key: Any) -> Iterator[Any]:
    store = index.get(key)
    yield from (store if store is not None else ())


@dataclass(frozen=True)
class _Snapshot:
    service: ServiceView | None
    versions: dict[str, VersionInfo]


def _snapshot(
    namespace: str, service: str, versions: kopf.Index[Any, Any], services: kopf.Index[Any, Any]
) -> _Snapshot:
    # Taken on the event loop, where kopf updates the indexes: never torn.
    return _Snapshot(
        service=next(_values(services, (namespace, service)), None),
        versions={
            key[1]: value
            for key in list(versions)
            if key[0] == namespace
            for value in _values(versions, key)
        },
    )


# ----------------------------------------------------------------------------- reconcile


def _now() -> datetime:
    return datetime.now(UTC)


def _execute(decision: Decision, namespace: str, rollout: str) -> None:
    for action in decision.actions:
        if isinstance(action, PatchPredictor):
            k8s.patch_inference_service_predictor(namespace, action.inference_service, action.patch)
        elif isinstance(action, SetDeployment):
            k8s.set_model_version_deployment(
                namespace, action.model_version, rollout, action.entry, action.superseded_by
            )


def _record(namespace: str, name: str, before: str | None, decision: Decision) -> None:
    phase = decision.phase
    metrics.record_phase("Rollout", namespace, name, phase)
    CANARY_WEIGHT.labels(namespace, name).set(decision.canary_weight)
    round_ = decision.status.get("analysis") or {}
    if round_.get("lastRunTime") and round_.get("history"):
        ANALYSIS_ROUNDS.labels(namespace, name, round_["history"][-1]["outcome"]).inc()
    if phase == "Aborted" and before != "Aborted":
        ABORTS.labels(namespace, name).inc()


def reconcile_once(
    namespace: str, name: str, snapshot: _Snapshot
) -> tuple[dict[str, Any], Decision] | None:
    """One reconcile of a Rollout (blocking I/O): read, measure, decide, write status, act."""
    body = k8s.get_rollout(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    meta = body["metadata"]
    obj = RolloutObject(
        name=name,
        namespace=namespace,
        generation=meta.get("generation"),
        spec=dict(body.get("spec") or {}),
        status=dict(body.get("status") or {}),
        annotations=dict(meta.get("annotations") or {}),
    )
    now = _now()
    queries = due_queries(obj, now, snapshot.service)
    measurements = analysis.measure_all(queries) if queries else None
    world = World(service=snapshot.service, versions=snapshot.versions, measurements=measurements)
    decision = decide_rollout(obj, world, now)
    # Status first: it records the stable version and the step before the InferenceService is
    # touched. Acting first, a crash or an API error between the two left a canary patched
    # with no record of the rollout, and the next run took the canary for the stable version
    # and promoted it at once. The actions follow from status, so the next run redoes a failed
    # one; except once the rollout is finished, as finished ones are not resynced: then the
    # last actions go first and the status is written when they are done.
    status_first = decision.phase not in FINISHED
    if decision.status and status_first:
        k8s.patch_rollout_status(namespace, name, decision.status)
    _execute(decision, namespace, name)
    if decision.status and not status_first:
        k8s.patch_rollout_status(namespace, name, decision.status)
    _record(namespace, name, obj.status.get("phase"), decision)
    return body, decision


async def reconcile_rollout(
    namespace: str, name: str, service: str, indexes: dict[str, Any]
) -> None:
    """Reconcile one Rollout, one run at a time per Rollout."""
    lock = _LOCKS.setdefault((namespace, name), asyncio.Lock())
    started = time.monotonic()
    metrics.RECONCILES.labels("Rollout").inc()
    async with lock:
        snapshot = _snapshot(
            namespace, service, indexes["ws_rollout_versions"], indexes["ws_inference_services"]
        )
        try:
            done = await asyncio.to_thread(reconcile_once, namespace, name, snapshot)
        except Exception:
            metrics.ERRORS.labels("Rollout").inc()
            raise
        finally:
            metrics.DURATION.labels("Rollout").observe(time.monotonic() - started)
    if done is None:
        return
    fresh, decision = done
    for event in decision.events:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, fresh)),
            type=event.type,
            reason=event.reason,
            message=event.message[:1024],
        )


def _service_of(body: kopf.Body) -> str:
    return str(((body.get("spec") or {}).get("inferenceService") or {}).get("name", ""))


@kopf.on.resume(GROUP, VERSION, "rollouts")
@kopf.on.create(GROUP, VERSION, "rollouts")
@kopf.on.update(GROUP, VERSION, "rollouts")
async def rollout_changed(body: kopf.Body, **kwargs: Any) -> None:
    meta = body["metadata"]
    await reconcile_rollout(meta["namespace"], meta["name"], _service_of(body), kwargs)


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in FINISHED


# A failed resync (an API error) is retried at the next interval, not after kopf's 60 s.
@kopf.timer(
    GROUP, VERSION, "rollouts", interval=RESYNC_SECONDS, backoff=RESYNC_SECONDS, when=_unfinished
)
async def rollout_resync(body: kopf.Body, **kwargs: Any) -> None:
    meta = body["metadata"]
    await reconcile_rollout(meta["namespace"], meta["name"], _service_of(body), kwargs)


@kopf.index(GROUP, VERSION, "rollouts")
def ws_rollouts_by_service(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
    """Rollout names by (namespace, InferenceService they drive)."""
    meta = body["metadata"]
    return {(meta["namespace"], _service_of(body)): meta["name"]}


@kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices")
async def inference_service_changed(body: kopf.Body, event: kopf.RawEvent, **kwargs: Any) -> None:
    # KServe reporting a revision ready or a split applied moves the step on at once,
    # instead of at the next resync (the step's clock starts only then).
    if event.get("type") not in ("ADDED", "MODIFIED"):
        return
    meta = body["metadata"]
    namespace, service = meta["namespace"], meta["name"]
    for name in list(_values(kwargs["ws_rollouts_by_service"], (namespace, service))):
        await reconcile_rollout(namespace, name, service, kwargs)


@kopf.on.delete(GROUP, VERSION, "rollouts", optional=True)
async def rollout_deleted(body: kopf.Body, **kwargs: Any) -> None:
    # Best effort: without a finalizer the Rollout may be gone before this runs.
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    metrics.record_phase("Rollout", namespace, name, None)
    _LOCKS.pop((namespace, name), None)
    snapshot = _snapshot(
        namespace, "", kwargs["ws_rollout_versions"], kwargs["ws_inference_services"]
    )
    for version in snapshot.versions.values():
        if any(d.get("rollout") == name for d in version.deployments):
            await asyncio.to_thread(
                k8s.set_model_version_deployment, namespace, version.name, name, None
            )
