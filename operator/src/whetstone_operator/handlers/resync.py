"""One resync loop for all FineTuneJobs and ModelVersions, instead of a kopf timer per object.

A kopf timer keeps an asyncio task, its stopper and a live body for every object; here the watch
handlers keep a compact record per object (its JSON) and one loop re-runs the reconcile of every
object not reconciled for `RESYNC_SECONDS`, from that record: no API reads. The loop is a kopf
daemon on the FineTuneJob CRD, one object that is there whenever the operator works, so kopf
starts it, stops it while a peer operator is active and on exit, as it does timers.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from whetstone_operator import k8s
from whetstone_operator.api import GROUP

RESYNC_SECONDS = float(os.environ.get("WHETSTONE_RESYNC_SECONDS", "10"))
ANCHOR_CRD = f"finetunejobs.{GROUP}"
# How often the loop looks for records that are due: a fraction of the interval.
_TICK_SECONDS = min(max(RESYNC_SECONDS / 10, 0.1), 1.0)

log = logging.getLogger(__name__)

# reconcile(body, patch, indexes) -> None: writes the status (and label) patch into `patch`.
Reconcile = Callable[[kopf.Body, kopf.Patch, Mapping[str, Any]], None]


@dataclass
class Resync:
    """The objects of one kind that the loop re-reconciles, by (namespace, name)."""

    plural: str
    reconcile: Reconcile
    records: dict[tuple[str, str], tuple[float, bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, body: Mapping[str, Any], keep: bool = True) -> None:
        """After a watch event: remember the object (due one interval from now) or forget it."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if not keep:
            with self.lock:
                self.records.pop(key, None)
            return
        record = {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            # managedFields is most of a small object's metadata and no reconcile reads it.
            "metadata": {k: v for k, v in meta.items() if k != "managedFields"},
            "spec": body.get("spec") or {},
            "status": body.get("status") or {},
        }
        encoded = json.dumps(record, separators=(",", ":")).encode()
        with self.lock:
            self.records[key] = (time.monotonic() + RESYNC_SECONDS, encoded)

    def take_due(self, now: float) -> list[tuple[tuple[str, str], bytes]]:
        """Records due now, each postponed by one interval (a failed reconcile is retried
        then)."""
        with self.lock:
            due = [(key, raw) for key, (at, raw) in self.records.items() if at <= now]
            for key, raw in due:
                self.records[key] = (now + RESYNC_SECONDS, raw)
        return due

    def postpone(self, key: tuple[str, str], delay: float) -> None:
        with self.lock:
            if key in self.records:
                self.records[key] = (time.monotonic() + delay, self.records[key][1])

    def soon(self, key: tuple[str, str], delay: float = 0.0) -> bool:
        """Bring the object's next reconcile forward to `delay` from now (never later than it
        was); False when the object is not tracked (finished, or not seen yet)."""
        with self.lock:
            if key not in self.records:
                return False
            at, raw = self.records[key]
            self.records[key] = (min(at, time.monotonic() + delay), raw)
            return True

    def clear(self) -> None:
        with self.lock:
            self.records.clear()

    def run(self, key: tuple[str, str], raw: bytes, indexes: Mapping[str, Any]) -> None:
        """One reconcile from a record; its patch is written as kopf writes a handler's."""
        body = kopf.Body(json.loads(raw))
        patch = kopf.Patch()
        namespace, name = key
        try:
            self.reconcile(body, patch, indexes)
            if patch:
                k8s.patch_object(self.plural, namespace, name, dict(patch))
        except kopf.TemporaryError as exc:
            log.warning("resync of %s %s/%s: %s", self.plural, namespace, name, exc)
            if exc.delay is not None:
                self.postpone(key, exc.delay)
        except k8s.ApiException as exc:
            if exc.status == 404:
                self.seen(body, keep=False)  # deleted meanwhile: its DELETED event may follow
                return
            log.exception("resync of %s %s/%s failed", self.plural, namespace, name)
        except Exception:
            log.exception("resync of %s %s/%s failed", self.plural, namespace, name)


KINDS: list[Resync] = []


def register(plural: str, reconcile: Reconcile) -> Resync:
    resync = Resync(plural, reconcile)
    KINDS.append(resync)
    return resync


def _is_anchor(name: str, **_: Any) -> bool:
    return name == ANCHOR_CRD


_settings = kopf.OperatorSettings()


@kopf.on.startup()
def _remember_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Daemons are not given the settings: the loop needs kopf's executor for sync handlers.
    global _settings
    _settings = settings


@kopf.daemon(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    when=_is_anchor,
    cancellation_timeout=5,
)
async def resync_loop(stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    loop = asyncio.get_running_loop()
    indexes = {k: v for k, v in kwargs.items() if k.startswith("ws_")}
    try:
        while not stopped:
            now = time.monotonic()
            runs = [
                # kopf.event() needs kopf's context variables in the worker thread.
                loop.run_in_executor(
                    _settings.execution.executor,
                    contextvars.copy_context().run,
                    kind.run,
                    key,
                    raw,
                    indexes,
                )
                for kind in KINDS
                for key, raw in kind.take_due(now)
            ]
            if runs:
                await asyncio.gather(*runs)
            await stopped.wait(_TICK_SECONDS)
    finally:
        # Paused or exiting: the records may go stale; the watch events after a resume (a
        # fresh listing) fill them again.
        for kind in KINDS:
            kind.clear()
