"""The generated CRDs: no drift from the models, structural schemas, descriptions everywhere."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from whetstone_operator import crdgen

from tests.conftest import REPO_ROOT

CRD_FILES = sorted((REPO_ROOT / "crds").glob("*.yaml"))
FORBIDDEN = {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "examples", "const"}


def _schema(path: Any) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_checked_in_crds_match_a_fresh_generation() -> None:
    rendered = crdgen.render_all()
    assert sorted(rendered) == [p.name for p in CRD_FILES]
    for folder in crdgen.OUTPUT_DIRS:
        for name, text in rendered.items():
            assert (folder / name).read_text() == text, (
                f"{folder / name} drifts: run python -m whetstone_operator.crdgen"
            )
    assert crdgen.main(["--check"]) == 0


def test_drift_check_fails_when_a_file_differs(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(crdgen, "OUTPUT_DIRS", (tmp_path,))
    assert crdgen.main([]) == 0
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text().replace("Phase", "Fase"))
    assert crdgen.main(["--check"]) == 1


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_schema_is_structural(path) -> None:
    for where, node in _walk(_schema(path), "root"):
        assert not FORBIDDEN & node.keys(), f"{where} has {FORBIDDEN & node.keys()}"
        free = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node or free, f"{where} has no type"
        assert not ("properties" in node and "additionalProperties" in node), where
        assert node.get("additionalProperties") is not False, where
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), f"{where}.{bound} must be a bool"
        if "required" in node:
            assert set(node["required"]) <= set(node.get("properties", {})), where
        if "enum" in node:
            kinds = {"string": str, "integer": int, "boolean": bool}
            assert all(isinstance(v, kinds[node["type"]]) for v in node["enum"]), where


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_every_property_has_a_description(path) -> None:
    root = _schema(path)
    missing = [
        where
        for where, node in _walk(root, "root")
        if where != "root.metadata"
        and not where.endswith(("[]", "{}"))
        and not node.get("description")
    ]
    assert not missing, f"properties without description: {missing}"


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_names_columns_and_status_subresource(path) -> None:
    crd = yaml.safe_load(path.read_text())
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    assert names["categories"] == ["whetstone"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    expected = {
        "FineTuneJob": (["ftj"], ["Phase", "Progress", "Loss", "ETA", "ModelVersion", "Age"]),
        "ModelVersion": (["mv"], ["Model", "Version", "Phase", "ExactMatch", "Age"]),
        "Rollout": (["mro"], ["Phase", "Step", "Weight", "Stable", "Canary", "Age"]),
        "PlatformPolicy": (["wpp"], ["Priority", "Namespaces", "Governs", "Age"]),
    }[names["kind"]]
    assert crd["spec"]["scope"] == (
        "Cluster" if names["kind"] == "PlatformPolicy" else "Namespaced"
    )
    assert (names["shortNames"], columns) == expected


def test_cel_rules_are_emitted_for_cross_field_checks() -> None:
    text = "\n".join(p.read_text() for p in CRD_FILES)
    for rule in (
        "has(self.validation) != has(self.validationSplit)",
        "self.nodes <= 1 || has(self.deepspeed)",
        "spec.artifact is immutable",
        "a canary step has exactly one of setWeight, pause, analysis",
        "an analysis metric has exactly one of prometheus, http",
    ):
        assert rule in text


def test_free_form_fields_are_only_where_meant() -> None:
    free = [
        where
        for path in CRD_FILES
        for where, node in _walk(_schema(path), path.stem.split("_")[1])
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert sorted(free) == [
        "finetunejobs.spec.resources.affinity",
        "finetunejobs.spec.resources.tolerations[]",
        "platformpolicies.spec.training.tolerations[]",
        # A golden prompt's request body and the JSON Schema its answers must match.
        "rollouts.spec.strategy.canary.analysis.metrics[].http.prompts[].body",
        "rollouts.spec.strategy.canary.analysis.metrics[].http.responseSchema",
    ]
