"""Samples: valid ones pass the CRD schema and the models; invalid ones fail naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from whetstone_operator.api import KINDS
from whetstone_operator.api.errors import SpecError, parse_spec
from whetstone_operator.api.platformpolicy import PlatformPolicySpec
from whetstone_operator.reconcile.policy import PolicyEntry, policy_for

from tests.conftest import REPO_ROOT, sample_header

SAMPLES = REPO_ROOT / "manifests" / "samples"
VALID = sorted(SAMPLES.glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def _crd_schema(kind: str) -> dict[str, Any]:
    info, _ = KINDS[kind]
    crd = yaml.safe_load((REPO_ROOT / "crds" / f"whetstone.dev_{info.plural}.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _spec_model(kind: str):
    _, model = KINDS[kind]
    return model.model_fields["spec"].annotation


def test_there_are_samples_of_every_kind() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in VALID}
    assert kinds == set(KINDS)
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_sample_passes_schema_and_models(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    jsonschema.Draft4Validator(_crd_schema(obj["kind"])).validate(obj)
    parse_spec(_spec_model(obj["kind"]), obj["spec"])


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_sample_names_the_field(path: Path) -> None:
    header = sample_header(path)
    assert {"field", "error"} <= header.keys(), f"{path.name} needs '# field:' and '# error:'"
    obj = yaml.safe_load(path.read_text())
    with pytest.raises(SpecError) as info:
        parse_spec(_spec_model(obj["kind"]), obj["spec"])
    matching = [m for m in info.value.messages if m.startswith(header["field"] + ":")]
    assert matching, f"no error on {header['field']}: {info.value.messages}"
    assert any(header["error"] in m for m in matching), info.value.messages


def _policy(name: str) -> dict[str, Any]:
    obj = yaml.safe_load((SAMPLES / f"platformpolicy-{name}.yaml").read_text())
    assert obj["kind"] == "PlatformPolicy" and "namespace" not in obj["metadata"], "cluster-scoped"
    return obj


def test_the_default_policy_sample_is_the_api_defaults_and_the_charts() -> None:
    sample = _policy("default")
    assert PlatformPolicySpec.model_validate(sample["spec"]) == PlatformPolicySpec()
    values = yaml.safe_load((REPO_ROOT / "charts" / "whetstone" / "values.yaml").read_text())
    assert sample["metadata"]["name"] == values["policy"]["name"]
    assert sample["spec"] == values["policy"]["spec"]


def test_the_regulated_policy_sample_governs_only_the_labelled_namespaces() -> None:
    entries = [
        PolicyEntry(name=obj["metadata"]["name"], spec=obj["spec"])
        for obj in (_policy("default"), _policy("regulated"))
    ]
    regulated = policy_for("risk", {"whetstone.dev/tier": "regulated"}, entries)
    assert regulated.name == "regulated"
    rules = regulated.spec
    assert rules.approval.min_approvers == 2 and rules.approval.approver_groups
    assert rules.training.images and all("@sha256:" in i for i in rules.training.images)
    assert rules.training.node_selector and rules.training.tolerations
    assert "restricted" in rules.training.data_classes
    assert rules.training.require_output_encryption
    assert rules.training.budget.gpu_hours_per_month == 500
    assert [e.name for e in rules.analysis.prometheus] == ["regulated"]
    for labels in ({}, {"whetstone.dev/tier": "standard"}):
        assert policy_for("ml", labels, entries).name == "default"
