"""check_training_policy as a table: one rule per case, allowed and refused; the budget and
the forced placement."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from whetstone_operator.api.finetunejob import FineTuneJobSpec
from whetstone_operator.api.platformpolicy import NamespaceSpend, PlatformPolicySpec
from whetstone_operator.reconcile.policy import Policy
from whetstone_operator.reconcile.training_policy import (
    budget_exhausted,
    check_training_policy,
    forced_placement,
)
from whetstone_operator.render.workload import TrainerDefaults

from tests.conftest import REPO_ROOT

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
DEFAULTS = TrainerDefaults(image="registry.local/trainer:1", gpu_resource_name="nvidia.com/gpu")
SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())["spec"]
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# Within the policy below; each case changes one thing.
BASE: dict[str, Any] = {
    **SAMPLE,
    "resources": {
        "nodes": 1,
        "gpusPerNode": 8,
        "nodeSelector": {"node.kubernetes.io/instance-type": "p4d.24xlarge"},
        "tolerations": [GPU_TOLERATION],
        "deepspeed": {"zeroStage": 2},
    },
}
RULES: dict[str, Any] = {"tolerations": [GPU_TOLERATION]}


def spec_with(**changes: Any) -> dict[str, Any]:
    """BASE with dotted paths replaced, e.g. `{"resources.nodes": 2}`."""
    out = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = out
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


@dataclass
class Case:
    spec: dict[str, Any]
    refused: list[tuple[str, str]] = field(default_factory=list)  # (job field, policy field)
    rules: dict[str, Any] = field(default_factory=dict)


def _p(path: str) -> str:
    return f"PlatformPolicy tenants spec.training.{path}"


CASES: dict[str, Case] = {
    "the sample within the policy": Case(BASE),
    # images
    "no image: the operator's default": Case(spec_with(image=None)),
    "the operator's default named explicitly": Case(spec_with(image=DEFAULTS.image)),
    "another image with no images listed": Case(
        spec_with(image="docker.io/me/trainer:1"), [("spec.image", _p("images"))]
    ),
    "an image matching a glob": Case(
        spec_with(image="registry.example.com/trainer@sha256:abc"),
        rules={"images": ["registry.example.com/trainer@sha256:*"]},
    ),
    "an image matching no glob": Case(
        spec_with(image="registry.example.com/trainer:latest"),
        [("spec.image", _p("images"))],
        rules={"images": ["registry.example.com/trainer@sha256:*"]},
    ),
    # nodeSelector
    "a label the policy forces, set to its value": Case(
        spec_with(**{"resources.nodeSelector": {"pool": "gpu", "zone": "a"}}),
        rules={"nodeSelector": {"pool": "gpu"}},
    ),
    "a label the policy forces, set to another value": Case(
        spec_with(**{"resources.nodeSelector": {"pool": "cpu"}}),
        [("spec.resources.nodeSelector.pool", _p("nodeSelector"))],
        rules={"nodeSelector": {"pool": "gpu"}},
    ),
    # tolerations
    "a toleration the policy gives, operator Equal spelt out or not": Case(
        spec_with(**{"resources.tolerations": [{"key": "team", "value": "ml", "operator": None}]}),
        rules={"tolerations": [{"key": "team", "operator": "Equal", "value": "ml"}]},
    ),
    "a toleration the policy does not give": Case(
        spec_with(**{"resources.tolerations": [GPU_TOLERATION, {"operator": "Exists"}]}),
        [("spec.resources.tolerations[1]", _p("tolerations"))],
    ),
    # priorityClassName
    "an allowed PriorityClass": Case(
        spec_with(**{"resources.priorityClassName": "batch"}),
        rules={"priorityClassNames": ["batch"]},
    ),
    "a PriorityClass with none allowed": Case(
        spec_with(**{"resources.priorityClassName": "batch"}),
        [("spec.resources.priorityClassName", _p("priorityClassNames"))],
    ),
    # gpuResourceName
    "an allowed GPU resource": Case(
        spec_with(**{"resources.gpuResourceName": "amd.com/gpu"}),
        rules={"gpuResourceNames": ["amd.com/gpu"]},
    ),
    "a GPU resource not allowed": Case(
        spec_with(**{"resources.gpuResourceName": "amd.com/gpu"}),
        [("spec.resources.gpuResourceName", _p("gpuResourceNames"))],
    ),
    "the operator's default GPU resource not allowed": Case(
        BASE,
        [("spec.resources.gpuResourceName", _p("gpuResourceNames"))],
        rules={"gpuResourceNames": ["amd.com/gpu"]},
    ),
    "no GPUs asked: the GPU resource is not checked": Case(
        spec_with(**{"resources.gpusPerNode": 0}), rules={"gpuResourceNames": []}
    ),
    # maxGPUsPerJob
    "GPUs at the limit": Case(
        spec_with(**{"resources.nodes": 2, "resources.gpusPerNode": 4}),
    ),
    "GPUs over the limit": Case(
        spec_with(**{"resources.nodes": 2, "resources.gpusPerNode": 8}),
        [("spec.resources.gpusPerNode", _p("maxGPUsPerJob"))],
    ),
    # maxNodes
    "nodes at the limit": Case(
        spec_with(**{"resources.nodes": 2, "resources.gpusPerNode": 1}), rules={"maxNodes": 2}
    ),
    "nodes over the limit": Case(
        spec_with(**{"resources.nodes": 3, "resources.gpusPerNode": 1}),
        [("spec.resources.nodes", _p("maxNodes"))],
        rules={"maxNodes": 2},
    ),
    # dataClasses
    "the default class internal": Case(spec_with(**{"dataset.classification": None})),
    "a class not allowed": Case(
        spec_with(**{"dataset.classification": "internal"}),
        [("spec.dataset.classification", _p("dataClasses"))],
        rules={"dataClasses": ["public"]},
    ),
    # restricted data
    "restricted data, redacted and encrypted": Case(
        spec_with(**{"dataset.classification": "restricted"}),
        rules={"dataClasses": ["restricted"]},
    ),
    "restricted data not redacted": Case(
        spec_with(**{"dataset.classification": "restricted", "dataset.redact": []}),
        [("spec.dataset.redact", _p("dataClasses"))],
        rules={"dataClasses": ["restricted"]},
    ),
    "restricted data stored unencrypted": Case(
        spec_with(**{"dataset.classification": "restricted", "output.encryption": None}),
        [("spec.output.encryption", _p("dataClasses"))],
        rules={"dataClasses": ["restricted"]},
    ),
    # requireOutputEncryption
    "encryption required and set": Case(BASE, rules={"requireOutputEncryption": True}),
    "encryption required and missing": Case(
        spec_with(**{"output.encryption": None}),
        [("spec.output.encryption", _p("requireOutputEncryption"))],
        rules={"requireOutputEncryption": True},
    ),
    "encryption missing and not required": Case(spec_with(**{"output.encryption": None})),
}


@pytest.mark.parametrize("name", CASES, ids=list(CASES))
def test_check_training_policy(name: str) -> None:
    case = CASES[name]
    policy = Policy(
        name="tenants",
        spec=PlatformPolicySpec.model_validate({"training": {**RULES, **case.rules}}),
    )
    spec = FineTuneJobSpec.model_validate(case.spec)
    violations = check_training_policy(spec, policy, DEFAULTS)
    assert [(v.field, v.rule) for v in violations] == case.refused
    for v in violations:
        assert v.field in v.describe() and v.rule in v.describe() and v.message


def test_the_built_in_default_allows_the_default_image_and_no_added_toleration() -> None:
    spec = FineTuneJobSpec.model_validate(spec_with(**{"resources.tolerations": []}))
    assert check_training_policy(spec, Policy(), DEFAULTS) == []
    refused = FineTuneJobSpec.model_validate(BASE)
    (violation,) = check_training_policy(refused, Policy(), DEFAULTS)
    assert violation.rule == "PlatformPolicy built-in default spec.training.tolerations"


BUDGETS = {
    "no budget": (0.0, 5000.0, "2026-11", False),
    "within the budget": (100.0, 99.5, "2026-11", False),
    "budget spent": (100.0, 100.0, "2026-11", True),
    "spent in an earlier month": (100.0, 500.0, "2026-10", False),
}


@pytest.mark.parametrize("name", BUDGETS, ids=list(BUDGETS))
def test_budget(name: str) -> None:
    budget, spent, month, exhausted = BUDGETS[name]
    policy = Policy(
        name="tenants",
        spec=PlatformPolicySpec.model_validate(
            {"training": {"budget": {"gpuHoursPerMonth": budget}}}
        ),
        spend=NamespaceSpend(month=month, gpu_hours=spent),
    )
    message = budget_exhausted(policy, NOW)
    assert (message is not None) == exhausted
    if message is not None:
        assert f"{spent:g} of its {budget:g} GPU-hours" in message
        assert "PlatformPolicy tenants spec.training.budget.gpuHoursPerMonth" in message


def test_forced_placement_is_the_policy_s() -> None:
    policy = Policy(
        spec=PlatformPolicySpec.model_validate(
            {"training": {"nodeSelector": {"pool": "gpu"}, "tolerations": [GPU_TOLERATION]}}
        )
    )
    placement = forced_placement(policy)
    assert placement.node_selector == {"pool": "gpu"}
    assert placement.tolerations == [GPU_TOLERATION]
