"""Samples: valid ones pass the CRD schema and the models; invalid ones fail naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from whetstone_operator.api import KINDS
from whetstone_operator.api.errors import SpecError, parse_spec

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
