"""The generated CRDs: no drift from the models, structural schemas, descriptions everywhere,
and a bound on everything that can grow, enforced by the schema and the models alike."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from whetstone_contract.result import DataReport, TrainerResult
from whetstone_operator import crdgen
from whetstone_operator.api.errors import SpecError, parse_spec
from whetstone_operator.api.finetunejob import FineTuneJobSpec, FineTuneJobStatus
from whetstone_operator.api.modelversion import ModelVersionSpec, ModelVersionStatus
from whetstone_operator.api.platformpolicy import PlatformPolicySpec, PlatformPolicyStatus
from whetstone_operator.api.scheduling import AFFINITY_MAX_BYTES

from tests.conftest import REPO_ROOT

CRD_FILES = sorted((REPO_ROOT / "crds").glob("*.yaml"))
FORBIDDEN = {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "examples", "const"}
# The API server checks these itself (they must name the CRD's group, version and kind, and a
# structural schema may restrict metadata only in name and generateName).
SERVER_CHECKED = {"root.apiVersion", "root.kind", "root.metadata"}


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
        # A golden prompt's request body and the JSON Schema its answers must match.
        "rollouts.spec.strategy.canary.analysis.metrics[].http.prompts[].body",
        "rollouts.spec.strategy.canary.analysis.metrics[].http.responseSchema",
    ]


# ------------------------------------------------------------------------------------ bounds


def unbounded(node: dict[str, Any]) -> str | None:
    """What in this schema node can grow without a limit (None when nothing can).

    A list needs maxItems, a map (additionalProperties) maxProperties, a string maxLength or an
    enum. A pattern does not count, even an anchored one: telling a bounded regular expression
    from an unbounded one is a parser's job, and maxLength costs one line. A free-form object
    (x-kubernetes-preserve-unknown-fields) needs maxProperties, the only bound a structural
    schema can put on it; what is below its top level is its model's to cap (a serialised-size
    check), which is why every such field is listed in test_free_form_fields_are_only_where_meant.
    Numbers and booleans have a fixed size; an object with properties is as bounded as they are.
    """
    kind = node.get("type")
    if kind == "array" and "maxItems" not in node:
        return "array without maxItems"
    if kind == "string" and "maxLength" not in node and "enum" not in node:
        return "string without maxLength or enum"
    if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
        return "map without maxProperties"
    if node.get("x-kubernetes-preserve-unknown-fields") and "maxProperties" not in node:
        return "free-form object without maxProperties"
    return None


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_every_list_map_and_string_is_bounded(path: Path) -> None:
    offenders = [
        f"{where}: {why}"
        for where, node in _walk(_schema(path), "root")
        if where not in SERVER_CHECKED and (why := unbounded(node))
    ]
    assert not offenders, "unbounded in the schema:\n" + "\n".join(offenders)


def test_the_bound_check_finds_each_kind_of_unbounded_node() -> None:
    ints = {"type": "integer"}
    assert unbounded({"type": "array", "items": ints}) is not None
    assert unbounded({"type": "array", "items": ints, "maxItems": 3}) is None
    assert unbounded({"type": "string", "pattern": "^[a-z]{3}$"}) is not None
    assert unbounded({"type": "string", "enum": ["a"]}) is None
    assert unbounded({"type": "string", "maxLength": 3}) is None
    assert unbounded({"type": "object", "additionalProperties": ints}) is not None
    assert unbounded({"type": "object", "additionalProperties": ints, "maxProperties": 2}) is None
    free = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert unbounded(free) is not None
    assert unbounded({**free, "maxProperties": 8}) is None
    assert unbounded({"type": "object", "properties": {"a": ints}}) is None
    assert unbounded({"type": "boolean"}) is None


def _crd_validator(plural: str, part: str) -> jsonschema.Draft4Validator:
    crd = yaml.safe_load((REPO_ROOT / "crds" / f"whetstone.dev_{plural}.yaml").read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(root["properties"][part])


def _sample_spec(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO_ROOT / "manifests" / "samples" / name).read_text())
    spec: dict[str, Any] = doc["spec"]
    return spec


FTJ = _sample_spec("finetunejob.yaml")
MV = _sample_spec("modelversion.yaml")
WPP = _sample_spec("platformpolicy-regulated.yaml")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
LONG_VALUE = "v" * 64
GATE = {"metric": "exactMatch", "min": 0.5}


def _requirement(i: int) -> dict[str, Any]:
    return {"key": f"example.com/label-{i}", "operator": "In", "values": ["x" * 63, "y" * 63]}


def _node_terms(terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": terms
    }}}  # fmt: skip


# 10 terms of 32 requirements: within every list bound, about 50 KB as JSON.
HUGE_AFFINITY = _node_terms([{"matchExpressions": [_requirement(i) for i in range(32)]}] * 10)
SMALL_AFFINITY = {
    **_node_terms([{"matchExpressions": [_requirement(0)]}]),
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 50,
                "podAffinityTerm": {
                    "labelSelector": {"matchLabels": {"app": "trainer"}},
                    "topologyKey": "kubernetes.io/hostname",
                },
            }
        ]
    },
}


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with the dotted `path` set to `value` (parents created)."""
    out = copy.deepcopy(base)
    node = out
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def _n(count: int, make: Callable[[int], Any]) -> list[Any]:
    return [make(i) for i in range(count)]


def _keys(count: int, value: Any = "v") -> dict[str, Any]:
    return {f"k{i}": value for i in range(count)}


Case = tuple[type[BaseModel], str, dict[str, Any], str, bool]
# model, CRD, the object, the field the message must name, and whether the CRD's schema refuses
# it too (a map's keys, an affinity's total size and unknown fields, which the API server
# prunes, are beyond what a structural schema says).
OVERSIZED: dict[str, Case] = {
    "ftj-33-tolerations": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.tolerations", _n(33, lambda _: GPU_TOLERATION)),
        "spec.resources.tolerations",
        True,
    ),
    "ftj-toleration-unknown-operator": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.tolerations", [{**GPU_TOLERATION, "operator": "Matches"}]),
        "spec.resources.tolerations[0].operator",
        True,
    ),
    "ftj-toleration-value-64": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.tolerations", [{"key": "gpu", "value": LONG_VALUE}]),
        "spec.resources.tolerations[0].value",
        True,
    ),
    "ftj-toleration-free-form-field": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.tolerations", [{**GPU_TOLERATION, "blob": "x" * 10_000}]),
        "spec.resources.tolerations[0].blob",
        False,
    ),
    "ftj-33-node-labels": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.nodeSelector", _keys(33)),
        "spec.resources.nodeSelector",
        True,
    ),
    "ftj-node-label-value-64": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.nodeSelector", {"pool": LONG_VALUE}),
        "spec.resources.nodeSelector.pool",
        True,
    ),
    "ftj-node-label-key-318": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.nodeSelector", {"k" * 318: "v"}),
        "spec.resources.nodeSelector." + "k" * 318 + ".[key]",
        False,
    ),
    "ftj-affinity-over-16-kib": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.affinity", HUGE_AFFINITY),
        "spec.resources.affinity",
        False,
    ),
    "ftj-affinity-33-terms": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.affinity", _node_terms(_n(33, lambda _: {"matchFields": []}))),
        "spec.resources.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms",
        True,
    ),
    "ftj-affinity-unknown-field": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "resources.affinity", {"nodeAffinity": {}, "blob": {"x": "y" * 10_000}}),
        "spec.resources.affinity.blob",
        False,
    ),
    "ftj-65-gates": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "registration.gates", _n(65, lambda _: GATE)),
        "spec.registration.gates",
        True,
    ),
    "ftj-33-redactions": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "dataset.redact", _n(33, lambda _: "email")),
        "spec.dataset.redact",
        True,
    ),
    "ftj-65-tags": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "dataset.select", {"tags": _n(65, str)}),
        "spec.dataset.select.tags",
        True,
    ),
    "ftj-17-metrics": (
        FineTuneJobSpec,
        "finetunejobs",
        _with(FTJ, "evaluation.metrics", _n(17, lambda _: "loss")),
        "spec.evaluation.metrics",
        True,
    ),
    "mv-400-gates": (
        ModelVersionSpec,
        "modelversions",
        _with(MV, "gates", _n(400, lambda _: GATE)),
        "spec.gates",
        True,
    ),
    "mv-129-custom-metrics": (
        ModelVersionSpec,
        "modelversions",
        _with(MV, "metrics.custom", _keys(129, 0.5)),
        "spec.metrics.custom",
        True,
    ),
    "mv-129-baseline-custom-metrics": (
        ModelVersionSpec,
        "modelversions",
        _with(MV, "metrics.baseline", {"custom": _keys(129, 0.5)}),
        "spec.metrics.baseline.custom",
        True,
    ),
    "wpp-33-tolerations": (
        PlatformPolicySpec,
        "platformpolicies",
        _with(WPP, "training.tolerations", _n(33, lambda _: GPU_TOLERATION)),
        "spec.training.tolerations",
        True,
    ),
    "wpp-33-node-labels": (
        PlatformPolicySpec,
        "platformpolicies",
        _with(WPP, "training.nodeSelector", _keys(33)),
        "spec.training.nodeSelector",
        True,
    ),
    "wpp-33-namespace-labels": (
        PlatformPolicySpec,
        "platformpolicies",
        _with(WPP, "namespaceSelector.matchLabels", _keys(33)),
        "spec.namespaceSelector.matchLabels",
        True,
    ),
    "wpp-namespace-label-value-64": (
        PlatformPolicySpec,
        "platformpolicies",
        _with(WPP, "namespaceSelector.matchLabels", {"tier": LONG_VALUE}),
        "spec.namespaceSelector.matchLabels.tier",
        True,
    ),
    "wpp-65-images": (
        PlatformPolicySpec,
        "platformpolicies",
        _with(WPP, "training.images", _n(65, lambda i: f"registry.example.com/t{i}:*")),
        "spec.training.images",
        True,
    ),
    "wpp-image-1025": (
        PlatformPolicySpec,
        "platformpolicies",
        _with(WPP, "training.images", ["r" * 1025]),
        "spec.training.images[0]",
        True,
    ),
    "wpp-approver-group-1025": (
        PlatformPolicySpec,
        "platformpolicies",
        _with(WPP, "approval.approverGroups", ["g" * 1025]),
        "spec.approval.approverGroups[0]",
        True,
    ),
    "ftj-status-129-hyperparameters": (
        FineTuneJobStatus,
        "finetunejobs",
        {"hyperparameters": _keys(129)},
        "status.hyperparameters",
        True,
    ),
    "ftj-status-1001-attempts": (
        FineTuneJobStatus,
        "finetunejobs",
        {"cost": {"attempts": _n(1001, lambda i: {"attempt": i + 1, "gpus": 1})}},
        "status.cost.attempts",
        True,
    ),
    "ftj-status-33-conditions": (
        FineTuneJobStatus,
        "finetunejobs",
        {"conditions": _n(33, lambda i: {"type": f"T{i}", "status": "True"})},
        "status.conditions",
        True,
    ),
    "ftj-status-33-drop-reasons": (
        FineTuneJobStatus,
        "finetunejobs",
        {"dataReport": {"dropped": _keys(33, 1)}},
        "status.dataReport.dropped",
        True,
    ),
    "ftj-status-eta-65": (
        FineTuneJobStatus,
        "finetunejobs",
        {"progress": {"eta": "2" * 65}},
        "status.progress.eta",
        True,
    ),
    "mv-status-257-approvals": (
        ModelVersionStatus,
        "modelversions",
        {"approvals": _n(257, lambda i: {"user": f"u{i}", "time": "2025-01-01T00:00:00Z"})},
        "status.approvals",
        True,
    ),
    "mv-status-513-groups": (
        ModelVersionStatus,
        "modelversions",
        {"approvals": [{"user": "u", "time": "t", "groups": _n(513, str)}]},
        "status.approvals[0].groups",
        True,
    ),
    "mv-status-signature-257": (
        ModelVersionStatus,
        "modelversions",
        {"verification": {"digest": "sha256:0", "at": "t", "sig": "s" * 257}},
        "status.verification.sig",
        True,
    ),
    "wpp-status-10001-namespaces": (
        PlatformPolicyStatus,
        "platformpolicies",
        {"namespaces": _n(10_001, lambda i: f"ns-{i}")},
        "status.namespaces",
        True,
    ),
}


def _part(field: str) -> str:
    return field.split(".")[0].split("[")[0]


@pytest.mark.parametrize("case", OVERSIZED)
def test_the_models_refuse_what_exceeds_a_bound(case: str) -> None:
    model, _, obj, field, _ = OVERSIZED[case]
    with pytest.raises(SpecError) as info:
        parse_spec(model, obj, _part(field))
    named = [m.partition(": ")[0] for m in info.value.messages]
    assert field in named, info.value.messages


@pytest.mark.parametrize("case", OVERSIZED)
def test_the_schema_refuses_the_same_where_it_can_say_so(case: str) -> None:
    _, plural, obj, field, schema_too = OVERSIZED[case]
    part = _part(field)
    errors = list(_crd_validator(plural, part).iter_errors(obj))
    if not schema_too:
        assert errors == [], [e.message for e in errors]
        return
    where = [
        part + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        for e in errors
    ]
    assert field in where, where


def test_what_is_at_its_bound_is_accepted() -> None:
    spec = _with(FTJ, "resources.tolerations", _n(32, lambda _: GPU_TOLERATION))
    spec = _with(spec, "resources.nodeSelector", _keys(32, "v" * 63))
    spec = _with(spec, "registration.gates", _n(64, lambda _: GATE))
    assert len(parse_spec(FineTuneJobSpec, spec).resources.tolerations) == 32
    parse_spec(ModelVersionSpec, _with(MV, "metrics.custom", _keys(128, 0.5)))
    parse_spec(PlatformPolicySpec, _with(WPP, "training.nodeSelector", _keys(32)))
    FineTuneJobStatus.model_validate({"hyperparameters": _keys(128)})
    for plural, part, obj in (
        ("finetunejobs", "spec", spec),
        ("finetunejobs", "status", {"hyperparameters": _keys(128)}),
    ):
        assert list(_crd_validator(plural, part).iter_errors(obj)) == []


def test_an_affinity_under_the_size_cap_is_accepted() -> None:
    term = {"matchExpressions": [_requirement(i) for i in range(32)]}
    affinity = _node_terms([term, term])
    assert AFFINITY_MAX_BYTES / 2 < len(str(affinity)) < AFFINITY_MAX_BYTES
    spec = parse_spec(FineTuneJobSpec, _with(FTJ, "resources.affinity", affinity))
    assert spec.resources.affinity == affinity


def test_tolerations_and_affinity_stay_plain_dicts_as_written() -> None:
    spec = _with(FTJ, "resources.tolerations", [{**GPU_TOLERATION, "value": None}])
    parsed = parse_spec(FineTuneJobSpec, _with(spec, "resources.affinity", SMALL_AFFINITY))
    # Nulls dropped, no defaults filled in: the pod spec gets what the user wrote.
    assert parsed.resources.tolerations == [GPU_TOLERATION]
    assert type(parsed.resources.tolerations[0]) is dict
    assert parsed.resources.affinity == SMALL_AFFINITY
    wire = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["resources"]["affinity"] == SMALL_AFFINITY


@pytest.mark.parametrize(
    ("toleration", "message"),
    [
        ({"key": "gpu", "operator": "Exists", "value": "a"}, "operator Exists takes no value"),
        ({"operator": "Equal", "value": "a"}, "without key needs operator Exists"),
        ({"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}, "needs effect NoExecute"),
    ],
)
def test_tolerations_are_checked_as_the_api_server_checks_them(
    toleration: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(FineTuneJobSpec, _with(FTJ, "resources.tolerations", [toleration]))
    assert info.value.messages[0].startswith("spec.resources.tolerations[0]: ")


def test_the_trainer_report_is_bounded_where_the_status_is() -> None:
    result = {"artifactUri": "s3://b/a/", "manifestDigest": "sha256:" + "0" * 64}
    with pytest.raises(ValidationError, match="metrics"):
        TrainerResult.model_validate({**result, "metrics": _keys(129, 1.0)})
    with pytest.raises(ValidationError, match="hyperparameters"):
        TrainerResult.model_validate({**result, "hyperparameters": _keys(129, 1)})
    with pytest.raises(ValidationError, match="redacted"):
        DataReport.model_validate({"redacted": _keys(33, 1)})
