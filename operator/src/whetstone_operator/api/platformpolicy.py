"""PlatformPolicy: what the platform team allows tenants, per namespace (cluster-scoped).

Tenants write FineTuneJobs, ModelVersions and Rollouts in their namespaces; the policy that
selects a namespace decides what those may ask for. A tenant can narrow it (e.g. require an
approval the policy does not), never widen it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from whetstone_contract.base import CamelModel
from whetstone_operator.api.common import (
    DNS_LABEL,
    DNS_LABEL_MAX,
    DNS_SUBDOMAIN_MAX,
    IMAGE_MAX,
    LABEL_KEY,
    QUALIFIED_NAME_MAX,
    URI_MAX,
    USER_MAX,
    KindInfo,
    StatusBase,
)
from whetstone_operator.api.scheduling import (
    TOLERATIONS_MAX,
    LabelKey,
    LabelValue,
    NodeSelector,
    TolerationDict,
)

DataClass = Literal["public", "internal", "restricted"]
DATA_CLASS_ORDER: tuple[DataClass, ...] = ("public", "internal", "restricted")
# Kubernetes is tested up to 10,000 namespaces per cluster; a policy may govern all of them.
NAMESPACES_MAX = 10_000
# GPU-seconds per FineTuneJob uid in one month, per namespace.
JOBS_PER_MONTH_MAX = 10_000
HOST_MAX = DNS_SUBDOMAIN_MAX + len(":65535")


class LabelRequirement(CamelModel):
    """One namespace-label requirement (metav1.LabelSelectorRequirement)."""

    key: str = Field(max_length=QUALIFIED_NAME_MAX, pattern=LABEL_KEY, description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] = Field(
        default_factory=list,
        max_length=64,
        description="Values for In and NotIn; empty for Exists and DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelRequirement:
        needs = self.operator in ("In", "NotIn")
        if needs and not self.values:
            raise ValueError(f"operator {self.operator} on {self.key} needs values")
        if not needs and self.values:
            raise ValueError(f"operator {self.operator} on {self.key} takes no values")
        return self


class NamespaceSelector(CamelModel):
    """Which namespaces a policy governs, by their labels (empty: every namespace)."""

    match_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Labels a namespace must carry, all of them.",
    )
    match_expressions: list[LabelRequirement] = Field(
        default_factory=list, max_length=32, description="Further requirements, all of them."
    )

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a namespace with `labels` is selected."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            has = req.key in labels
            ok = {
                "In": has and labels.get(req.key) in req.values,
                "NotIn": not has or labels.get(req.key) not in req.values,
                "Exists": has,
                "DoesNotExist": not has,
            }[req.operator]
            if not ok:
                return False
        return True


class ApprovalRules(CamelModel):
    """Who must approve a ModelVersion before any Rollout serves it."""

    required: bool = Field(
        default=True,
        description="An approval is required before a version serves. A ModelVersion's "
        "spec.approval.required can add the requirement where this is false, never lift it.",
    )
    min_approvers: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Distinct people who must approve (2 = the two-person rule).",
    )
    approver_groups: list[Annotated[str, Field(max_length=USER_MAX)]] = Field(
        default_factory=list,
        max_length=32,
        description="Groups an approver must belong to (any of them); empty: anyone with the "
        "approve verb on the ModelVersion.",
    )
    allow_service_accounts: bool = Field(
        default=False,
        description="Whether a ServiceAccount (e.g. a GitOps controller syncing an approve "
        "annotation) counts as an approver. Off: only people approve.",
    )
    forbid_self_approval: bool = Field(
        default=True,
        description="The person who created the ModelVersion, or the FineTuneJob that made "
        "it, may not approve it.",
    )


class Budget(CamelModel):
    """GPU time a namespace may spend."""

    gpu_hours_per_month: float = Field(
        default=0,
        ge=0,
        description="GPU-hours per calendar month (UTC) per namespace; 0 = unlimited. Once "
        "spent, new FineTuneJobs wait in Pending (reason BudgetExhausted).",
    )


class TrainingRules(CamelModel):
    """What FineTuneJobs may run, where, on how much, and on which data."""

    images: list[Annotated[str, Field(max_length=IMAGE_MAX)]] = Field(
        default_factory=list,
        max_length=64,
        description="Trainer images a FineTuneJob may name in spec.image (shell-style globs, "
        "e.g. registry.example.com/trainer@sha256:*); empty: only the operator's default.",
    )
    node_selector: NodeSelector = Field(
        default_factory=dict,
        description="Node labels forced onto every trainer pod; a FineTuneJob may add labels, "
        "never set one of these to another value.",
    )
    tolerations: list[TolerationDict] = Field(
        default_factory=list,
        max_length=TOLERATIONS_MAX,
        description="Tolerations given to every trainer pod (core/v1 Toleration); a "
        "FineTuneJob may repeat them, never add others.",
    )
    priority_class_names: list[Annotated[str, Field(max_length=DNS_SUBDOMAIN_MAX)]] = Field(
        default_factory=list,
        max_length=32,
        description="PriorityClasses a FineTuneJob may use; empty: none (the cluster default).",
    )
    gpu_resource_names: list[Annotated[str, Field(max_length=DNS_SUBDOMAIN_MAX)]] = Field(
        default_factory=lambda: ["nvidia.com/gpu"],
        max_length=16,
        description="Extended GPU resource names a FineTuneJob may request.",
    )
    max_gpus_per_job: int = Field(
        default=8,
        ge=0,
        le=100_000,
        alias="maxGPUsPerJob",
        description="Most GPUs one FineTuneJob may use (nodes x gpusPerNode).",
    )
    max_nodes: int = Field(
        default=4, ge=1, le=1024, description="Most trainer pods one FineTuneJob may use."
    )
    data_classes: list[DataClass] = Field(
        default_factory=lambda: list[DataClass](["public", "internal"]),
        max_length=3,
        description="Data classifications (spec.dataset.classification) allowed; restricted "
        "data also needs spec.dataset.redact and spec.output.encryption.",
    )
    require_output_encryption: bool = Field(
        default=False,
        description="Every FineTuneJob must set spec.output.encryption.",
    )
    budget: Budget = Field(default_factory=Budget, description="GPU-time budget per namespace.")


class PrometheusEndpoint(CamelModel):
    """A Prometheus that Rollouts may query by name."""

    name: str = Field(max_length=63, pattern=DNS_LABEL, description="Name Rollouts refer to.")
    address: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the Prometheus HTTP API (http:// or https://).",
    )


class AnalysisRules(CamelModel):
    """What a Rollout's analysis may reach."""

    prometheus: list[PrometheusEndpoint] = Field(
        default_factory=list,
        max_length=32,
        description="Named Prometheus endpoints (a Rollout metric's prometheus.endpoint).",
    )
    allow_addresses: list[Annotated[str, Field(max_length=URI_MAX)]] = Field(
        default_factory=list,
        max_length=32,
        description="Raw address prefixes a Rollout may use in prometheus.address; empty: "
        "named endpoints only.",
    )
    golden_prompt_hosts: list[Annotated[str, Field(max_length=HOST_MAX)]] = Field(
        default_factory=list,
        max_length=32,
        description="Hosts golden prompts may be sent to, besides the URLs KServe reports "
        "for the canary.",
    )


class PlatformPolicySpec(CamelModel):
    """The platform team's rules for the namespaces a policy selects."""

    namespace_selector: NamespaceSelector = Field(
        default_factory=NamespaceSelector,
        description="Namespaces governed ({} = all). Where several policies select a "
        "namespace, the highest priority applies (then the first name).",
    )
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Precedence among policies selecting a namespace."
    )
    approval: ApprovalRules = Field(
        default_factory=ApprovalRules, description="Approval of ModelVersions."
    )
    training: TrainingRules = Field(
        default_factory=TrainingRules, description="What FineTuneJobs may use."
    )
    analysis: AnalysisRules = Field(
        default_factory=AnalysisRules, description="What Rollout analysis may reach."
    )


Uid = Annotated[str, Field(max_length=128)]


class NamespaceSpend(CamelModel):
    """GPU time a namespace spent in one month."""

    month: str = Field(max_length=16, description="Calendar month (UTC), YYYY-MM.")
    gpu_hours: float = Field(default=0, ge=0, description="GPU-hours spent in the month.")
    jobs: dict[Uid, float] = Field(
        default_factory=dict,
        max_length=JOBS_PER_MONTH_MAX,
        description="GPU-seconds per FineTuneJob uid (kept when a job is deleted).",
    )
    baseline: dict[Uid, float] = Field(
        default_factory=dict,
        max_length=JOBS_PER_MONTH_MAX,
        description="GPU-seconds each job had spent before this month (not counted in it).",
    )


class PlatformPolicyStatus(StatusBase):
    """Observed state of a PlatformPolicy."""

    phase: Literal["Active", "Invalid"] | None = Field(
        default=None, description="Active, or Invalid (its spec does not parse: it governs none)."
    )
    namespaces: list[Annotated[str, Field(max_length=DNS_LABEL_MAX)]] = Field(
        default_factory=list,
        max_length=NAMESPACES_MAX,
        description="Namespaces this policy governs now.",
    )
    namespace_count: int = Field(default=0, ge=0, description="How many namespaces it governs.")
    spend: dict[Annotated[str, Field(max_length=DNS_LABEL_MAX)], NamespaceSpend] = Field(
        default_factory=dict,
        max_length=NAMESPACES_MAX,
        description="GPU time spent this month, by namespace.",
    )


class PlatformPolicy(CamelModel):
    """A platform policy."""

    spec: PlatformPolicySpec = Field(default_factory=PlatformPolicySpec)
    status: PlatformPolicyStatus = Field(default_factory=PlatformPolicyStatus)


PLATFORMPOLICY = KindInfo(
    kind="PlatformPolicy",
    plural="platformpolicies",
    singular="platformpolicy",
    short_names=["wpp"],
    namespaced=False,
    description="PlatformPolicy (cluster-scoped, written by the platform team) sets what "
    "tenants in the namespaces it selects may do: approvals, trainer images and placement, "
    "GPUs, data classes, GPU budget and the Prometheus endpoints analysis may query.",
    columns=[
        {"name": "Priority", "type": "integer", "jsonPath": ".spec.priority"},
        {"name": "Namespaces", "type": "integer", "jsonPath": ".status.namespaceCount"},
        {"name": "Governs", "type": "string", "jsonPath": ".status.namespaces", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
)
