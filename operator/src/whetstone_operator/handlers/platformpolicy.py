"""PlatformPolicy: the indexes of policies and namespace labels, and the policy of a
namespace as every kind's observe reads it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.handlers.indexes import one_of
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
    store = indexes["ws_policies"].get(None)
    entries = list(store) if store is not None else []
    return policy_for(namespace, labels, entries)
