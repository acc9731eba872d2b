"""PlatformPolicy: which policy governs a namespace, and the spend ledger, as tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from whetstone_operator.api.platformpolicy import NamespaceSelector, NamespaceSpend
from whetstone_operator.reconcile.core import Obj, apply_merge_patch
from whetstone_operator.reconcile.platformpolicy import (
    Observed,
    decide_platformpolicy,
    spend,
)
from whetstone_operator.reconcile.policy import BUILT_IN, PolicyEntry, policy_for

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
NEXT_MONTH = datetime(2026, 12, 1, 0, 5, tzinfo=UTC)

EVERYONE = PolicyEntry("default", {})
REGULATED = PolicyEntry(
    "regulated",
    {
        "priority": 10,
        "namespaceSelector": {"matchLabels": {"whetstone.dev/tier": "regulated"}},
        "approval": {"minApprovers": 2},
    },
)
BROKEN = PolicyEntry("broken", {"priority": 100, "approval": {"minApprovers": 0}})
NOT_SANDBOX = PolicyEntry(
    "not-sandbox",
    {
        "priority": 5,
        "namespaceSelector": {
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["sandbox"]}]
        },
    },
)

SELECTION = {
    "no policy: the built-in default": ({}, [], BUILT_IN),
    "an empty selector governs every namespace": ({}, [EVERYONE], "default"),
    "the highest priority that selects wins": (
        {"whetstone.dev/tier": "regulated"},
        [EVERYONE, REGULATED],
        "regulated",
    ),
    "a policy that does not select is skipped": ({}, [EVERYONE, REGULATED], "default"),
    "a policy whose spec does not parse selects nothing": ({}, [BROKEN, EVERYONE], "default"),
    "NotIn selects a namespace without the label": ({}, [EVERYONE, NOT_SANDBOX], "not-sandbox"),
    "NotIn does not select a namespace with a listed value": (
        {"env": "sandbox"},
        [EVERYONE, NOT_SANDBOX],
        "default",
    ),
    "equal priority: the first name": ({}, [PolicyEntry("zz", {}), PolicyEntry("aa", {})], "aa"),
}


@pytest.mark.parametrize("name", SELECTION, ids=list(SELECTION))
def test_which_policy_governs(name: str) -> None:
    labels, entries, want = SELECTION[name]
    assert policy_for("ml", labels, entries).name == want


def test_a_policy_names_its_fields_in_refusals() -> None:
    policy = policy_for("ml", {"whetstone.dev/tier": "regulated"}, [REGULATED])
    assert policy.spec.approval.min_approvers == 2
    assert policy.field("approval.minApprovers") == (
        "PlatformPolicy regulated spec.approval.minApprovers"
    )


@pytest.mark.parametrize(
    ("expressions", "labels", "selected"),
    [
        ([{"key": "a", "operator": "Exists"}], {"a": "1"}, True),
        ([{"key": "a", "operator": "Exists"}], {}, False),
        ([{"key": "a", "operator": "DoesNotExist"}], {"a": "1"}, False),
        ([{"key": "a", "operator": "In", "values": ["1", "2"]}], {"a": "2"}, True),
        ([{"key": "a", "operator": "In", "values": ["1"]}], {}, False),
    ],
)
def test_selector_expressions(
    expressions: list[dict[str, Any]], labels: dict[str, str], selected: bool
) -> None:
    selector = NamespaceSelector.model_validate({"matchExpressions": expressions})
    assert selector.matches(labels) is selected


def test_spend_never_goes_down_and_deleted_jobs_stay_counted() -> None:
    first = spend(None, {"a": 3600.0, "b": 1800.0}, NOW)
    assert first.month == "2026-11" and first.gpu_hours == 1.5
    # Job b was deleted; job a's figure came back lower (a hand-edited status).
    later = spend(first, {"a": 100.0}, NOW)
    assert later.gpu_hours == 1.5 and later.jobs == {"a": 3600.0, "b": 1800.0}


def test_a_new_month_counts_only_what_was_spent_in_it() -> None:
    november = spend(None, {"a": 7200.0}, NOW)
    december = spend(november, {"a": 9000.0, "c": 360.0}, NEXT_MONTH)
    assert december.month == "2026-12"
    assert december.gpu_hours == pytest.approx((1800 + 360) / 3600, abs=1e-4)


def _policy(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> Obj:
    return Obj(name, "", f"uid-{name}", 1, spec, status or {})


def test_status_lists_the_governed_namespaces_and_their_spend() -> None:
    observed = Observed(
        namespaces={"ml": {}, "bank": {"whetstone.dev/tier": "regulated"}, "kube-system": {}},
        policies=(EVERYONE, REGULATED),
        costs={"bank": {"j1": 7200.0}, "ml": {"j2": 60.0}},
    )
    decision = decide_platformpolicy(_policy("regulated", REGULATED.spec), observed, NOW)
    status = apply_merge_patch({}, decision.status)
    assert status["namespaces"] == ["bank"] and status["namespaceCount"] == 1
    assert status["spend"]["bank"]["gpuHours"] == 2.0
    assert status["phase"] == "Active"
    other = decide_platformpolicy(_policy("default", {}), observed, NOW)
    assert apply_merge_patch({}, other.status)["namespaces"] == ["kube-system", "ml"]


def test_an_invalid_policy_governs_nothing_and_says_why() -> None:
    decision = decide_platformpolicy(
        _policy("broken", BROKEN.spec), Observed(namespaces={"ml": {}}, policies=(BROKEN,)), NOW
    )
    status = apply_merge_patch({}, decision.status)
    assert status["phase"] == "Invalid" and not status.get("namespaces")
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and "minApprovers" in valid["message"]


def test_spend_model_round_trips() -> None:
    record = spend(None, {"a": 36.0}, NOW)
    assert NamespaceSpend.model_validate(record.wire()) == record
