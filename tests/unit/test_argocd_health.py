"""Argo CD health checks (Lua) of the three kinds, run against sample objects with lupa."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

lupa = pytest.importorskip("lupa", reason="lupa (dev extra) runs the Lua health checks")

ARGOCD = REPO_ROOT / "manifests" / "argocd"
HEALTH = ARGOCD / "health"
SAMPLES = REPO_ROOT / "manifests" / "samples"
KINDS = {"FineTuneJob": "finetunejob", "ModelVersion": "modelversion", "Rollout": "rollout"}
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(runtime: Any, value: Any) -> Any:
    # Argo CD hands the object to Lua as nested tables; JSON null is absent.
    if isinstance(value, dict):
        return runtime.table_from(
            {k: _to_lua(runtime, v) for k, v in value.items() if v is not None}
        )
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = _to_lua(runtime, obj)
    result = runtime.execute((HEALTH / f"{KINDS[kind]}.lua").read_text())
    return result["status"], result["message"]


def sample(kind: str, generation: int = 2, **status: Any) -> dict[str, Any]:
    files = {"FineTuneJob": "finetunejob.yaml", "ModelVersion": "modelversion.yaml"}
    obj = yaml.safe_load((SAMPLES / files.get(kind, "rollout.yaml")).read_text())
    assert obj["kind"] == kind
    obj = copy.deepcopy(obj)
    obj["metadata"]["generation"] = generation
    if status:
        obj["status"] = {"observedGeneration": generation, **status}
    return obj


CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    # (id, kind, status (empty: no status yet), expected status, text in the message)
    ("ftj-new", "FineTuneJob", {}, "Progressing", "Waiting for the operator"),
    ("ftj-pending", "FineTuneJob", {"phase": "Pending"}, "Progressing", "Pending"),
    ("ftj-validating", "FineTuneJob", {"phase": "Validating"}, "Progressing", "Validating"),
    (
        "ftj-running",
        "FineTuneJob",
        {"phase": "Running", "progress": {"percent": 40, "step": 1200, "totalSteps": 3000}},
        "Progressing",
        "Running: 40% (step 1200/3000)",
    ),
    (
        "ftj-running-message",
        "FineTuneJob",
        {"phase": "Running", "message": "waiting for GPUs"},
        "Progressing",
        "waiting for GPUs",
    ),
    (
        "ftj-succeeded",
        "FineTuneJob",
        {"phase": "Succeeded", "modelVersion": "grader-llama-3-2-1b-v4-20261122"},
        "Healthy",
        "grader-llama-3-2-1b-v4-20261122",
    ),
    (
        "ftj-failed",
        "FineTuneJob",
        {"phase": "Failed", "message": "trainer exited with code 1"},
        "Degraded",
        "trainer exited with code 1",
    ),
    ("ftj-failed-silent", "FineTuneJob", {"phase": "Failed", "message": ""}, "Degraded", "Failed"),
    ("ftj-suspended", "FineTuneJob", {"phase": "Suspended"}, "Suspended", "spec.suspend"),
    (
        "ftj-invalid",
        "FineTuneJob",
        {
            "phase": "Validating",
            "conditions": [
                {"type": "Ready", "status": "False", "message": "not ready"},
                {
                    "type": "Valid",
                    "status": "False",
                    "reason": "InvalidSpec",
                    "message": "spec.dataset.validationSplit: must be below 0.5",
                },
            ],
        },
        "Degraded",
        "spec.dataset.validationSplit",
    ),
    (
        "ftj-spec-changed-after-start",
        "FineTuneJob",
        {
            "phase": "Running",
            "conditions": [
                {"type": "Valid", "status": "True"},
                {
                    "type": "SpecApplied",
                    "status": "False",
                    "reason": "ChangedAfterStart",
                    "message": "the spec changed after the run started and is not applied",
                },
            ],
        },
        "Degraded",
        "changed after the run started",
    ),
    (
        "ftj-valid-condition",
        "FineTuneJob",
        {"phase": "Running", "conditions": [{"type": "Valid", "status": "True"}]},
        "Progressing",
        "Running",
    ),
    ("mv-new", "ModelVersion", {}, "Progressing", "Waiting for the operator"),
    ("mv-pending", "ModelVersion", {"phase": "Pending"}, "Progressing", "Pending"),
    (
        "mv-verified-awaiting-approval",
        "ModelVersion",
        {"phase": "Verified"},
        "Suspended",
        "waiting for approval",
    ),
    (
        "mv-approved",
        "ModelVersion",
        {"phase": "Approved", "approvedBy": "alice@example.com"},
        "Healthy",
        "Approved by alice@example.com",
    ),
    ("mv-serving", "ModelVersion", {"phase": "Serving"}, "Healthy", "Serving"),
    ("mv-retired", "ModelVersion", {"phase": "Retired"}, "Healthy", "Retired"),
    (
        "mv-rejected",
        "ModelVersion",
        {"phase": "Rejected", "message": "gate exactMatch: 0.71 < 0.80"},
        "Degraded",
        "gate exactMatch",
    ),
    (
        "mv-rejected-by-gate",
        "ModelVersion",
        {
            "phase": "Rejected",
            "gateResults": [
                {"metric": "rougeL", "value": 0.7, "passed": True},
                {"metric": "exactMatch", "value": 0.71, "passed": False},
            ],
        },
        "Degraded",
        "Gate exactMatch failed",
    ),
    ("ro-new", "Rollout", {}, "Progressing", "Waiting for the operator"),
    ("ro-pending", "Rollout", {"phase": "Pending"}, "Progressing", "Pending"),
    (
        "ro-progressing",
        "Rollout",
        {"phase": "Progressing", "currentStepIndex": 2, "canaryWeight": 25},
        "Progressing",
        "step 2 (canary at 25%)",
    ),
    (
        "ro-paused",
        "Rollout",
        {"phase": "Paused", "canaryWeight": 50, "message": "waiting for a manual promote"},
        "Suspended",
        "waiting for a manual promote (canary at 50%)",
    ),
    (
        "ro-succeeded",
        "Rollout",
        {"phase": "Succeeded", "stableModelVersion": "grader-v4", "canaryWeight": 0},
        "Healthy",
        "Serving grader-v4",
    ),
    (
        "ro-aborted",
        "Rollout",
        {"phase": "Aborted", "abortReason": "error-rate 0.05 > 0.01", "message": "aborted"},
        "Degraded",
        "error-rate 0.05 > 0.01",
    ),
    (
        "ro-failed",
        "Rollout",
        {"phase": "Failed", "message": "no such ModelVersion"},
        "Degraded",
        "no such ModelVersion",
    ),
]


@pytest.mark.parametrize(
    ("kind", "status", "expected", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_health(kind: str, status: dict[str, Any], expected: str, message: str) -> None:
    got, text = health(kind, sample(kind, **status))
    assert got == expected
    assert message in text


def test_approval_not_required_makes_a_verified_version_healthy() -> None:
    obj = sample("ModelVersion", phase="Verified")
    obj["spec"]["approval"] = {"required": False}
    assert health("ModelVersion", obj)[0] == "Healthy"
    obj = sample("ModelVersion", phase="Verified", approvedBy="bob")
    assert health("ModelVersion", obj)[0] == "Healthy"


@pytest.mark.parametrize(
    ("kind", "phase"),
    [("FineTuneJob", "Failed"), ("ModelVersion", "Rejected"), ("Rollout", "Succeeded")],
)
def test_a_status_older_than_the_spec_is_progressing(kind: str, phase: str) -> None:
    obj = sample(kind, generation=3, phase=phase)
    obj["status"]["observedGeneration"] = 2
    assert health(kind, obj) == (
        "Progressing",
        "Waiting for the operator to observe generation 3",
    )
    del obj["status"]["observedGeneration"]
    assert health(kind, obj)[0] == "Progressing"


@pytest.mark.parametrize("kind", KINDS)
def test_every_phase_maps_to_an_argo_status(kind: str) -> None:
    crd = yaml.safe_load((REPO_ROOT / "crds" / f"whetstone.dev_{KINDS[kind]}s.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for phase in schema["properties"]["status"]["properties"]["phase"]["enum"]:
        status, message = health(kind, sample(kind, phase=phase))
        assert status in ARGO_STATUSES and message, (kind, phase)


def test_argocd_cm_patch_embeds_the_lua_files() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    expected = {
        f"resource.customizations.health.whetstone.dev_{kind}": (HEALTH / f"{file}.lua").read_text()
        for kind, file in KINDS.items()
    }
    assert patch["data"] == expected, "run hack/render-manifests.sh"


def test_health_component_names_the_same_keys() -> None:
    component = yaml.safe_load((HEALTH / "kustomization.yaml").read_text())
    generator = component["configMapGenerator"][0]
    assert generator["behavior"] == "merge"
    keys = dict(entry.split("=", 1) for entry in generator["files"])
    assert keys == {
        f"resource.customizations.health.whetstone.dev_{kind}": f"{file}.lua"
        for kind, file in KINDS.items()
    }
    for file in keys.values():
        assert Path(HEALTH / file).is_file()
