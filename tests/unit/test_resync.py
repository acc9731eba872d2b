"""The resync loop's records: due times, retries, what a reconcile from a record writes."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import kopf
import pytest

from whetstone_operator import k8s
from whetstone_operator.handlers import resync


def body(name: str = "a", phase: str = "Running") -> dict[str, Any]:
    return {
        "apiVersion": "whetstone.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "ns", "uid": "u", "managedFields": [{"x": 1}]},
        "spec": {"model": "m"},
        "status": {"phase": phase},
    }


def test_a_seen_object_is_due_one_interval_later_and_then_postponed() -> None:
    kind = resync.Resync("finetunejobs", lambda *_: None)
    kind.seen(body())
    now = time.monotonic()
    assert kind.take_due(now) == []
    due = kind.take_due(now + resync.RESYNC_SECONDS + 1)
    assert [key for key, _ in due] == [("ns", "a")]
    record = json.loads(due[0][1])
    assert "managedFields" not in record["metadata"] and record["status"] == {"phase": "Running"}
    # Taken once per interval: a failing reconcile is retried at the next one.
    assert kind.take_due(now + resync.RESYNC_SECONDS + 1) == []
    kind.seen(body(), keep=False)
    assert kind.records == {}


def test_a_reconcile_from_a_record_writes_its_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[str, str, str, dict[str, Any]]] = []
    monkeypatch.setattr(k8s, "patch_object", lambda *args: written.append(args))

    def reconcile(obj: kopf.Body, patch: kopf.Patch, indexes: Mapping[str, Any]) -> None:
        assert indexes == {"ws_jobs": {}}
        patch.status["phase"] = "Succeeded" if obj["status"]["phase"] == "Running" else "?"

    kind = resync.Resync("finetunejobs", reconcile)
    kind.run(("ns", "a"), json.dumps(body()).encode(), {"ws_jobs": {}})
    assert written == [("finetunejobs", "ns", "a", {"status": {"phase": "Succeeded"}})]


def test_errors_are_retried_later_and_a_deleted_object_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    errors: list[Exception] = [kopf.TemporaryError("not yet", delay=1), k8s.ApiException(404, "")]

    def reconcile(*_: Any) -> None:
        raise errors.pop(0)

    kind = resync.Resync("finetunejobs", reconcile)
    kind.seen(body())
    raw = kind.records["ns", "a"][1]
    kind.run(("ns", "a"), raw, {})
    assert kind.records["ns", "a"][0] <= time.monotonic() + 1
    kind.run(("ns", "a"), raw, {})
    assert kind.records == {}


def test_the_loop_runs_on_the_finetunejob_crd_only() -> None:
    assert resync._is_anchor(name="finetunejobs.whetstone.dev")
    assert not resync._is_anchor(name="rollouts.whetstone.dev")
    kinds = {k.plural for k in resync.KINDS}
    assert {"finetunejobs", "modelversions"} <= kinds


def test_soon_brings_a_reconcile_forward_but_never_puts_it_off() -> None:
    kind = resync.Resync("finetunejobs", lambda *_: None)
    assert not kind.soon(("ns", "a"))  # not tracked: nothing to bring forward
    kind.seen(body())
    now = time.monotonic()
    assert kind.take_due(now) == []
    assert kind.soon(("ns", "a"))
    assert [key for key, _ in kind.take_due(time.monotonic())] == [("ns", "a")]
    kind.postpone(("ns", "a"), 0.0)
    assert kind.soon(("ns", "a"), delay=3600)  # already due: stays due
    assert [key for key, _ in kind.take_due(time.monotonic())] == [("ns", "a")]
