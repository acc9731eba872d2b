"""Helpers of the chart, RBAC and manifest tests: find helm and kubectl, render, check strictly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

CHART = REPO_ROOT / "charts" / "whetstone"
RELEASE = "whetstone"
NAMESPACE = "whetstone-system"

Doc = dict[str, Any]


def _cache_bin() -> Path:
    return Path(os.environ.get("WHETSTONE_CACHE", "~/.cache/whetstone")).expanduser() / "bin"


def find_tool(name: str) -> Path | None:
    """$WHETSTONE_<NAME>, then the provisioning cache, then PATH."""
    candidates = [os.environ.get(f"WHETSTONE_{name.upper()}"), str(_cache_bin() / name)]
    candidates.append(shutil.which(name))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    return None


def require_helm() -> Path:
    helm = find_tool("helm")
    if helm is None:
        pytest.skip(
            "helm not found ($WHETSTONE_HELM, the provisioning cache, PATH): "
            "`python hack/provision.py` installs it, as ./hack/test.sh does before pytest"
        )
    return helm


def require_kubectl() -> Path:
    """A kubectl whose built-in kustomize knows components (1.21 or newer)."""
    kubectl = find_tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: `python hack/provision.py` installs it")
    out = subprocess.run(
        [str(kubectl), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        minor = int(re.sub(r"\D", "", json.loads(out.stdout)["clientVersion"]["minor"]))
    except (ValueError, KeyError):
        minor = 0
    if minor < 21:
        pytest.skip(f"{kubectl} is too old for kustomize components: provision kubectl 1.21+")
    return kubectl


def helm_env(home: Path) -> dict[str, str]:
    """Helm with its cache, config and data in a throw-away folder."""
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def run_helm(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    helm = require_helm()
    with tempfile.TemporaryDirectory(prefix="whetstone-helm-") as home:
        return subprocess.run(
            [str(helm), *args],
            capture_output=True,
            text=True,
            env=helm_env(Path(home)),
            check=False,
            timeout=120,
        )


def values_args(values: Mapping[str, Any] | None, folder: Path) -> list[str]:
    if not values:
        return []
    path = folder / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return ["--values", str(path)]


def template(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart; the caller checks the exit code."""
    with tempfile.TemporaryDirectory(prefix="whetstone-values-") as folder:
        args = ["template", release, str(CHART), "--namespace", namespace]
        return run_helm([*args, *values_args(values, Path(folder)), *extra])


def render(values: Mapping[str, Any] | None = None, **kwargs: Any) -> list[Doc]:
    """The chart's objects for these values (templates only, not crds/)."""
    out = template(values, **kwargs)
    assert out.returncode == 0, f"helm template failed:\n{out.stderr}"
    return parse(out.stdout)


def parse(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def select(docs: Iterable[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    found = select(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(deployment: Doc, name: str = "operator") -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def env_of(container_: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container_.get("env", [])}


# ---------------------------------------------------------------- strict schema check

# Built-in kinds the chart and the manifests may contain, by (apiVersion, kind): the
# kubernetes client's model. Anything else of a *.k8s.io or core group is an error.
BUILTIN_MODELS = {
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "V1CustomResourceDefinition",
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"): (
        "V1MutatingWebhookConfiguration"
    ),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): (
        "V1ValidatingWebhookConfiguration"
    ),
}
# Resource quantities may be written as YAML numbers.
_QUANTITY_MAPS = {"limits", "requests", "hard", "capacity", "allocatable"}


def is_builtin(doc: Doc) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group == "" or group.endswith(".k8s.io") or group in {"apps", "policy", "batch"}


def strict_errors(doc: Doc) -> list[str]:
    """Unknown fields, wrong types and missing required fields of a built-in object."""
    import kubernetes.client as k8s

    key = (doc.get("apiVersion"), doc.get("kind"))
    model_name = BUILTIN_MODELS.get(key)  # type: ignore[arg-type]
    if model_name is None:
        return [f"{key}: no schema known for this built-in kind"]
    errors: list[str] = []
    _check(doc, model_name, doc["kind"], errors, k8s)
    if not errors:
        # The client's models refuse a missing required field when built.
        try:
            k8s.ApiClient().deserialize(json.dumps(doc), model_name, "application/json")
        except (ValueError, TypeError) as exc:
            errors.append(f"{doc['kind']}: {exc}")
    return errors


def _check(value: Any, type_name: str, path: str, errors: list[str], k8s: Any) -> None:
    if value is None:
        return
    scalars: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "datetime": (str,),
        "date": (str,),
        "bytes": (str,),
    }
    if type_name == "object":
        return
    if type_name in scalars:
        expected = scalars[type_name]
        wrong_bool = isinstance(value, bool) and bool not in expected
        if not isinstance(value, expected) or wrong_bool:
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if type_name.startswith("List["):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, type_name[5:-1], f"{path}[{i}]", errors, k8s)
        return
    if type_name.startswith("Dict["):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        inner = type_name[5:-1].split(", ", 1)[1]
        quantity = path.rsplit(".", 1)[-1] in _QUANTITY_MAPS
        for k, v in value.items():
            if quantity and isinstance(v, int | float) and not isinstance(v, bool):
                continue
            _check(v, inner, f"{path}.{k}", errors, k8s)
        return
    model = getattr(k8s, type_name)
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
        return
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for field, sub in value.items():
        attr = by_json.get(field)
        if attr is None:
            errors.append(f"{path}.{field}: unknown field")
            continue
        _check(sub, model.openapi_types[attr], f"{path}.{field}", errors, k8s)
