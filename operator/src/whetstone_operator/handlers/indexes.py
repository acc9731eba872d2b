"""Kopf indexes of what the operator watches besides its own kinds: Jobs, Pods, ModelVersions.

Handlers read children from these in-memory indexes, so a reconcile makes no API reads.
"""

from __future__ import annotations

from typing import Any

import kopf

from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.api.names import LABEL_MANAGED_BY, MANAGED_BY
from whetstone_operator.observe import job_summary, pod_summary

MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def ws_jobs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """FineTuneJob children Jobs, by (namespace, job name)."""
    meta = body["metadata"]
    return {(meta["namespace"], meta["name"]): job_summary(body)}


@kopf.index("", "v1", "pods", labels=MANAGED)
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


def one_of(index: kopf.Index[Any, Any], key: Any) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def all_of(index: kopf.Index[Any, Any], key: Any) -> list[Any]:
    store = index.get(key)
    return list(store) if store is not None else []
