"""PlatformPolicy: the indexes of policies, namespace labels and FineTuneJob costs; the policy
of a namespace as every kind's observe reads it; the policy's own reconcile (the namespaces it
governs and their spend, reconcile/platformpolicy.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.handlers import runtime
from whetstone_operator.handlers.indexes import one_of
from whetstone_operator.reconcile.core import Obj
from whetstone_operator.reconcile.platformpolicy import Observed, decide_platformpolicy
from whetstone_operator.reconcile.policy import Policy, PolicyEntry, policy_for


@kopf.index("", "v1", "namespaces")
def ws_namespace_labels(body: kopf.Body, **_: Any) -> dict[str, dict[str, str]]:
    """Namespace labels by namespace name (policies select namespaces by label)."""
    meta = body["metadata"]
    return {meta["name"]: dict(meta.get("labels") or {})}


@kopf.index(GROUP, VERSION, "platformpolicies")
def ws_policies(body: kopf.Body, **_: Any) -> dict[None, PolicyEntry]:
    """Every PlatformPolicy, under one key."""
    return {
        None: PolicyEntry(
            name=body["metadata"]["name"],
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
        )
    }


def namespace_policy(namespace: str, indexes: Mapping[str, Any]) -> Policy:
    """The Policy that governs `namespace` now."""
    labels = one_of(indexes["ws_namespace_labels"], namespace) or {}
    return policy_for(namespace, labels, _entries(indexes))


@kopf.index(GROUP, VERSION, "finetunejobs")
def ws_job_costs(body: kopf.Body, **_: Any) -> dict[str, tuple[str, float]] | None:
    """(uid, GPU-seconds so far) of FineTuneJobs that have spent any, by namespace."""
    seconds = float(((body.get("status") or {}).get("cost") or {}).get("gpuSeconds") or 0)
    if seconds <= 0:
        return None
    meta = body["metadata"]
    return {meta["namespace"]: (str(meta.get("uid", "")), seconds)}


def _entries(indexes: Mapping[str, Any]) -> list[PolicyEntry]:
    store = indexes["ws_policies"].get(None)
    return list(store) if store is not None else []


def observe(obj: Obj, indexes: Mapping[str, Any], now: datetime) -> Observed:
    """Namespace labels, every policy and the jobs' costs, from the indexes."""
    labels = indexes["ws_namespace_labels"]
    costs_index = indexes["ws_job_costs"]
    costs: dict[str, dict[str, float]] = {}
    for namespace in list(costs_index):
        for uid, seconds in list(costs_index.get(namespace) or []):
            costs.setdefault(namespace, {})[uid] = seconds
    return Observed(
        namespaces={ns: one_of(labels, ns) or {} for ns in list(labels)},
        policies=tuple(_entries(indexes)),
        costs=costs,
    )


LOOP = runtime.register(
    runtime.Kind(
        kind="PlatformPolicy",
        plural="platformpolicies",
        observe=observe,
        decide=decide_platformpolicy,
        period=lambda options: float(options.resync_seconds),
    )
)
