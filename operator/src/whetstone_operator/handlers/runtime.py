"""The one reconcile loop every kind plugs into: observe -> decide -> execute -> status.

A kind registers once (`register(Kind(...))`): its watch events, its resync and any trigger it
adds (`Loop.kick`) all run the same reconcile, one at a time per object. The loop keeps a
compact record per object (its JSON, from the last watch event or status write) and re-runs
the reconcile of every object not reconciled for the kind's period, from that record: no API
reads, unless the kind asks for a fresh read before each run (`reread`). The resync is a kopf
daemon on the FineTuneJob CRD, one object that is there whenever the operator works, so kopf
starts it, stops it while a peer operator is active and on exit, as it does timers.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import kopf

from whetstone_operator import k8s, metrics
from whetstone_operator.api import GROUP, VERSION
from whetstone_operator.api.common import Condition, set_condition
from whetstone_operator.reconcile.core import (
    Action,
    Create,
    Decision,
    Delete,
    Obj,
    Patch,
    UpdateStatus,
    apply_merge_patch,
    obj_from_body,
)

ANCHOR_CRD = f"finetunejobs.{GROUP}"
_UPDATE_ATTEMPTS = 5

log = logging.getLogger(__name__)

Key = tuple[str, str]
O = TypeVar("O")  # noqa: E741  (a kind's observed world)


class NameTakenError(Exception):
    """A child's name is taken by an object that is not ours."""


@dataclass(frozen=True)
class Kind(Generic[O]):
    """How one kind plugs into the loop.

    observe(obj, indexes, now) -> O   reads what decide needs (indexes; I/O allowed)
    decide(obj, observed, now) -> Decision   pure
    finished(status) -> bool   finished objects are not resynced
    period(options) -> seconds between resyncs
    reread: read the object before each run (a status written by the last run may not have
      come back through the watch yet, and the decision must not repeat a step)
    on_delete(obj, indexes) -> actions   best effort, once the object is gone
    record(obj, decision)   extra metrics
    """

    kind: str
    plural: str
    observe: Callable[[Obj, Mapping[str, Any], datetime], O]
    decide: Callable[[Obj, O, datetime], Decision]
    period: Callable[[Any], float]
    finished: Callable[[Mapping[str, Any]], bool] = lambda _: False
    reread: bool = False
    on_delete: Callable[[Obj, Mapping[str, Any]], list[Action]] | None = None
    record: Callable[[Obj, Decision], None] | None = None

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{VERSION}"


def _compact(body: Mapping[str, Any]) -> bytes:
    meta = body["metadata"]
    record = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        # managedFields is most of a small object's metadata and no reconcile reads it.
        "metadata": {k: v for k, v in meta.items() if k != "managedFields"},
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }
    return json.dumps(record, separators=(",", ":")).encode()


def _dig(body: Mapping[str, Any], path: str) -> Any:
    value: Any = body
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def controller_uid(body: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller owner, if it has one."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def execute(action: Action, namespace: str) -> None:
    """Carry out one action in `namespace` (every action is confined to it; cluster-scoped
    objects have the namespace "")."""
    if isinstance(action, Create):
        body = {**action.body, "metadata": {**action.body["metadata"], "namespace": namespace}}
        owner = controller_uid(body)
        if k8s.create(body) or (owner is None and not action.must_match):
            return
        meta = body["metadata"]
        existing = k8s.get(body["apiVersion"], body["kind"], namespace, meta["name"]) or {}
        if owner is not None and controller_uid(existing) != owner:
            raise NameTakenError(
                f"{body['kind']} {meta['name']} exists and is not controlled by this object "
                f"(owner uid {controller_uid(existing)!r}, not {owner!r}): delete or rename it"
            )
        for path in action.must_match:
            if _dig(existing, path) != _dig(body, path):
                raise NameTakenError(
                    f"{body['kind']} {meta['name']} exists with {path}={_dig(existing, path)!r}"
                )
    elif isinstance(action, Patch):
        k8s.patch(
            action.api_version,
            action.kind,
            namespace,
            action.name,
            action.patch,
            subresource=action.subresource,
        )
    elif isinstance(action, Delete):
        k8s.delete(action.api_version, action.kind, namespace, action.name)
    else:
        _update_status(action, namespace)


def _update_status(action: UpdateStatus, namespace: str) -> None:
    for _ in range(_UPDATE_ATTEMPTS):
        current = k8s.get(action.api_version, action.kind, namespace, action.name)
        if current is None:
            return
        change = action.change(current.get("status") or {})
        if change is None:
            return
        patch = {
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "status": change,
        }
        try:
            k8s.patch(
                action.api_version, action.kind, namespace, action.name, patch, subresource="status"
            )
        except k8s.ApiException as exc:
            if exc.status == 409:
                continue
            raise
        log.info("%s %s/%s status: %s", action.kind, namespace, action.name, change)
        return
    raise RuntimeError(f"{action.kind} {namespace}/{action.name}: status still conflicting")


@dataclass
class Loop(Generic[O]):
    """The objects of one kind, their records and the reconcile that runs on them."""

    kind: Kind[O]
    period: float = 10.0
    records: dict[Key, tuple[float, bytes]] = field(default_factory=dict)
    running: set[Key] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _object_locks: dict[Key, threading.Lock] = field(default_factory=dict)
    _reconciled: set[Key] = field(default_factory=set)

    # ------------------------------------------------------------------ records

    def seen(self, body: Mapping[str, Any], keep: bool = True) -> None:
        """After a watch event or a write: remember the object (due one period from now) or
        forget it."""
        meta = body["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if not keep:
            with self.lock:
                self.records.pop(key, None)
            return
        encoded = _compact(body)
        due = time.monotonic() + self.period
        with self.lock:
            # An event never puts off a resync already due sooner: the cadence stays one
            # period, however often the object changes (a Rollout's pause ends on time).
            if key in self.records:
                due = min(due, self.records[key][0])
            self.records[key] = (due, encoded)

    def take_due(self, now: float) -> list[tuple[Key, bytes]]:
        """Records due now and not being reconciled, each postponed by one period (a failed
        reconcile is retried then)."""
        with self.lock:
            due = [
                (key, raw)
                for key, (at, raw) in self.records.items()
                if at <= now and key not in self.running
            ]
            for key, raw in due:
                self.records[key] = (now + self.period, raw)
        return due

    def postpone(self, key: Key, delay: float) -> None:
        with self.lock:
            if key in self.records:
                self.records[key] = (time.monotonic() + delay, self.records[key][1])

    def soon(self, key: Key, delay: float = 0.0) -> bool:
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

    def _object_lock(self, key: Key) -> threading.Lock:
        with self.lock:
            return self._object_locks.setdefault(key, threading.Lock())

    # ------------------------------------------------------------------ runs

    def on_event(self, body: kopf.Body, indexes: Mapping[str, Any], deleted: bool) -> None:
        """A watch event of the kind: record it, then reconcile (or clean up after it)."""
        meta = body["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if deleted:
            self.seen(body, keep=False)
            with self.lock:
                self._object_locks.pop(key, None)
                self._reconciled.discard(key)
            metrics.record_phase(self.kind.kind, key[0], key[1], None)
            if self.kind.on_delete is not None:
                for action in self.kind.on_delete(obj_from_body(body), indexes):
                    execute(action, key[0])
            return
        # Recorded first: a reconcile that fails is retried by the resync one period later.
        self.seen(body, keep=not self.kind.finished(body.get("status") or {}))
        self.run(key, body, indexes)

    def kick(self, key: Key, indexes: Mapping[str, Any]) -> None:
        """Reconcile now, from a fresh read (a related object changed)."""
        self.run(key, None, indexes, fresh=True)

    def run_record(self, key: Key, raw: bytes, indexes: Mapping[str, Any]) -> None:
        """One resync run from a record."""
        try:
            self.run(key, json.loads(raw), indexes)
        finally:
            with self.lock:
                self.running.discard(key)

    def run(
        self,
        key: Key,
        body: Mapping[str, Any] | None,
        indexes: Mapping[str, Any],
        fresh: bool = False,
    ) -> None:
        """One reconcile, one at a time per object; never raises."""
        namespace, name = key
        with self._object_lock(key):
            started = time.monotonic()
            metrics.RECONCILES.labels(self.kind.kind).inc()
            try:
                self._reconcile(key, body, indexes, fresh)
            except kopf.TemporaryError as exc:
                log.warning("%s %s/%s: %s", self.kind.kind, namespace, name, exc)
                if exc.delay is not None:
                    self.postpone(key, exc.delay)
            except NameTakenError as exc:
                log.warning("%s %s/%s: %s", self.kind.kind, namespace, name, exc)
                self._report_conflict(key, str(exc))
                # Retried slowly: the name frees only when someone deletes the other object.
                self.postpone(key, max(self.period, 5.0))
            except k8s.ApiException as exc:
                if exc.status == 404:
                    self.seen({"metadata": {"namespace": namespace, "name": name}}, keep=False)
                    return  # deleted meanwhile: its DELETED event may follow
                metrics.ERRORS.labels(self.kind.kind).inc()
                log.exception("reconcile of %s %s/%s failed", self.kind.kind, namespace, name)
            except Exception:
                metrics.ERRORS.labels(self.kind.kind).inc()
                log.exception("reconcile of %s %s/%s failed", self.kind.kind, namespace, name)
            finally:
                metrics.DURATION.labels(self.kind.kind).observe(time.monotonic() - started)

    def _reconcile(
        self, key: Key, body: Mapping[str, Any] | None, indexes: Mapping[str, Any], fresh: bool
    ) -> None:
        namespace, name = key
        kind = self.kind
        if body is None or fresh or kind.reread:
            body = k8s.get(kind.api_version, kind.kind, namespace or None, name)
            if body is None:
                self.seen({"metadata": {"namespace": namespace, "name": name}}, keep=False)
                return
        if body["metadata"].get("deletionTimestamp"):
            return
        obj = obj_from_body(body)
        now = datetime.now(UTC)
        decision = kind.decide(obj, kind.observe(obj, indexes, now), now)
        if decision.status_first:
            written = self._write_status(obj, decision)
        for action in decision.actions:
            execute(action, namespace)
        if not decision.status_first:
            written = self._write_status(obj, decision)
        if written is not None:
            self.seen(written, keep=not kind.finished(written.get("status") or {}))
            body = written
        for event in decision.events:
            kopf.event(
                kopf.Body(dict(body)),  # type: ignore[arg-type]
                type=event.type,
                reason=event.reason,
                message=event.message[:1024],
            )
        status = apply_merge_patch(obj.status, decision.status)
        phase = status.get("phase")
        self._log_run(key, decision, phase)
        metrics.record_phase(kind.kind, namespace, name, str(phase) if phase else None)
        if kind.record is not None:
            kind.record(obj, decision)

    def _report_conflict(self, key: Key, message: str) -> None:
        """Condition ChildConflict and a Warning Event on the object (once per message)."""
        namespace, name = key
        kind = self.kind
        body = k8s.get(kind.api_version, kind.kind, namespace or None, name)
        if body is None:
            return
        status = body.get("status") or {}
        conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
        before = next((c for c in conditions if c.type == "ChildConflict"), None)
        if before is not None and before.status == "True" and before.message == message:
            return
        generation = body["metadata"].get("generation")
        changed = set_condition(
            conditions,
            "ChildConflict",
            "True",
            "ChildConflict",
            message,
            datetime.now(UTC),
            generation,
        )
        patch = {"status": {"conditions": [c.wire() for c in changed], "message": message}}
        k8s.patch(kind.api_version, kind.kind, namespace or None, name, patch, subresource="status")
        kopf.event(
            kopf.Body(dict(body)),  # type: ignore[arg-type]
            type="Warning",
            reason="ChildConflict",
            message=message[:1024],
        )

    def _log_run(self, key: Key, decision: Decision, phase: Any) -> None:
        with self.lock:
            first = key not in self._reconciled
            self._reconciled.add(key)
        if first or decision.actions or decision.status:
            log.info(
                "%s %s/%s reconciled%s: phase %s, %d action(s), status %s",
                self.kind.kind,
                key[0],
                key[1],
                " (first run in this operator)" if first else "",
                phase,
                len(decision.actions),
                sorted(decision.status) or "unchanged",
            )

    def _write_status(self, obj: Obj, decision: Decision) -> dict[str, Any] | None:
        if not decision.status:
            return None
        kind = self.kind
        return k8s.patch(
            kind.api_version,
            kind.kind,
            obj.namespace or None,
            obj.name,
            {"status": decision.status},
            subresource="status",
        )


LOOPS: list[Loop[Any]] = []


def register(kind: Kind[O]) -> Loop[O]:
    """Plug a kind into the loop: its watch events reconcile, and it is resynced."""
    loop: Loop[O] = Loop(kind)
    LOOPS.append(loop)

    def on_event(body: kopf.Body, **kwargs: Any) -> None:
        # A plain watch handler, not kopf's change handlers: those persist their progress in
        # annotations, two extra writes per object that a level-triggered reconcile never needs.
        loop.on_event(body, _indexes(kwargs), deleted=kwargs.get("type") == "DELETED")

    kopf.on.event(GROUP, VERSION, kind.plural, id=f"{kind.plural}-reconcile")(on_event)
    return loop


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k.startswith("ws_")}


def _is_anchor(name: str, **_: Any) -> bool:
    return name == ANCHOR_CRD


_settings = kopf.OperatorSettings()


@kopf.on.startup()
def _start(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Daemons are not given the settings: the loop needs kopf's executor for sync handlers.
    from whetstone_operator.settings import OPTIONS

    global _settings
    _settings = settings
    for loop in LOOPS:
        loop.period = loop.kind.period(OPTIONS)


@kopf.daemon(
    "apiextensions.k8s.io",
    "v1",
    "customresourcedefinitions",
    when=_is_anchor,
    cancellation_timeout=5,
)
async def resync_loop(stopped: kopf.DaemonStopped, **kwargs: Any) -> None:
    loop = asyncio.get_running_loop()
    indexes = _indexes(kwargs)
    # How often to look for due records: a fraction of the shortest period.
    tick = min(max(min((x.period for x in LOOPS), default=1.0) / 10, 0.1), 1.0)
    try:
        while not stopped:
            now = time.monotonic()
            for kind_loop in LOOPS:
                for key, raw in kind_loop.take_due(now):
                    with kind_loop.lock:
                        kind_loop.running.add(key)
                    # Not awaited: one slow reconcile never holds up the others' resyncs.
                    # kopf.event() needs kopf's context variables in the worker thread.
                    loop.run_in_executor(
                        _settings.execution.executor,
                        contextvars.copy_context().run,
                        kind_loop.run_record,
                        key,
                        raw,
                        indexes,
                    )
            await stopped.wait(tick)
    finally:
        # Paused or exiting: the records may go stale; the watch events after a resume (a
        # fresh listing) fill them again.
        for kind_loop in LOOPS:
            kind_loop.clear()
