"""The shared reconcile loop: records and due times, retries, what a run writes and in which
order, actions confined to the object's namespace, serialised runs per object."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf
import pytest

from whetstone_operator import k8s
from whetstone_operator.handlers import runtime
from whetstone_operator.reconcile.core import (
    Create,
    Decision,
    Delete,
    Event,
    Obj,
    Patch,
    UpdateStatus,
)

PERIOD = 10.0


def body(name: str = "a", phase: str = "Running") -> dict[str, Any]:
    return {
        "apiVersion": "whetstone.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "ns", "uid": "u", "managedFields": [{"x": 1}]},
        "spec": {"model": "m"},
        "status": {"phase": phase},
    }


def make_loop(
    decide: Any = lambda obj, observed, now: Decision(), observe: Any = None, **kw: Any
) -> runtime.Loop[Any]:
    kind = runtime.Kind(
        kind="FineTuneJob",
        plural="finetunejobs",
        observe=observe or (lambda obj, indexes, now: indexes),
        decide=decide,
        period=lambda _: PERIOD,
        finished=lambda status: status.get("phase") == "Succeeded",
        **kw,
    )
    return runtime.Loop(kind, period=PERIOD)


class FakeApi:
    """Records what the loop asks of k8s.py, answering like the API server."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.conflicts = 0
        monkeypatch.setattr(k8s, "create", self.create)
        monkeypatch.setattr(k8s, "get", self.get)
        monkeypatch.setattr(k8s, "patch", self.patch)
        monkeypatch.setattr(k8s, "delete", self.delete)
        monkeypatch.setattr(kopf, "event", lambda *a, **k: self.calls.append(("event", k)))

    def create(self, body: dict[str, Any]) -> bool:
        self.calls.append(("create", body["metadata"]["namespace"], body["metadata"]["name"]))
        if body["metadata"]["name"] in self.objects:
            return False
        self.objects[body["metadata"]["name"]] = body
        return True

    def get(self, api_version: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, ns, name))
        return self.objects.get(name)

    def patch(self, api_version: str, kind: str, ns: str, name: str, patch: Any, **kw: Any) -> Any:
        self.calls.append(("patch", kind, ns, name, patch, kw.get("subresource")))
        if self.conflicts:
            self.conflicts -= 1
            raise k8s.ApiException(409, "Conflict")
        return {**body(name), "status": {**body(name)["status"], **patch.get("status", {})}}

    def delete(self, api_version: str, kind: str, ns: str, name: str) -> bool:
        self.calls.append(("delete", kind, ns, name))
        return True


def test_a_seen_object_is_due_one_period_later_and_then_postponed() -> None:
    loop = make_loop()
    loop.seen(body())
    now = time.monotonic()
    assert loop.take_due(now) == []
    due = loop.take_due(now + PERIOD + 1)
    assert [key for key, _ in due] == [("ns", "a")]
    record = json.loads(due[0][1])
    assert "managedFields" not in record["metadata"] and record["status"] == {"phase": "Running"}
    # Taken once per period: a failing reconcile is retried at the next one.
    assert loop.take_due(now + PERIOD + 1) == []
    loop.seen(body(), keep=False)
    assert loop.records == {}


def test_a_record_being_reconciled_is_not_taken_again() -> None:
    loop = make_loop()
    loop.seen(body())
    loop.running.add(("ns", "a"))
    assert loop.take_due(time.monotonic() + PERIOD + 1) == []
    loop.running.clear()
    assert [k for k, _ in loop.take_due(time.monotonic() + PERIOD + 1)] == [("ns", "a")]


def test_a_run_from_a_record_writes_its_status_then_emits_its_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi(monkeypatch)

    def decide(obj: Obj, observed: Mapping[str, Any], now: datetime) -> Decision:
        assert observed == {"ws_jobs": {}}
        phase = "Succeeded" if obj.status["phase"] == "Running" else "?"
        return Decision(status={"phase": phase}, events=[Event("Normal", "Done", "done")])

    loop = make_loop(decide)
    loop.seen(body())
    loop.run_record(("ns", "a"), loop.records["ns", "a"][1], {"ws_jobs": {}})
    assert api.calls[0] == (
        "patch",
        "FineTuneJob",
        "ns",
        "a",
        {"status": {"phase": "Succeeded"}},
        "status",
    )
    assert api.calls[1][0] == "event" and api.calls[1][1]["reason"] == "Done"
    # The written object is the record now; a finished one is no longer resynced.
    assert loop.records == {}


def test_actions_run_before_the_status_unless_the_decision_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi(monkeypatch)
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}}
    for first, expected in ((False, ["create", "patch"]), (True, ["patch", "create"])):
        api.calls.clear()
        api.objects.clear()
        decision = Decision([Create(child)], {"phase": "Validating"}, status_first=first)
        make_loop(lambda *_, d=decision: d).run(("ns", "a"), body(), {})
        assert [c[0] for c in api.calls] == expected
    # The child lands in the reconciled object's namespace, whatever its body said.
    assert ("create", "ns", "c") in api.calls


def _status_patches(api: FakeApi) -> list[dict[str, Any]]:
    return [c[4]["status"] for c in api.calls if c[0] == "patch" and c[5] == "status"]


def test_a_taken_child_name_is_reported_and_retried_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi(monkeypatch)
    api.objects["a"] = body()
    api.objects["mv"] = {"spec": {"source": {"fineTuneJob": "someone-else"}}}
    mine = {
        "apiVersion": "whetstone.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": "mv", "namespace": "ns"},
        "spec": {"source": {"fineTuneJob": "a"}},
    }
    decision = Decision(
        [Create(mine, must_match=("spec.source.fineTuneJob",))], {"modelVersion": "mv"}
    )
    loop = make_loop(lambda *_: decision)
    loop.seen(body())
    loop.run(("ns", "a"), body(), {})
    (reported,) = _status_patches(api)  # status never points at it; the conflict is reported
    assert "modelVersion" not in reported
    (cond,) = reported["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "ChildConflict",
        "True",
        "ChildConflict",
    )
    assert "spec.source.fineTuneJob='someone-else'" in cond["message"]
    assert [c[1]["reason"] for c in api.calls if c[0] == "event"] == ["ChildConflict"]
    assert loop.records["ns", "a"][0] >= time.monotonic() + PERIOD - 1
    api.objects["mv"] = mine  # ours after all (a repeated reconcile): fine
    loop.run(("ns", "a"), body(), {})
    assert _status_patches(api)[-1] == {"modelVersion": "mv"}


def _child(owner_uid: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "a-config", "namespace": "ns"}
    if owner_uid is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "whetstone.dev/v1alpha1",
                "kind": "FineTuneJob",
                "name": "a",
                "uid": owner_uid,
                "controller": True,
            }
        ]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {}}


@pytest.mark.parametrize(
    ("existing_owner", "conflict"),
    [("u", False), ("someone-else", True), (None, True)],
    ids=["ours", "another owner", "no owner (pre-created by a tenant)"],
)
def test_an_existing_child_counts_only_when_we_control_it(
    monkeypatch: pytest.MonkeyPatch, existing_owner: str | None, conflict: bool
) -> None:
    api = FakeApi(monkeypatch)
    api.objects["a"] = body()
    api.objects["a-config"] = _child(existing_owner)
    decision = Decision([Create(_child("u"))], {"phase": "Validating"})
    make_loop(lambda *_: decision).run(("ns", "a"), body(), {})
    patches = _status_patches(api)
    if conflict:
        assert [p["conditions"][0]["type"] for p in patches] == ["ChildConflict"]
        assert "not controlled by this object" in patches[0]["conditions"][0]["message"]
    else:
        assert patches == [{"phase": "Validating"}]


def test_patch_delete_and_a_status_update_retried_on_conflict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi(monkeypatch)
    api.objects["v1"] = {"metadata": {"resourceVersion": "7"}, "status": {"n": 1}}
    api.conflicts = 1
    decision = Decision(
        [
            UpdateStatus("g/v1", "ModelVersion", "v1", lambda s: {"n": s["n"] + 1}),
            Patch("g/v1", "InferenceService", "isvc", {"spec": {}}),
            Delete("batch/v1", "Job", "j"),
        ]
    )
    make_loop(lambda *_: decision).run(("ns", "a"), body(), {})
    updates = [c for c in api.calls if c[0] == "patch" and c[1] == "ModelVersion"]
    assert len(updates) == 2  # a 409, then again from a fresh read
    assert updates[-1][4] == {"metadata": {"resourceVersion": "7"}, "status": {"n": 2}}
    assert ("patch", "InferenceService", "ns", "isvc", {"spec": {}}, None) in api.calls
    assert ("delete", "Job", "ns", "j") in api.calls


def test_errors_are_retried_later_and_a_deleted_object_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeApi(monkeypatch)
    errors: list[Exception] = [kopf.TemporaryError("not yet", delay=1), k8s.ApiException(404, "")]

    def decide(*_: Any) -> Decision:
        raise errors.pop(0)

    loop = make_loop(decide)
    loop.seen(body())
    raw = loop.records["ns", "a"][1]
    loop.run_record(("ns", "a"), raw, {})
    assert loop.records["ns", "a"][0] <= time.monotonic() + 1
    loop.run_record(("ns", "a"), raw, {})
    assert loop.records == {}


def test_a_kind_that_rereads_decides_on_the_stored_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeApi(monkeypatch)
    api.objects["a"] = body(phase="Paused")
    seen: list[str] = []

    def decide(obj: Obj, observed: Any, now: datetime) -> Decision:
        seen.append(obj.status["phase"])
        return Decision()

    make_loop(decide, reread=True).run(("ns", "a"), body(phase="Running"), {})
    assert seen == ["Paused"]
    del api.objects["a"]
    loop = make_loop(decide, reread=True)
    loop.seen(body())
    loop.kick(("ns", "a"), {})
    assert seen == ["Paused"] and loop.records == {}


def test_runs_of_one_object_never_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeApi(monkeypatch)
    inside, most = [0], [0]
    guard = threading.Lock()

    def decide(*_: Any) -> Decision:
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with guard:
            inside[0] -= 1
        return Decision()

    loop = make_loop(decide)
    threads = [threading.Thread(target=loop.run, args=(("ns", "a"), body(), {})) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1


def test_the_resync_runs_on_the_finetunejob_crd_and_every_kind_is_registered() -> None:
    assert runtime._is_anchor(name="finetunejobs.whetstone.dev")
    assert not runtime._is_anchor(name="rollouts.whetstone.dev")
    import whetstone_operator.handlers  # noqa: F401  (registers the kinds)

    kinds = {loop.kind.plural: loop.kind for loop in runtime.LOOPS}
    assert set(kinds) == {"finetunejobs", "modelversions", "rollouts", "platformpolicies"}
    assert kinds["rollouts"].reread and not kinds["finetunejobs"].reread


def test_soon_brings_a_reconcile_forward_but_never_puts_it_off() -> None:
    loop = make_loop()
    assert not loop.soon(("ns", "a"))  # not tracked: nothing to bring forward
    loop.seen(body())
    now = time.monotonic()
    assert loop.take_due(now) == []
    assert loop.soon(("ns", "a"))
    assert [key for key, _ in loop.take_due(time.monotonic())] == [("ns", "a")]
    loop.postpone(("ns", "a"), 0.0)
    assert loop.soon(("ns", "a"), delay=3600)  # already due: stays due
    assert [key for key, _ in loop.take_due(time.monotonic())] == [("ns", "a")]
