"""What a namespace's PlatformPolicy allows a FineTuneJob before it starts: the spec checks,
the GPU budget, and the placement the policy forces onto the pods. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from whetstone_operator.api.finetunejob import FineTuneJobSpec
from whetstone_operator.reconcile.policy import Policy
from whetstone_operator.render.workload import Placement, TrainerDefaults


@dataclass(frozen=True)
class Violation:
    """A FineTuneJob field the policy refuses: `field` (the FineTuneJob's), `rule` (the policy
    field that refuses it) and `message` (what to change)."""

    field: str
    rule: str
    message: str

    def describe(self) -> str:
        return f"{self.field}: {self.message} ({self.rule})"


def _toleration(raw: dict[str, Any]) -> dict[str, Any]:
    """A toleration as the API server compares it: unset fields dropped, operator Equal when
    omitted."""
    out = {k: v for k, v in raw.items() if v not in (None, "")}
    out.setdefault("operator", "Equal")
    return out


def check_training_policy(
    spec: FineTuneJobSpec, policy: Policy, defaults: TrainerDefaults
) -> list[Violation]:
    """Every way `spec` asks for more than `policy` allows, in spec order (empty: allowed)."""
    rules = policy.spec.training
    res = spec.resources
    out: list[Violation] = []

    # The operator's own default image is the platform team's choice, so it is always allowed.
    image = spec.image
    if image and image != defaults.image and not any(fnmatchcase(image, g) for g in rules.images):
        allowed = (
            f"an image matching one of {', '.join(rules.images)}"
            if rules.images
            else f"the operator's default image {defaults.image}"
        )
        out.append(
            Violation(
                "spec.image",
                policy.field("training.images"),
                f"image {image} is not allowed: use {allowed}, or omit spec.image",
            )
        )

    for key, value in res.node_selector.items():
        forced = rules.node_selector.get(key)
        if forced is not None and forced != value:
            out.append(
                Violation(
                    f"spec.resources.nodeSelector.{key}",
                    policy.field("training.nodeSelector"),
                    f"the policy places trainer pods on {key}={forced}: set {forced} or "
                    "remove the label",
                )
            )

    allowed_tolerations = [_toleration(t) for t in rules.tolerations]
    for i, toleration in enumerate(res.tolerations):
        if _toleration(toleration) not in allowed_tolerations:
            out.append(
                Violation(
                    f"spec.resources.tolerations[{i}]",
                    policy.field("training.tolerations"),
                    "only the policy's tolerations are allowed (every trainer pod gets them): "
                    "remove this one",
                )
            )

    if res.priority_class_name and res.priority_class_name not in rules.priority_class_names:
        allowed = ", ".join(rules.priority_class_names) or "none: remove priorityClassName"
        out.append(
            Violation(
                "spec.resources.priorityClassName",
                policy.field("training.priorityClassNames"),
                f"PriorityClass {res.priority_class_name} is not allowed; allowed: {allowed}",
            )
        )

    gpu_name = res.gpu_resource_name or defaults.gpu_resource_name
    if res.gpus_per_node and gpu_name not in rules.gpu_resource_names:
        out.append(
            Violation(
                "spec.resources.gpuResourceName",
                policy.field("training.gpuResourceNames"),
                f"GPU resource {gpu_name} is not allowed; use one of "
                f"{', '.join(rules.gpu_resource_names) or '(none)'}",
            )
        )

    gpus = res.nodes * res.gpus_per_node
    if gpus > rules.max_gpus_per_job:
        out.append(
            Violation(
                "spec.resources.gpusPerNode",
                policy.field("training.maxGPUsPerJob"),
                f"nodes x gpusPerNode is {gpus} GPUs, more than the {rules.max_gpus_per_job} "
                "allowed: ask for fewer",
            )
        )
    if res.nodes > rules.max_nodes:
        out.append(
            Violation(
                "spec.resources.nodes",
                policy.field("training.maxNodes"),
                f"{res.nodes} nodes is more than the {rules.max_nodes} allowed: ask for fewer",
            )
        )

    data_class = spec.dataset.classification
    if data_class not in rules.data_classes:
        out.append(
            Violation(
                "spec.dataset.classification",
                policy.field("training.dataClasses"),
                f"{data_class} data may not be trained on here; allowed: "
                f"{', '.join(rules.data_classes) or '(none)'}",
            )
        )
    if data_class == "restricted" and not spec.dataset.redact:
        out.append(
            Violation(
                "spec.dataset.redact",
                policy.field("training.dataClasses"),
                "restricted data must be redacted: list what to redact (e.g. email, phone, "
                "secret, creditCard, iban, ipAddress)",
            )
        )
    if spec.output.encryption is None and rules.require_output_encryption:
        out.append(
            Violation(
                "spec.output.encryption",
                policy.field("training.requireOutputEncryption"),
                "output encryption is required: set output.encryption",
            )
        )
    elif spec.output.encryption is None and data_class == "restricted":
        out.append(
            Violation(
                "spec.output.encryption",
                policy.field("training.dataClasses"),
                "a model trained on restricted data must be stored encrypted: set "
                "output.encryption",
            )
        )
    return out


def budget_exhausted(policy: Policy, now: datetime) -> str | None:
    """Why a new job must wait for GPU budget, or None when it may start."""
    budget = policy.spec.training.budget.gpu_hours_per_month
    if budget <= 0:
        return None
    spent = policy.spent_gpu_hours(now)
    if spent < budget:
        return None
    return (
        f"the namespace has spent {spent:g} of its {budget:g} GPU-hours for {now:%Y-%m} "
        f"({policy.field('training.budget.gpuHoursPerMonth')}): the job starts when the "
        "budget is raised or next month"
    )


def has_budget(policy: Policy) -> bool:
    """Whether the policy limits GPU time at all."""
    return policy.spec.training.budget.gpu_hours_per_month > 0


def forced_placement(policy: Policy) -> Placement:
    """The nodeSelector and tolerations the policy puts on every trainer and validation pod."""
    rules = policy.spec.training
    return Placement(
        node_selector=dict(rules.node_selector), tolerations=[dict(t) for t in rules.tolerations]
    )
