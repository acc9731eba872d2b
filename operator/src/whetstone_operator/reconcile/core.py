"""The shared shape of every reconcile: the object, the actions, the decision, the status diff.

Every kind decides with a pure `decide(obj, observed, now) -> Decision`; the one loop in
`handlers/runtime.py` executes the actions in the object's namespace, writes the status patch
and emits the Events. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from whetstone_operator.api.common import Condition, ConditionStatus, set_condition


@dataclass(frozen=True)
class Obj:
    """The object being reconciled, as the decision needs it."""

    name: str
    namespace: str
    uid: str = ""
    generation: int | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


def obj_from_body(body: Mapping[str, Any]) -> Obj:
    """An `Obj` from an API object."""
    meta = body["metadata"]
    return Obj(
        name=meta["name"],
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        generation=meta.get("generation"),
        spec=dict(body.get("spec") or {}),
        status=dict(body.get("status") or {}),
        annotations=dict(meta.get("annotations") or {}),
        labels=dict(meta.get("labels") or {}),
    )


# ----------------------------------------------------------------------------- actions
# Every action names an object in the reconciled object's own namespace: a decision cannot
# reach another namespace, whatever its input says.


@dataclass(frozen=True)
class Create:
    """Create `body` unless an object of that name exists. When one does, it must be ours:
    controlled by the owner `body` names (same owner uid), and each of `must_match` (dotted
    paths) must hold the same value in it as in `body`; otherwise the name is someone
    else's, which the loop reports on the object (condition ChildConflict, an Event) and
    never reads as a result."""

    body: dict[str, Any]
    must_match: tuple[str, ...] = ()


@dataclass(frozen=True)
class Patch:
    """Merge-patch an object (or its `subresource`) if it exists."""

    api_version: str
    kind: str
    name: str
    patch: dict[str, Any]
    subresource: str | None = None


@dataclass(frozen=True)
class Delete:
    """Delete an object (background propagation) if it exists."""

    api_version: str
    kind: str
    name: str


# A pure function of an object's current status: the merge patch to apply, None when right.
StatusChange = Callable[[Mapping[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class UpdateStatus:
    """Read an object's status, apply `change` to it and write the result, optimistic on
    resourceVersion (for a status shared with other writers)."""

    api_version: str
    kind: str
    name: str
    change: StatusChange


Action = Create | Patch | Delete | UpdateStatus


@dataclass(frozen=True)
class Event:
    """An Event to emit on the reconciled object."""

    type: str
    reason: str
    message: str


@dataclass
class Decision:
    """Actions to execute, the status merge patch to write and the Events to emit.
    `status_first`: write the status before acting (it records what the actions will do)."""

    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    status_first: bool = False


# ----------------------------------------------------------------------------- status diff


def status_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) turning `before` into `after` (null removes a key)."""
    patch: dict[str, Any] = {}
    for key in before.keys() | after.keys():
        if key not in after:
            patch[key] = None
        elif key not in before:
            patch[key] = after[key]
        elif before[key] != after[key]:
            old, new = before[key], after[key]
            both = isinstance(old, Mapping) and isinstance(new, Mapping)
            patch[key] = status_diff(old, new) if both else new
    return patch


def apply_merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`target` with the JSON merge patch applied (what the API server stores)."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = apply_merge_patch(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = apply_merge_patch({}, value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- drafting


class _Status(Protocol):
    phase: Any
    message: str | None
    conditions: list[Condition]
    observed_generation: int | None

    def wire(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=_Status)


class Draft(Generic[S]):
    """A decision being written: the status as it will be, the actions and Events so far.
    Every kind's decide builds its Decision through one of these."""

    def __init__(
        self, obj: Obj, status: S, now: datetime, before: Mapping[str, Any] | None = None
    ) -> None:
        """`before`: the stored status to diff against (default: `status` as parsed, which
        drops what no longer parses)."""
        self.obj = obj
        self.before = dict(before) if before is not None else status.wire()
        self.status: S = status.model_copy(deep=True)  # type: ignore[attr-defined]
        self.now = now
        self.decision = Decision()
        self._phase_event: Event | None = None

    def act(self, *actions: Action) -> None:
        self.decision.actions.extend(actions)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(type_, reason, message))

    def condition(self, type_: str, ok: bool | None, reason: str, message: str) -> bool:
        """Set a condition (None = Unknown); True when its status or message changed."""
        value: ConditionStatus = "Unknown" if ok is None else ("True" if ok else "False")
        before = next((c for c in self.status.conditions if c.type == type_), None)
        self.status.conditions = set_condition(
            self.status.conditions, type_, value, reason, message, self.now, self.obj.generation
        )
        return before is None or before.status != value or before.message != message

    def phase(
        self,
        phase: str,
        reason: str,
        message: str,
        warning: bool = False,
        event_message: str | None = None,
    ) -> None:
        """Move to `phase`; a change posts an Event (several in one reconcile post one: the
        last tells the story)."""
        if self.status.phase != phase:
            event = Event("Warning" if warning else "Normal", reason, event_message or message)
            if self._phase_event is not None:
                self.decision.events.remove(self._phase_event)
            self.decision.events.append(event)
            self._phase_event = event
        self.status.phase = phase
        self.status.message = message

    def finish(self) -> Decision:
        """The decision, its status patch the diff from the status the object had."""
        self.status.observed_generation = self.obj.generation
        self.decision.status = status_diff(self.before, self.status.wire())
        return self.decision


K = TypeVar("K")
Decide = Callable[[Obj, K, datetime], Decision]
