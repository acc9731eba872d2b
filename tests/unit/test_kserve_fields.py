"""The InferenceService fields the Rollout writes and reads, checked against the KServe SDK's
generated models, the reference for KServe's API.

The SDK (`kserve` on PyPI) is installed without its model-server dependencies
(`hack/install.sh all`), so its package `__init__`, which needs them, cannot run: the models
are loaded from the package folder directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from whetstone_operator.reconcile.canary import Desired, build_predictor_patch, candidate_storage
from whetstone_operator.reconcile.canary.kserve import service_view

REPO = Path(__file__).resolve().parents[2]
# Wire types the SDK models as classes but which travel as plain strings.
STRING_CLASSES = {"KnativeURL", "KnativeVolatileTime", "datetime"}
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "object": (object,),
}


@pytest.fixture(scope="module")
def models() -> types.ModuleType:
    spec = importlib.util.find_spec("kserve")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the kserve SDK is not installed here (hack/install.sh all installs it)")
    if "kserve" not in sys.modules:
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    return importlib.import_module("kserve.models")


def problems(value: Any, type_name: str, models: types.ModuleType, path: str) -> list[str]:
    """Fields of `value` unknown to the SDK type `type_name`, or of the wrong type."""
    if value is None:
        return []  # a JSON merge patch's null removes the field
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: a list expected ({type_name})"]
        return [
            p
            for i, item in enumerate(value)
            for p in problems(item, type_name[5:-1], models, f"{path}[{i}]")
        ]
    if type_name.startswith("dict("):
        inner = type_name[5:-1].split(", ", 1)[1]
        return [p for k, v in value.items() for p in problems(v, inner, models, f"{path}.{k}")]
    if type_name in STRING_CLASSES:
        return [] if isinstance(value, str) else [f"{path}: a string expected ({type_name})"]
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name])
        if type_name == "int" and isinstance(value, bool):
            ok = False
        return [] if ok else [f"{path}: {type(value).__name__} where KServe has {type_name}"]
    cls = getattr(models, type_name, None)
    if cls is None:
        return []  # a Kubernetes core type (e.g. V1Toleration), not KServe's to define
    if not isinstance(value, dict):
        return [f"{path}: an object expected ({type_name})"]
    by_wire = {wire: attr for attr, wire in cls.attribute_map.items()}
    out = []
    for key, sub in value.items():
        if key not in by_wire:
            out.append(f"{path}.{key}: not a field of KServe's {type_name}")
        else:
            out += problems(sub, cls.openapi_types[by_wire[key]], models, f"{path}.{key}")
    return out


def check(body: dict[str, Any], models: types.ModuleType) -> list[str]:
    return problems(body, "V1beta1InferenceService", models, "InferenceService")


@pytest.mark.parametrize(
    "desired",
    [
        Desired(candidate_storage("s3://models/grader/v2/", "merged", None), 5),
        Desired(candidate_storage("s3://m/adapter/", "adapter", "hf://org/base"), 25),
        Desired(candidate_storage("s3://models/grader/v2/", "merged", None), None),
        Desired(candidate_storage("s3://models/grader/v1/", "merged", None), 0),
    ],
    ids=["merged canary", "adapter on its base", "promotion clears the split", "abort"],
)
def test_the_predictor_patches_name_kserve_fields(
    models: types.ModuleType, desired: Desired
) -> None:
    patch = build_predictor_patch(desired)
    assert check(patch, models) == []


def test_an_adapter_goes_where_kserve_keeps_several_storage_uris(
    models: types.ModuleType,
) -> None:
    """A deliberately wrong placement is caught: the check is not vacuous."""
    patch = build_predictor_patch(
        Desired(candidate_storage("s3://m/adapter/", "adapter", "hf://org/base"), 5)
    )
    uris = patch["spec"]["predictor"]["storageUris"]
    assert [u["mountPath"] for u in uris] == ["/mnt/models/base", "/mnt/models/adapter"]
    misplaced = {"spec": {"predictor": {"model": {"storageUris": uris}}}}
    assert check(misplaced, models) == [
        "InferenceService.spec.predictor.model.storageUris: not a field of KServe's "
        "V1beta1ModelSpec"
    ]
    renamed = {"spec": {"predictor": {"storageUris": [{"uri": "s3://x/", "path": "/mnt"}]}}}
    assert check(renamed, models) == [
        "InferenceService.spec.predictor.storageUris[0].path: not a field of KServe's "
        "V1beta1StorageUri"
    ]
    typed = {"spec": {"predictor": {"canaryTrafficPercent": "5"}}}
    assert check(typed, models) == [
        "InferenceService.spec.predictor.canaryTrafficPercent: str where KServe has int"
    ]


READ_BY_THE_ROLLOUT: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "grader", "generation": 3},
    "spec": {
        "predictor": {
            "canaryTrafficPercent": 25,
            "storageUris": [
                {"uri": "hf://org/base", "mountPath": "/mnt/models/base"},
                {"uri": "s3://m/adapter/", "mountPath": "/mnt/models/adapter"},
            ],
            "model": {"modelFormat": {"name": "huggingface"}},
        }
    },
    "status": {
        "observedGeneration": 3,
        "url": "http://grader.ml.example.com",
        "conditions": [{"type": "Ready", "status": "False", "message": "Revision missing"}],
        "components": {
            "predictor": {
                "latestCreatedRevision": "grader-predictor-00002",
                "latestReadyRevision": "grader-predictor-00002",
                "latestRolledoutRevision": "grader-predictor-00001",
                "previousRolledoutRevision": "grader-predictor-00001",
                # Knative's TrafficTarget, which the SDK does not model: not checked here.
                "traffic": [],
            }
        },
    },
}


def test_every_field_the_rollout_reads_is_a_kserve_field(models: types.ModuleType) -> None:
    view = service_view(READ_BY_THE_ROLLOUT)
    # The example exercises what service_view reads...
    assert view.canary_traffic_percent == 25
    assert view.storage.storage_uris is not None and len(view.storage.storage_uris) == 2
    assert view.observed_generation == 3 and view.generation == 3
    assert view.latest_ready_revision == view.latest_created_revision == "grader-predictor-00002"
    assert not view.ready and view.ready_message == "Revision missing"
    assert view.model_form
    # ...and every one of those fields is KServe's.
    assert check(READ_BY_THE_ROLLOUT, models) == []


def test_argocd_ignores_the_fields_the_rollout_owns(models: types.ModuleType) -> None:
    app = yaml.safe_load((REPO / "manifests/argocd/application-models.yaml").read_text())
    (rule,) = [r for r in app["spec"]["ignoreDifferences"] if r["kind"] == "InferenceService"]
    owned = set()
    for expression in rule["jqPathExpressions"]:
        body: dict[str, Any] = {}
        node = body
        *parents, leaf = expression.lstrip(".").split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = 1 if leaf == "canaryTrafficPercent" else "x" if leaf == "storageUri" else []
        assert check(body, models) == [], expression
        owned.add(expression)
    patch = build_predictor_patch(
        Desired(candidate_storage("s3://m/adapter/", "adapter", "hf://org/base"), 5)
    )
    written = {f".spec.predictor.{k}" for k in patch["spec"]["predictor"] if k != "model"} | {
        f".spec.predictor.model.{k}" for k in patch["spec"]["predictor"]["model"]
    }
    assert written == owned
