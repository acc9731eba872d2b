"""PlatformPolicy decisions: which namespaces a policy governs now, and the GPU time each has
spent this month (a ledger the tenants cannot lower by deleting their jobs). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from whetstone_operator.api.platformpolicy import (
    NamespaceSpend,
    PlatformPolicySpec,
    PlatformPolicyStatus,
)
from whetstone_operator.reconcile.core import Decision, Draft, Obj
from whetstone_operator.reconcile.policy import PolicyEntry, governing, month_of
from whetstone_operator.reconcile.validation import check_spec


@dataclass(frozen=True)
class Observed:
    """Every namespace's labels, every policy, and each FineTuneJob's GPU-seconds so far
    (namespace -> FineTuneJob uid -> seconds)."""

    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    policies: tuple[PolicyEntry, ...] = ()
    costs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def _status(raw: Mapping[str, object]) -> PlatformPolicyStatus:
    try:
        return PlatformPolicyStatus.model_validate(dict(raw))
    except ValidationError:
        return PlatformPolicyStatus()


def spend(
    before: NamespaceSpend | None, costs: Mapping[str, float], now: datetime
) -> NamespaceSpend:
    """This month's spend of one namespace: each job's seconds never go down (a deleted
    job's stay counted); a new month starts from what each job had spent before it."""
    month = month_of(now)
    if before is None:
        before = NamespaceSpend(month=month)
    if before.month != month:
        carried = {uid: max(before.jobs.get(uid, 0.0), 0.0) for uid in before.jobs}
        before = NamespaceSpend(month=month, baseline=carried)
    jobs = dict(before.jobs)
    for uid, seconds in costs.items():
        jobs[uid] = max(jobs.get(uid, 0.0), float(seconds))
    spent = sum(max(s - before.baseline.get(uid, 0.0), 0.0) for uid, s in jobs.items())
    return NamespaceSpend(
        month=month, gpu_hours=round(spent / 3600, 4), jobs=jobs, baseline=before.baseline
    )


def decide_platformpolicy(obj: Obj, observed: Observed, now: datetime) -> Decision:
    """The namespaces the policy governs and their spend."""
    d = Draft(obj, _status(obj.status), now)
    spec = check_spec(d, "PlatformPolicy")
    if not isinstance(spec, PlatformPolicySpec):
        d.status.namespaces, d.status.namespace_count = [], 0
        d.phase("Invalid", "InvalidSpec", d.status.message or "invalid spec", warning=True)
        return d.finish()
    governed = sorted(
        ns
        for ns, labels in observed.namespaces.items()
        if (found := governing(labels, observed.policies)) is not None and found[0].name == obj.name
    )
    status = d.status
    if governed != status.namespaces:
        d.event("Normal", "Governs", f"governs {len(governed)} namespace(s)")
    status.namespaces, status.namespace_count = governed, len(governed)
    status.spend = {
        ns: spend(status.spend.get(ns), observed.costs.get(ns, {}), now) for ns in governed
    }
    d.phase("Active", "Active", f"governs {len(governed)} namespace(s)")
    return d.finish()
