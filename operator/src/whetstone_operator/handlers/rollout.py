"""Rollout: observe the InferenceService, the namespace's ModelVersions and (when a round is
due) the analysis measurements; decide (reconcile/rollout.py); the loop does the rest.

A Rollout is read afresh before each run: its triggers (its own changes, the resync, its
InferenceService's changes) run one at a time per Rollout, and a decision taken on a status the
previous run has just moved on would repeat or undo a step (or count a round twice).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import kopf
from prometheus_client import Counter, Gauge

from whetstone_operator import analysis, k8s, settings
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.api.rollout import ROLLOUT_FINISHED
from whetstone_operator.approval import assess, signed_parts
from whetstone_operator.handlers import runtime
from whetstone_operator.handlers.indexes import all_of, one_of
from whetstone_operator.handlers.platformpolicy import namespace_policy
from whetstone_operator.observe import job_view
from whetstone_operator.reconcile.canary import ServiceView, service_view
from whetstone_operator.reconcile.core import Action, Decision, Obj, apply_merge_patch
from whetstone_operator.reconcile.finetunejob import JobView
from whetstone_operator.reconcile.rollout import (
    VersionInfo,
    World,
    decide_rollout,
    due_queries,
    set_deployment,
)
from whetstone_operator.render.verify import rollout_verify_job_name

CANARY_WEIGHT = Gauge(
    "whetstone_rollout_canary_weight", "Traffic share of the canary (%).", ["namespace", "rollout"]
)
ANALYSIS_ROUNDS = Counter(
    "whetstone_rollout_analysis_rounds",
    "Analysis rounds by outcome.",
    ["namespace", "rollout", "outcome"],
)
ABORTS = Counter("whetstone_rollout_aborts", "Rollouts aborted.", ["namespace", "rollout"])
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- indexes


@kopf.index(GROUP, VERSION, "modelversions")
def ws_rollout_versions(
    body: kopf.Body, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], VersionInfo]:
    """ModelVersions by (namespace, name): artifact, deployments, and what the signed
    records are checked on (trust is assessed for the candidate at each run)."""
    meta = body["metadata"]
    artifact = spec.get("artifact") or {}
    return {
        (meta["namespace"], meta["name"]): VersionInfo(
            name=meta["name"],
            phase=status.get("phase"),
            artifact_uri=artifact.get("uri"),
            artifact_format=str(artifact.get("format") or "merged"),
            base_uri=(spec.get("baseModel") or {}).get("uri"),
            deployments=tuple(dict(d) for d in status.get("deployments") or []),
            spec=dict(spec),
            record=signed_parts(body),
        )
    }


@kopf.index("serving.kserve.io", "v1beta1", "inferenceservices")
def ws_inference_services(body: kopf.Body, **_: Any) -> dict[tuple[str, str], ServiceView]:
    """KServe InferenceServices by (namespace, name): storage, split, readiness."""
    meta = body["metadata"]
    return {(meta["namespace"], meta["name"]): service_view(body)}


@kopf.index(GROUP, VERSION, "rollouts")
def ws_rollouts_by_service(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
    """Rollout names by (namespace, InferenceService they drive)."""
    meta = body["metadata"]
    return {(meta["namespace"], _service_of(body.get("spec") or {})): meta["name"]}


def _values(index: kopf.Index[Any, Any], key: Any) -> Iterator[Any]:
    store = index.get(key)
    yield from (list(store) if store is not None else ())


def _service_of(spec: Mapping[str, Any]) -> str:
    return str((spec.get("inferenceService") or {}).get("name", ""))


def _versions(namespace: str, indexes: Mapping[str, Any]) -> dict[str, VersionInfo]:
    index = indexes["ws_rollout_versions"]
    return {
        key[1]: value for key in list(index) if key[0] == namespace for value in _values(index, key)
    }


# ----------------------------------------------------------------------------- the kind


def observe(obj: Obj, indexes: Mapping[str, Any], now: datetime) -> World:
    """The InferenceService and ModelVersions from the indexes, the candidate's signed
    records checked under the namespace's policy, and the analysis measurements when a round
    is due."""
    name = _service_of(obj.spec)
    service = next(_values(indexes["ws_inference_services"], (obj.namespace, name)), None)
    versions = _versions(obj.namespace, indexes)
    wanted = str(obj.spec.get("modelVersion") or "")
    candidate = versions.get(wanted)
    policy = namespace_policy(obj.namespace, indexes)
    if candidate is not None:
        trust = assess(
            settings.signing_key(),
            candidate.record,
            policy.spec.approval,
            policy=policy.name,
        )
        versions[wanted] = replace(candidate, trust=trust)
    queries = due_queries(obj, now, service, policy)
    return World(
        service=service,
        versions=versions,
        measurements=analysis.measure_all(queries, guard()) if queries else None,
        verify_job=_verify_job(obj, wanted, candidate, indexes),
        defaults=settings.OPTIONS.trainer,
    )


def _verify_job(
    obj: Obj, version: str, candidate: VersionInfo | None, indexes: Mapping[str, Any]
) -> JobView | None:
    """This Rollout's verify Job for the candidate's current digest (kopf's ws_jobs, ws_pods)."""
    digest = str(((candidate.spec if candidate else {}).get("artifact") or {}).get("digest", ""))
    if not digest:
        return None
    name = rollout_verify_job_name(obj.name, version, digest)
    return job_view(
        one_of(indexes["ws_jobs"], (obj.namespace, name)),
        all_of(indexes["ws_pods"], (obj.namespace, name)),
    )


_API_SERVERS: tuple[float, frozenset[tuple[str, int]]] | None = None
API_SERVERS_TTL = 300.0


def guard() -> analysis.Guard:
    """The address rules of analysis requests: the operator's own options (tenants cannot set
    them) and the API server's addresses (the kubeconfig's or in-cluster host, resolved at
    most every few minutes)."""
    global _API_SERVERS
    clock = time.monotonic()
    if _API_SERVERS is None or clock - _API_SERVERS[0] > API_SERVERS_TTL:
        urls = []
        try:
            urls.append(str(k8s.configuration().host))
        except Exception:  # no credentials here (tests): the environment may still say
            log.debug("no API server address from the credentials", exc_info=True)
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        if host:
            urls.append(f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}")
        _API_SERVERS = (clock, analysis.api_server_addresses(urls))
    return analysis.Guard(
        allow_loopback=settings.OPTIONS.allow_loopback_targets, api_servers=_API_SERVERS[1]
    )


def record(obj: Obj, decision: Decision) -> None:
    status = apply_merge_patch(obj.status, decision.status)
    CANARY_WEIGHT.labels(obj.namespace, obj.name).set(int(status.get("canaryWeight") or 0))
    round_ = decision.status.get("analysis") or {}
    history = (status.get("analysis") or {}).get("history") or []
    if round_.get("lastRunTime") and history:
        ANALYSIS_ROUNDS.labels(obj.namespace, obj.name, history[-1]["outcome"]).inc()
    if status.get("phase") == "Aborted" and obj.status.get("phase") != "Aborted":
        ABORTS.labels(obj.namespace, obj.name).inc()


def on_delete(obj: Obj, indexes: Mapping[str, Any]) -> list[Action]:
    """Take this Rollout's entries out of the ModelVersions' deployments (best effort: with
    no finalizer the Rollout may be gone before this runs)."""
    return [
        set_deployment(obj.name, version.name, None)
        for version in _versions(obj.namespace, indexes).values()
        if any(d.get("rollout") == obj.name for d in version.deployments)
    ]


LOOP = runtime.register(
    runtime.Kind(
        kind="Rollout",
        plural="rollouts",
        observe=observe,
        decide=decide_rollout,
        period=lambda options: float(options.rollout_resync_seconds),
        finished=lambda status: status.get("phase") in ROLLOUT_FINISHED,
        reread=True,
        on_delete=on_delete,
        record=record,
    )
)


@kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices")
def inference_service_changed(body: kopf.Body, event: kopf.RawEvent, **kwargs: Any) -> None:
    # KServe reporting a revision ready or a split applied moves the step on at once,
    # instead of at the next resync (the step's clock starts only then).
    if event.get("type") not in ("ADDED", "MODIFIED"):
        return
    meta = body["metadata"]
    namespace, service = meta["namespace"], meta["name"]
    indexes = {k: v for k, v in kwargs.items() if k.startswith("ws_")}
    for name in list(_values(kwargs["ws_rollouts_by_service"], (namespace, service))):
        LOOP.kick((namespace, name), indexes)
