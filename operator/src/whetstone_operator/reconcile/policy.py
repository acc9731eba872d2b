"""Which PlatformPolicy governs a namespace, and what it has spent. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from whetstone_operator.api.platformpolicy import NamespaceSpend, PlatformPolicySpec

BUILT_IN = "built-in default"


@dataclass(frozen=True)
class Policy:
    """The policy that governs one namespace: its name (for messages naming the rule that
    refused something), its rules, and the namespace's spend this month."""

    name: str = BUILT_IN
    spec: PlatformPolicySpec = field(default_factory=PlatformPolicySpec)
    spend: NamespaceSpend | None = None

    def field(self, path: str) -> str:
        """`PlatformPolicy <name> spec.<path>`: how a refusal names the rule."""
        return f"PlatformPolicy {self.name} spec.{path}"

    def spent_gpu_hours(self, now: datetime) -> float:
        """GPU-hours the namespace spent in `now`'s month."""
        if self.spend is None or self.spend.month != month_of(now):
            return 0.0
        return self.spend.gpu_hours


def month_of(now: datetime) -> str:
    return now.strftime("%Y-%m")


@dataclass(frozen=True)
class PolicyEntry:
    """A PlatformPolicy as the operator indexes it; its spec is parsed once per version of
    the object, not at every reconcile that asks which policy governs a namespace."""

    name: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any] = field(default_factory=dict)

    @cached_property
    def parsed(self) -> PlatformPolicySpec | None:
        try:
            return PlatformPolicySpec.model_validate(dict(self.spec))
        except ValidationError:
            return None


def governing(
    namespace_labels: Mapping[str, str], entries: Iterable[PolicyEntry]
) -> tuple[PolicyEntry, PlatformPolicySpec] | None:
    """The policy that selects a namespace with these labels: the highest priority, then the
    first name. A policy whose spec does not parse selects nothing (its status says why)."""
    labels = dict(namespace_labels)
    best: tuple[tuple[int, str], PolicyEntry, PlatformPolicySpec] | None = None
    for entry in entries:
        spec = entry.parsed
        if spec is None or not spec.namespace_selector.matches(labels):
            continue
        rank = (-spec.priority, entry.name)
        if best is None or rank < best[0]:
            best = (rank, entry, spec)
    return None if best is None else (best[1], best[2])


def policy_for(
    namespace: str, namespace_labels: Mapping[str, str], entries: Iterable[PolicyEntry]
) -> Policy:
    """The Policy of `namespace` (the built-in default when no PlatformPolicy selects it)."""
    found = governing(namespace_labels, entries)
    if found is None:
        return Policy()
    entry, spec = found
    raw = (entry.status.get("spend") or {}).get(namespace)
    try:
        spend = NamespaceSpend.model_validate(raw) if raw else None
    except ValidationError:
        spend = None
    return Policy(name=entry.name, spec=spec, spend=spend)
