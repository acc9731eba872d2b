"""Where trainer pods may run: core/v1 Toleration and Affinity, typed and bounded.

Both are kept as plain dicts once checked (`CheckedBy`), so they reach pod specs as written,
while the CRD schema carries every field, enum and size bound. An affinity is also refused
above AFFINITY_MAX_BYTES of JSON, whatever its shape.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from whetstone_contract.base import CamelModel
from whetstone_operator.api.common import (
    DNS_LABEL_MAX,
    DNS_SUBDOMAIN_MAX,
    LABEL_KEY,
    LABEL_VALUE,
    QUALIFIED_NAME_MAX,
    CheckedBy,
    as_written,
)

TOLERATIONS_MAX = 32
NODE_SELECTOR_MAX = 32
AFFINITY_MAX_BYTES = 16384
TERMS_MAX = 32  # terms of one affinity list, and requirements of one term
VALUES_MAX = 128  # values of one requirement
NAMESPACES_MAX = 64

LabelKey = Annotated[str, Field(max_length=QUALIFIED_NAME_MAX)]
LabelValue = Annotated[str, Field(max_length=DNS_LABEL_MAX)]
NodeSelector = Annotated[dict[LabelKey, LabelValue], Field(max_length=NODE_SELECTOR_MAX)]


class Toleration(CamelModel):
    """A core/v1 Toleration: the pod tolerates taints that match key, value and effect."""

    key: str | None = Field(
        default=None,
        max_length=QUALIFIED_NAME_MAX,
        pattern=r"^$|" + LABEL_KEY,
        description="Taint key matched; empty with operator Exists matches every taint.",
    )
    operator: Literal["Exists", "Equal", ""] | None = Field(
        default=None, description="Exists (any value) or Equal (the default)."
    )
    value: str | None = Field(
        default=None,
        max_length=DNS_LABEL_MAX,
        pattern=LABEL_VALUE,
        description="Taint value matched with operator Equal; empty with Exists.",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] | None = Field(
        default=None, description="Taint effect matched; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="With effect NoExecute: how long the pod stays bound after the taint "
        "appears (default: forever).",
    )

    @model_validator(mode="after")
    def _as_the_api_server_checks(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without key needs operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


def _check_values(operator: str, values: list[str], key: str) -> None:
    """The values a selector operator takes, as the API server checks them."""
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"operator {operator} on {key} needs values")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"operator {operator} on {key} takes no values")
    if operator in ("Gt", "Lt") and len(values) != 1:
        raise ValueError(f"operator {operator} on {key} takes exactly one value (an integer)")


class NodeSelectorRequirement(CamelModel):
    """A requirement on a node label (or, in matchFields, a node field)."""

    key: str = Field(max_length=QUALIFIED_NAME_MAX, description="Label key or field name.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[Annotated[str, Field(max_length=DNS_SUBDOMAIN_MAX)]] = Field(
        default_factory=list,
        max_length=VALUES_MAX,
        description="Values for In and NotIn, one integer for Gt and Lt, none otherwise.",
    )

    @model_validator(mode="after")
    def _values_match_operator(self) -> NodeSelectorRequirement:
        _check_values(self.operator, self.values, self.key)
        return self


class NodeSelectorTerm(CamelModel):
    """Requirements a node meets, all of them."""

    match_expressions: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=TERMS_MAX, description="Requirements on node labels."
    )
    match_fields: list[NodeSelectorRequirement] = Field(
        default_factory=list, max_length=TERMS_MAX, description="Requirements on node fields."
    )


class NodeSelectorTerms(CamelModel):
    """Terms of which a node must meet at least one."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, max_length=TERMS_MAX, description="The terms, any of them."
    )


class PreferredSchedulingTerm(CamelModel):
    """A node term the scheduler prefers, with its weight."""

    weight: int = Field(ge=1, le=100, description="Weight of the preference (1-100).")
    preference: NodeSelectorTerm = Field(description="The term preferred.")


class NodeAffinity(CamelModel):
    """Which nodes the pods must, or preferably should, run on."""

    required_during_scheduling_ignored_during_execution: NodeSelectorTerms | None = Field(
        default=None, description="Nodes the pods must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=TERMS_MAX, description="Nodes the pods prefer."
    )


class LabelSelectorRequirement(CamelModel):
    """A requirement on a pod or namespace label."""

    key: str = Field(max_length=QUALIFIED_NAME_MAX, description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] = Field(
        default_factory=list,
        max_length=VALUES_MAX,
        description="Values for In and NotIn; none for Exists and DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelSelectorRequirement:
        _check_values(self.operator, self.values, self.key)
        return self


class LabelSelector(CamelModel):
    """Labels an object must carry (metav1.LabelSelector; empty selects every object)."""

    match_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=TERMS_MAX, description="Labels, all of them."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, max_length=TERMS_MAX, description="Requirements, all of them."
    )


class PodAffinityTerm(CamelModel):
    """Pods (by labels and namespaces) whose topology domain the pods join or avoid."""

    label_selector: LabelSelector | None = Field(
        default=None, description="The pods this term is about."
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces of those pods, by label."
    )
    namespaces: list[LabelValue] = Field(
        default_factory=list,
        max_length=NAMESPACES_MAX,
        description="Namespaces of those pods, by name (empty: the pod's own).",
    )
    topology_key: str = Field(
        min_length=1,
        max_length=QUALIFIED_NAME_MAX,
        description="Node label that defines the domain (e.g. kubernetes.io/hostname).",
    )
    match_label_keys: list[LabelKey] = Field(
        default_factory=list,
        max_length=TERMS_MAX,
        description="Label keys whose values, taken from the incoming pod, narrow the selector.",
    )
    mismatch_label_keys: list[LabelKey] = Field(
        default_factory=list,
        max_length=TERMS_MAX,
        description="Label keys whose values, taken from the incoming pod, exclude pods.",
    )


class WeightedPodAffinityTerm(CamelModel):
    """A pod affinity term the scheduler prefers, with its weight."""

    weight: int = Field(ge=1, le=100, description="Weight of the preference (1-100).")
    pod_affinity_term: PodAffinityTerm = Field(description="The term preferred.")


class PodAffinity(CamelModel):
    """Pod affinity (or anti-affinity) terms: required ones and preferred ones."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=TERMS_MAX, description="Terms that must hold."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=TERMS_MAX, description="Terms preferred."
    )


class Affinity(CamelModel):
    """A core/v1 Affinity."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(
        default=None, description="Pods to run in the same topology domain as."
    )
    pod_anti_affinity: PodAffinity | None = Field(
        default=None, description="Pods to keep out of the topology domain of."
    )

    @model_validator(mode="after")
    def _small_enough(self) -> Affinity:
        size = len(json.dumps(as_written(self), separators=(",", ":")).encode())
        if size > AFFINITY_MAX_BYTES:
            raise ValueError(
                f"affinity is {size} bytes as JSON, above the {AFFINITY_MAX_BYTES} allowed: "
                "use fewer or shorter terms"
            )
        return self


TolerationDict = Annotated[dict[str, Any], CheckedBy(Toleration)]
AffinityDict = Annotated[dict[str, Any], CheckedBy(Affinity)]
