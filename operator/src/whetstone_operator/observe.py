"""Turn what the operator watches (kopf indexes of Jobs, Pods, ModelVersions) into the views
the pure decisions take, and read a trainer's progress endpoint."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from whetstone_contract.result import CheckpointInfo, Progress
from whetstone_operator.reconcile.finetunejob import JobView, PodView, VersionView
from whetstone_operator.render.workload import COMPLETION_INDEX_ANNOTATION

log = logging.getLogger(__name__)


def controller_uid(meta: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (its ownerReference with controller: true)."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid")) if ref.get("uid") else None
    return None


def pod_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a pod the decisions read (kept small: it lives in an index)."""
    meta = body.get("metadata", {})
    status = body.get("status", {}) or {}
    summary: dict[str, Any] = {
        "name": meta.get("name"),
        "phase": status.get("phase", "Pending"),
        "ip": status.get("podIP"),
        "index": int((meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION, 0) or 0),
        "created": meta.get("creationTimestamp", ""),
        "start_time": status.get("startTime"),
        "owner_uid": controller_uid(meta),
    }
    for cs in status.get("containerStatuses", []) or []:
        state = cs.get("state", {}) or {}
        if state.get("terminated"):
            term = state["terminated"]
            summary |= {
                "exit_code": term.get("exitCode"),
                "reason": term.get("reason"),
                "message": term.get("message"),
                "finished_at": term.get("finishedAt"),
            }
        elif (state.get("waiting") or {}).get("reason"):
            summary |= {
                "reason": state["waiting"]["reason"],
                "message": state["waiting"].get("message"),
            }
    return summary


def job_summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Job the decisions read."""
    meta = body.get("metadata", {}) or {}
    status = body.get("status", {}) or {}
    summary: dict[str, Any] = {
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "owner_uid": controller_uid(meta),
        "active": status.get("active", 0) or 0,
        "succeeded": status.get("succeeded", 0) or 0,
        "failed": status.get("failed", 0) or 0,
        "complete": False,
    }
    for cond in status.get("conditions", []) or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            summary["complete"] = True
        elif cond.get("type") == "Failed":
            summary["failed_reason"] = cond.get("reason") or "Failed"
            summary["failed_message"] = cond.get("message")
    return summary


def job_view(job: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]]) -> JobView | None:
    """JobView from summaries; pods newest last. Only the Job's own pods count (a pod with the
    Job's name in its job-name label may belong to a Job of that name that was replaced)."""
    if job is None:
        return None
    pods = [p for p in pods if p.get("owner_uid") == job.get("uid")]
    views = tuple(
        PodView(
            name=p["name"],
            phase=p["phase"],
            ip=p.get("ip"),
            index=p.get("index", 0),
            exit_code=p.get("exit_code"),
            reason=p.get("reason"),
            message=p.get("message"),
            start_time=p.get("start_time"),
            finished_at=p.get("finished_at"),
            owner_uid=p.get("owner_uid"),
        )
        for p in sorted(pods, key=lambda p: (p.get("created", ""), p["name"]))
    )
    return JobView(
        name=job["name"],
        owner_uid=job.get("owner_uid"),
        active=job["active"],
        succeeded=job["succeeded"],
        failed=job["failed"],
        complete=job["complete"],
        failed_reason=job.get("failed_reason"),
        failed_message=job.get("failed_message"),
        pods=views,
    )


def version_views(entries: Iterable[Mapping[str, Any]]) -> tuple[VersionView, ...]:
    return tuple(
        VersionView(
            name=e["name"],
            model=e["model"],
            version=e["version"],
            fine_tune_job=e.get("fine_tune_job"),
        )
        for e in entries
    )


def _rank0_address(job: JobView | None) -> str | None:
    if job is None or job.complete or job.failed_reason:
        return None
    running = [p for p in job.pods if p.phase == "Running" and p.ip]
    if not running:
        return None
    pod = min(running, key=lambda p: p.index)
    return str(pod.ip)


PROGRESS_CAP = 256 * 1024  # bytes: a progress answer is a few hundred
_CHUNK = 16 * 1024


def _get_json(url: str, timeout: float) -> Any:
    """GET `url` and decode JSON, within `timeout` in total and PROGRESS_CAP bytes: the
    trainer runs a tenant-chosen image, and a trickling or endless answer must cost only this
    object's reconcile, briefly."""
    deadline = time.monotonic() + timeout
    # The URL is built from the trainer pod's IP, never taken from a spec.
    request = urllib.request.urlopen(url, timeout=timeout)  # nosec B310 # built from the pod IP
    with request as response:
        data = bytearray()
        while chunk := response.read1(_CHUNK):
            data += chunk
            if len(data) > PROGRESS_CAP:
                raise ValueError(f"answer over {PROGRESS_CAP} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer within {timeout:g}s")
    return json.loads(bytes(data))


def fetch_progress(
    job: JobView | None, port: int, timeout: float = 2.0
) -> tuple[Progress | None, tuple[CheckpointInfo, ...] | None]:
    """GET the rank-0 trainer's /progress and /checkpoints; None where unreachable."""
    ip = _rank0_address(job)
    if ip is None:
        return None, None
    base = f"http://{ip}:{port}"
    progress: Progress | None = None
    checkpoints: tuple[CheckpointInfo, ...] | None = None
    try:
        progress = Progress.model_validate(_get_json(f"{base}/progress", timeout))
    except (OSError, ValueError, ValidationError) as exc:
        log.debug("progress at %s unavailable: %s", base, exc)
        return None, None
    try:
        raw = _get_json(f"{base}/checkpoints", timeout)
        checkpoints = tuple(CheckpointInfo.model_validate(c) for c in raw)
    except (OSError, ValueError, TypeError, ValidationError) as exc:
        log.debug("checkpoints at %s unavailable: %s", base, exc)
    return progress, checkpoints
