"""The Helm chart and the kustomize manifests: lint, render, strict validation, key properties."""

from __future__ import annotations

import ast
import base64
import copy
import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from whetstone_operator.api.platformpolicy import PlatformPolicySpec

from tests.conftest import REPO_ROOT
from tests.unit import kubetools as kt

MONITORING = {
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}
# A regulated tier's policy set from values: only the keys given change, the rest keep the
# chart's defaults.
REGULATED_POLICY = {
    "name": "regulated",
    "spec": {
        "namespaceSelector": {
            "matchLabels": {"whetstone.dev/tier": "regulated"},
            "matchExpressions": [{"key": "team", "operator": "In", "values": ["risk"]}],
        },
        "priority": 100,
        "approval": {"minApprovers": 2, "approverGroups": ["model-risk"]},
        "training": {
            "nodeSelector": {"pool": "gpu-regulated"},
            "dataClasses": ["public", "internal", "restricted"],
            "requireOutputEncryption": True,
            "budget": {"gpuHoursPerMonth": 500},
        },
        "analysis": {"prometheus": [{"name": "main", "address": "http://prometheus:9090"}]},
    },
}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "policy-override": {"policy": REGULATED_POLICY},
    "no-policy": {"policy": {"create": False}},
    "namespaced": {"watchNamespaces": ["ml", "research"]},
    "no-webhook": {"webhook": {"enabled": False}, "approval": {"existingSecret": "approvals"}},
    "webhook-operator-managed": {"webhook": {"configurations": "operator"}},
    "webhook-cert-manager": {"webhook": {"certManager": {"enabled": True}}},
    "monitoring": MONITORING,
    "network-policy": {
        "networkPolicy": {
            "webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
            "metricsFrom": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    },
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                }
            ],
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"port": 443}]},
            ],
        }
    },
    "no-network-policy": {"networkPolicy": {"enabled": False}},
    "standalone": {"replicas": 1, "peering": {"enabled": False}, "logLevel": "debug"},
    "everything": {
        "watchNamespaces": ["ml"],
        "webhook": {
            "validateSpecs": False,
            "certManager": {
                "enabled": True,
                "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
            },
        },
        **MONITORING,
        "logFormat": "json",
        "image": {"digest": "sha256:" + "a" * 64},
        "trainer": {
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        },
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "whetstone"}},
            }
        ],
    },
}
# Oldest version kubernetes-validate ships schemas for that the CEL rules of the CRDs need.
KUBERNETES_VERSION = "1.25.0"
OVERLAYS = ["base", "overlays/dev", "overlays/production"]
FTJ, MV, RO = "whetstone_finetunejobs", "whetstone_modelversions", "whetstone_rollouts"
METRIC_NAMES = {
    "whetstone_finetunejobs",
    "whetstone_modelversions",
    "whetstone_rollouts",
    "whetstone_reconcile_total",
    "whetstone_reconcile_errors_total",
    "whetstone_reconcile_duration_seconds",
}

# The parts of third-party custom resources the chart writes, with their real field names;
# additionalProperties false catches a misspelt field.
_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_LABELS = {"type": "object", "additionalProperties": _STRING}


def _closed(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_METADATA = {"type": "object", "required": ["name"]}
THIRD_PARTY_SPECS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _closed(
        {
            "selector": _closed({"matchLabels": _LABELS}, ["matchLabels"]),
            "namespaceSelector": _closed({"matchNames": _STRINGS}, ["matchNames"]),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _closed(
                    {
                        "port": _STRING,
                        "path": _STRING,
                        "interval": _STRING,
                        "scrapeTimeout": _STRING,
                        "honorLabels": {"type": "boolean"},
                    },
                    ["port"],
                ),
            },
        },
        ["selector", "endpoints"],
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _closed(
        {
            "groups": {
                "type": "array",
                "items": _closed(
                    {
                        "name": _STRING,
                        "rules": {
                            "type": "array",
                            "items": _closed(
                                {
                                    "alert": _STRING,
                                    "expr": _STRING,
                                    "for": {"type": "string", "pattern": r"^\d+[smhdwy]$"},
                                    "labels": _closed(
                                        {
                                            "severity": {"enum": ["critical", "warning", "info"]},
                                            "namespace": _STRING,
                                        },
                                        ["severity"],
                                    ),
                                    "annotations": _closed(
                                        {"summary": _STRING, "description": _STRING},
                                        ["summary", "description"],
                                    ),
                                },
                                ["alert", "expr", "for", "labels", "annotations"],
                            ),
                        },
                    },
                    ["name", "rules"],
                ),
            }
        },
        ["groups"],
    ),
    ("cert-manager.io/v1", "Issuer"): _closed({"selfSigned": _closed({}, [])}, ["selfSigned"]),
    ("cert-manager.io/v1", "Certificate"): _closed(
        {
            "secretName": _STRING,
            "duration": _STRING,
            "renewBefore": _STRING,
            "commonName": _STRING,
            "dnsNames": _STRINGS,
            "privateKey": _closed(
                {"algorithm": _STRING, "size": {"type": "integer"}, "rotationPolicy": _STRING},
                [],
            ),
            "issuerRef": _closed(
                {"name": _STRING, "kind": _STRING, "group": _STRING}, ["name", "kind"]
            ),
        },
        ["secretName", "dnsNames", "issuerRef"],
    ),
}


def _crd_schemas() -> dict[tuple[str, str], tuple[dict[str, Any], str]]:
    """(apiVersion, kind) -> (openAPIV3Schema, scope) of every CRD the chart ships."""
    out = {}
    for path in sorted((kt.CHART / "crds").glob("*.yaml")):
        for crd in kt.parse(path.read_text()):
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                out[key] = (version["schema"]["openAPIV3Schema"], crd["spec"]["scope"])
    return out


CRD_SCHEMAS = _crd_schemas()


def validation_errors(doc: dict[str, Any]) -> list[str]:
    """Strict check of one rendered object, built-in or custom."""
    key = (doc["apiVersion"], doc["kind"])
    name = f"{doc['kind']}/{doc.get('metadata', {}).get('name')}"
    if kt.is_builtin(doc):
        return [f"{name}: {e}" for e in kt.strict_errors(doc)]
    if key in CRD_SCHEMAS:
        schema, scope = CRD_SCHEMAS[key]
        errors = [
            f"{name}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
        ]
        if (scope == "Namespaced") != ("namespace" in doc["metadata"]):
            errors.append(f"{name}: namespace does not match the CRD's scope {scope}")
        return errors
    if key in THIRD_PARTY_SPECS:
        errors = [
            f"{name}: {e.json_path}: {e.message}"
            for e in jsonschema.Draft7Validator(THIRD_PARTY_SPECS[key]).iter_errors(doc["spec"])
        ]
        if not doc.get("metadata", {}).get("name"):
            errors.append(f"{name}: no name")
        return errors
    return [f"{name}: {key} is not a kind this chart is expected to render"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {variant: kt.render(values) for variant, values in VARIANTS.items()}


# ---------------------------------------------------------------- lint and validation


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(variant: str, tmp_path: Path) -> None:
    args = ["lint", "--strict", str(kt.CHART), *kt.values_args(VARIANTS[variant], tmp_path)]
    out = kt.run_helm(args)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_pass_a_strict_schema_check(variant: str, rendered) -> None:
    docs = rendered[variant]
    errors = [e for doc in docs for e in validation_errors(doc)]
    assert not errors, "\n".join(errors)
    names = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "an object is rendered twice"


def test_the_strict_check_catches_mistakes(rendered) -> None:
    deployment = copy.deepcopy(kt.one(rendered["default"], "Deployment"))
    container = kt.container(deployment)
    container["imagePullPolcy"] = "Always"
    deployment["spec"]["replicas"] = "2"
    errors = validation_errors(deployment)
    assert any("imagePullPolcy: unknown field" in e for e in errors), errors
    assert any("spec.replicas: expected int" in e for e in errors), errors
    missing = copy.deepcopy(kt.one(rendered["default"], "Deployment"))
    del missing["spec"]["selector"]
    assert validation_errors(missing)
    monitor = copy.deepcopy(kt.one(rendered["monitoring"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = "30s"
    assert validation_errors(monitor)


def kubernetes_validate_strict(docs: list[dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install kubernetes-validate)",
    )
    for doc in docs:
        if kt.is_builtin(doc):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_builtin_kinds_pass_kubernetes_validate_strict(variant: str, rendered) -> None:
    kubernetes_validate_strict(rendered[variant])


# ---------------------------------------------------------------- the values schema


def test_default_values_satisfy_the_schema() -> None:
    schema = json.loads((kt.CHART / "values.schema.json").read_text())
    values = yaml.safe_load((kt.CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)
    for variant, override in VARIANTS.items():
        merged = _merge(copy.deepcopy(values), override)
        assert not list(jsonschema.Draft7Validator(schema).iter_errors(merged)), variant


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"replicas": -1}, "/replicas"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"webhook": {"enabled": "yes"}}, "/webhook/enabled"),
        ({"webhook": {"configurations": "kopf"}}, "/webhook/configurations"),
        ({"webhook": {"approvalFailurePolicy": "fail"}}, "/webhook/approvalFailurePolicy"),
        ({"watchNamespaces": "ml"}, "/watchNamespaces"),
        ({"watchNamespaces": ["ML_Team"]}, "/watchNamespaces/0"),
        ({"trainer": {"shmSize": "lots"}}, "/trainer/shmSize"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"replicaCount": 3}, "replicaCount"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"policy": {"name": "Default"}}, "/policy/name"),
        (
            {"policy": {"spec": {"approval": {"minApprovers": 0}}}},
            "/policy/spec/approval/minApprovers",
        ),
        ({"policy": {"spec": {"training": {"gpus": 4}}}}, "/policy/spec/training"),
        (
            {"policy": {"spec": {"training": {"dataClasses": ["secret"]}}}},
            "/policy/spec/training/dataClasses/0",
        ),
        (
            {"policy": {"spec": {"analysis": {"prometheus": [{"name": "main"}]}}}},
            "/policy/spec/analysis/prometheus/0",
        ),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_the_schema_refuses_wrong_values(values: dict[str, Any], message: str) -> None:
    out = kt.template(values)
    assert out.returncode != 0, f"{values} was accepted"
    assert "schema" in out.stderr and message in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"peering": {"enabled": False}}, "replicas > 1 needs peering.enabled=true"),
        (
            {"webhook": {"enabled": False, "certManager": {"enabled": True}}},
            "needs webhook.enabled=true",
        ),
        ({"watchNamespaces": ["ml", "ml"]}, "lists a namespace twice"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    ],
)
def test_combinations_that_cannot_work_are_refused(values: dict[str, Any], message: str) -> None:
    out = kt.template(values)
    assert out.returncode != 0 and message in out.stderr, out.stderr


# ---------------------------------------------------------------- the operator Deployment


def test_default_install_runs_two_peered_replicas(rendered) -> None:
    docs = rendered["default"]
    deployment = kt.one(docs, "Deployment", "whetstone")
    assert deployment["spec"]["replicas"] == 2
    env = kt.env_of(kt.container(deployment))
    assert env["WHETSTONE_PEERING"] == "whetstone"
    assert env["WHETSTONE_NAMESPACES"] == ""
    peering = kt.one(docs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == env["WHETSTONE_PEERING"]
    assert "namespace" not in peering["metadata"]
    assert not kt.select(docs, "KopfPeering")
    pdb = kt.one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_image_entry_point_runs_the_operator(rendered) -> None:
    deployment = kt.one(rendered["default"], "Deployment")
    container = kt.container(deployment)
    chart = yaml.safe_load((kt.CHART / "Chart.yaml").read_text())
    assert container["image"] == f"ghcr.io/whetstone/operator:{chart['appVersion']}"
    assert "command" not in container, "the image's entry point is python -m whetstone_operator"
    everything = kt.container(kt.one(rendered["everything"], "Deployment"))
    assert everything["image"] == "ghcr.io/whetstone/operator@sha256:" + "a" * 64


def test_pod_and_container_are_restricted(rendered) -> None:
    for variant, docs in rendered.items():
        pod = kt.one(docs, "Deployment")["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, variant
        assert security["runAsUser"] == 10001, variant
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, variant
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["runAsNonRoot"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["requests"] and container["resources"]["limits"]
        assert not pod.get("hostNetwork") and not pod.get("hostPID")
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert "/tmp" in mounts, "a writable /tmp on a read-only root filesystem"


def test_probes_use_the_kopf_liveness_endpoint(rendered) -> None:
    container = kt.container(kt.one(rendered["default"], "Deployment"))
    env = kt.env_of(container)
    assert env["WHETSTONE_LIVENESS"] == "http://0.0.0.0:8080/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ports["health"] == 8080


def test_metrics_port_service_and_env_agree(rendered) -> None:
    docs = rendered["default"]
    container = kt.container(kt.one(docs, "Deployment"))
    assert kt.env_of(container)["WHETSTONE_METRICS_PORT"] == "9090"
    service = kt.one(docs, "Service", "whetstone-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = kt.one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_log_format_level_and_trainer_defaults_reach_the_operator(rendered) -> None:
    default = kt.env_of(kt.container(kt.one(rendered["default"], "Deployment")))
    assert default["WHETSTONE_LOG_FORMAT"] == "plain"
    assert "WHETSTONE_VERBOSE" not in default
    assert default["WHETSTONE_TRAINER_IMAGE"] == "ghcr.io/whetstone/trainer:0.1.0"
    assert json.loads(default["WHETSTONE_TRAINER_DEFAULTS"]) == {
        "gpuResourceName": "nvidia.com/gpu",
        "nodeSelector": {},
        "tolerations": [],
        "shmSize": "8Gi",
        "imagePullPolicy": "IfNotPresent",
        "validationCpu": "500m",
        "validationMemory": "2Gi",
    }
    debug = kt.env_of(kt.container(kt.one(rendered["standalone"], "Deployment")))
    assert debug["WHETSTONE_VERBOSE"] == "1"
    assert debug["WHETSTONE_PEERING"] == ""
    assert not kt.select(rendered["standalone"], "PodDisruptionBudget")
    assert not kt.select(rendered["standalone"], "ClusterKopfPeering")
    everything = kt.env_of(kt.container(kt.one(rendered["everything"], "Deployment")))
    assert everything["WHETSTONE_LOG_FORMAT"] == "json"
    assert everything["HTTPS_PROXY"] == "http://proxy:3128"
    trainer = json.loads(everything["WHETSTONE_TRAINER_DEFAULTS"])
    assert trainer["nodeSelector"] == {"gpu": "a100"}
    assert trainer["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_namespaced_mode_peers_and_watches_only_its_namespaces(rendered) -> None:
    docs = rendered["namespaced"]
    env = kt.env_of(kt.container(kt.one(docs, "Deployment")))
    assert env["WHETSTONE_NAMESPACES"] == "ml,research"
    peerings = kt.select(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml", "research"]
    assert {p["metadata"]["name"] for p in peerings} == {env["WHETSTONE_PEERING"]}
    assert not kt.select(docs, "ClusterKopfPeering")


# ---------------------------------------------------------------- the admission webhook


def operator_webhook_handlers() -> set[tuple[str, str, str]]:
    """(handler id, kopf decorator, plural) of the operator's admission handlers; one handler
    id may serve several resources."""
    path = REPO_ROOT / "operator" / "src" / "whetstone_operator" / "webhooks.py"
    if not path.is_file():
        pytest.skip(f"{path} does not exist yet")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in {
            "kopf.on.validate",
            "kopf.on.mutate",
        }:
            ids = [k.value.value for k in node.keywords if k.arg == "id"]  # type: ignore[attr-defined]
            plural = node.args[2].value  # type: ignore[attr-defined]
            found.add((ids[0], ast.unparse(node.func).rsplit(".", 1)[1], plural))
    return found


def chart_webhooks(docs: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Path (the handler id) -> ("mutate" or "validate", webhook) of the rendered configurations."""
    return {
        h["clientConfig"]["service"]["path"].lstrip("/"): (kind, h)
        for kind, config in (
            ("mutate", kt.one(docs, "MutatingWebhookConfiguration")),
            ("validate", kt.one(docs, "ValidatingWebhookConfiguration")),
        )
        for h in config["webhooks"]
    }


def test_webhook_is_on_by_default_with_chart_written_configurations(rendered) -> None:
    docs = rendered["default"]
    env = kt.env_of(kt.container(kt.one(docs, "Deployment")))
    assert env["WHETSTONE_WEBHOOK_PORT"] == "9443"
    assert env["WHETSTONE_WEBHOOK_HOST"] == "whetstone-webhook.whetstone-system.svc"
    assert "WHETSTONE_WEBHOOK_MANAGED" not in env
    hooks = chart_webhooks(docs)
    assert len(kt.one(docs, "MutatingWebhookConfiguration")["webhooks"]) == 3
    assert len(kt.one(docs, "ValidatingWebhookConfiguration")["webhooks"]) == 3
    served = {
        (i, k, resource)
        for i, (k, h) in hooks.items()
        for rule in h["rules"]
        for resource in rule["resources"]
    }
    assert served == operator_webhook_handlers()
    service = kt.one(docs, "Service", "whetstone-webhook")
    for _, hook in hooks.values():
        reference = hook["clientConfig"]["service"]
        assert reference["name"] == service["metadata"]["name"]
        assert reference["port"] == service["spec"]["ports"][0]["port"] == 9443
        assert hook["sideEffects"] == "None"
        assert "namespaceSelector" not in hook
    assert hooks["whetstone-approval"][1]["failurePolicy"] == "Fail"
    assert hooks["whetstone-validate-rollout"][1]["failurePolicy"] == "Ignore"
    for _, hook in hooks.values():
        for rule in hook["rules"]:
            assert rule["apiGroups"] == ["whetstone.dev"] and rule["apiVersions"] == ["v1alpha1"]
            assert rule["operations"] == ["CREATE", "UPDATE"]
    secret = kt.one(docs, "Secret", "whetstone-webhook-tls")
    assert {h["clientConfig"]["caBundle"] for _, h in hooks.values()} == {secret["data"]["ca.crt"]}
    namespaced = rendered["namespaced"]
    for hook in kt.one(namespaced, "ValidatingWebhookConfiguration")["webhooks"]:
        assert hook["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml", "research"]}
        ]


def test_created_by_webhooks_stamp_jobs_and_versions_and_fail_like_approvals(rendered) -> None:
    hooks = chart_webhooks(rendered["default"])
    approval = hooks["whetstone-approval"][1]
    for kind in ("finetunejob", "modelversion"):
        handler = f"whetstone-created-by-{kind}"
        webhook, hook = hooks[handler]
        assert webhook == "mutate"
        assert hook["name"] == f"{handler}.whetstone.dev"
        assert hook["rules"] == [
            {
                "apiGroups": ["whetstone.dev"],
                "apiVersions": ["v1alpha1"],
                "resources": [f"{kind}s"],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ]
        assert hook["failurePolicy"] == "Fail"
        # Same Service, port, CA and timeout as the approval webhook; only the path differs.
        service = hook["clientConfig"]["service"]
        assert service["path"] == f"/{handler}"
        assert {k: v for k, v in service.items() if k != "path"} == {
            k: v for k, v in approval["clientConfig"]["service"].items() if k != "path"
        }
        assert hook["clientConfig"]["caBundle"] == approval["clientConfig"]["caBundle"]
        assert hook["timeoutSeconds"] == approval["timeoutSeconds"]
        namespaced = chart_webhooks(rendered["namespaced"])[handler][1]
        selector = namespaced["namespaceSelector"]["matchExpressions"][0]
        assert selector["values"] == ["ml", "research"]
        manager = chart_webhooks(rendered["webhook-cert-manager"])[handler][1]
        assert "caBundle" not in manager["clientConfig"]
    swapped = {"webhook": {"approvalFailurePolicy": "Ignore", "validationFailurePolicy": "Fail"}}
    policies = {i: h["failurePolicy"] for i, (_, h) in chart_webhooks(kt.render(swapped)).items()}
    assert policies == {
        "whetstone-approval": "Ignore",
        "whetstone-created-by-finetunejob": "Ignore",
        "whetstone-created-by-modelversion": "Ignore",
        "whetstone-validate-finetunejob": "Fail",
        "whetstone-validate-modelversion": "Fail",
        "whetstone-validate-rollout": "Fail",
    }


def test_no_webhook(rendered) -> None:
    docs = rendered["no-webhook"]
    assert not [d for d in docs if "webhook" in d["metadata"]["name"]]
    assert not kt.select(docs, "MutatingWebhookConfiguration")
    env = kt.env_of(kt.container(kt.one(docs, "Deployment")))
    assert not [name for name in env if name.startswith("WHETSTONE_WEBHOOK")]


def _approval_key(deployment: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(path the operator reads the key from, the volume it comes from)."""
    container = kt.container(deployment)
    path = kt.env_of(container)["WHETSTONE_APPROVAL_KEY_FILE"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    assert path.removeprefix(mount["mountPath"] + "/") == volume["secret"]["items"][0]["path"]
    return path, volume


def test_approval_key_is_generated_once_and_kept(rendered) -> None:
    secret = kt.one(rendered["default"], "Secret", "whetstone-approval-key")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(base64.b64decode(secret["data"]["key"])) == 64
    deployment = kt.one(rendered["default"], "Deployment")
    # A file, not an environment variable; required: a key drawn at start-up would void every
    # record at the next restart.
    _, volume = _approval_key(deployment)
    assert volume["secret"] == {
        "secretName": "whetstone-approval-key",
        "items": [{"key": "key", "path": "key"}],
    }
    for env in kt.container(deployment)["env"]:
        assert "secretKeyRef" not in env.get("valueFrom", {}), env
    docs = rendered["no-webhook"]
    assert not kt.select(docs, "Secret")
    _, volume = _approval_key(kt.one(docs, "Deployment"))
    assert volume["secret"]["secretName"] == "approvals"


def test_webhook_certificate_generated_by_the_chart(rendered) -> None:
    from cryptography import x509

    docs = rendered["default"]
    deployment = kt.one(docs, "Deployment")
    container = kt.container(deployment)
    env = kt.env_of(container)
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-tls")
    assert env["WHETSTONE_WEBHOOK_CERT"] == f"{mount['mountPath']}/tls.crt"
    assert env["WHETSTONE_WEBHOOK_KEY"] == f"{mount['mountPath']}/tls.key"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": "whetstone-webhook-tls"}} in volumes
    secret = kt.one(docs, "Secret", "whetstone-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert env["WHETSTONE_WEBHOOK_HOST"] in names.get_values_for_type(x509.DNSName)
    cert.verify_directly_issued_by(ca)
    assert cert.not_valid_after_utc > datetime.now(UTC).replace(year=datetime.now(UTC).year + 5)
    assert base64.b64decode(secret["data"]["tls.key"]).startswith(b"-----BEGIN")


def test_webhook_configurations_written_by_the_operator(rendered) -> None:
    docs = rendered["webhook-operator-managed"]
    assert not kt.select(docs, "MutatingWebhookConfiguration")
    assert not kt.select(docs, "ValidatingWebhookConfiguration")
    env = kt.env_of(kt.container(kt.one(docs, "Deployment")))
    assert env["WHETSTONE_WEBHOOK_MANAGED"] == "whetstone.whetstone-system.whetstone.dev"
    kt.one(docs, "Secret", "whetstone-webhook-tls")


def test_webhook_with_cert_manager(rendered) -> None:
    docs = rendered["webhook-cert-manager"]
    assert not kt.select(docs, "Secret", "whetstone-webhook-tls"), "cert-manager writes it"
    certificate = kt.one(docs, "Certificate")
    assert certificate["spec"]["secretName"] == "whetstone-webhook-tls"
    assert "whetstone-webhook.whetstone-system.svc" in certificate["spec"]["dnsNames"]
    issuer = kt.one(docs, "Issuer")
    assert certificate["spec"]["issuerRef"] == {
        "kind": "Issuer",
        "name": issuer["metadata"]["name"],
    }
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        config = kt.one(docs, kind)
        injected = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        assert injected == "whetstone-system/whetstone-webhook-tls"
        assert not [h for h in config["webhooks"] if "caBundle" in h["clientConfig"]]
    corp = kt.one(rendered["everything"], "Certificate")
    assert corp["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}
    assert not kt.select(rendered["everything"], "Issuer")
    env = kt.env_of(kt.container(kt.one(rendered["everything"], "Deployment")))
    assert env["WHETSTONE_WEBHOOK_VALIDATE_SPECS"] == "false"


def test_every_setting_the_chart_passes_is_read_by_the_operator(rendered) -> None:
    sources = "\n".join(
        p.read_text() for p in sorted((REPO_ROOT / "operator" / "src").rglob("*.py"))
    )
    for variant in ("default", "webhook-operator-managed", "standalone"):
        container = kt.container(kt.one(rendered[variant], "Deployment"))
        for env in container["env"]:
            if env["name"].startswith("WHETSTONE_"):
                assert f'"{env["name"]}"' in sources, f"the operator never reads {env['name']}"


# ---------------------------------------------------------------- network policy


def _policy_ports(rule: dict[str, Any]) -> list[int]:
    return [port["port"] for port in rule["ports"]]


def test_network_policy_admits_only_the_webhook_by_default(rendered) -> None:
    docs = rendered["default"]
    policy = kt.one(docs, "NetworkPolicy")
    deployment = kt.one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == deployment["spec"]["selector"]["matchLabels"]
    )
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (webhook,) = policy["spec"]["ingress"]
    ports = {p["name"]: p["containerPort"] for p in kt.container(deployment)["ports"]}
    assert _policy_ports(webhook) == [ports["webhook"]]
    # No label selects the API server: any source, and the README says what protects the port.
    assert "from" not in webhook
    # Metrics show every tenant namespace: closed until metricsFrom names Prometheus.
    assert ports["metrics"] not in [
        p for rule in policy["spec"]["ingress"] for p in _policy_ports(rule)
    ]


def test_network_policy_peers_and_egress_come_from_values(rendered) -> None:
    values = VARIANTS["network-policy"]["networkPolicy"]
    docs = rendered["network-policy"]
    policy = kt.one(docs, "NetworkPolicy")
    ports = {
        p["name"]: p["containerPort"] for p in kt.container(kt.one(docs, "Deployment"))["ports"]
    }
    rules = {tuple(_policy_ports(rule)): rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == {(ports["webhook"],), (ports["metrics"],)}
    assert rules[(ports["webhook"],)]["from"] == values["webhookFrom"]
    assert rules[(ports["metrics"],)]["from"] == values["metricsFrom"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == values["egress"]
    assert not kt.select(rendered["no-network-policy"], "NetworkPolicy")
    # The health port is never opened: the kubelet probes from the node, which is always allowed.
    for variant in VARIANTS:
        for policy in kt.select(rendered[variant], "NetworkPolicy"):
            opened = [p for rule in policy["spec"]["ingress"] for p in _policy_ports(rule)]
            assert 8080 not in opened, variant


def test_network_policy_keeps_the_webhook_port_without_the_webhook(rendered) -> None:
    """The kustomize base renders without the webhook; its webhook component adds no policy,
    so the port stays in the policy (nothing listens on it then)."""
    (rule,) = kt.one(rendered["no-webhook"], "NetworkPolicy")["spec"]["ingress"]
    assert _policy_ports(rule) == [9443]


def test_production_overlay_lets_prometheus_scrape(kustomized) -> None:
    policy = kt.one(kustomized["overlays/production"], "NetworkPolicy")
    rules = {tuple(_policy_ports(rule)): rule for rule in policy["spec"]["ingress"]}
    assert set(rules) == {(9443,), (9090,)}
    assert "from" not in rules[(9443,)]
    assert rules[(9090,)]["from"]


# ---------------------------------------------------------------- checkov exceptions


def _checkov_skips(doc: dict[str, Any]) -> dict[str, str]:
    annotations = doc["metadata"].get("annotations") or {}
    skips = {}
    for key, value in annotations.items():
        if key.startswith("checkov.io/skip"):
            check, _, reason = value.partition("=")
            assert "=" not in reason, f"checkov splits on '=': {value}"
            skips[check] = reason
    return skips


def test_checkov_exceptions_are_few_and_explained(rendered) -> None:
    allowed = {"CKV_K8S_38", "CKV_K8S_15", "CKV_K8S_43", "CKV_K8S_155"}
    for variant, docs in rendered.items():
        for doc in docs:
            for check, reason in _checkov_skips(doc).items():
                assert check in allowed, (variant, doc["kind"], check)
                assert len(reason.split()) >= 6, (variant, check, reason)
    deployment = kt.one(rendered["default"], "Deployment")
    assert set(_checkov_skips(deployment)) == {"CKV_K8S_38", "CKV_K8S_15", "CKV_K8S_43"}
    # With a digest the image check passes, so it is not skipped.
    pinned = kt.one(rendered["everything"], "Deployment")
    assert set(_checkov_skips(pinned)) == {"CKV_K8S_38", "CKV_K8S_15"}
    # Control over webhook configurations only where the operator writes them.
    role = kt.one(rendered["webhook-operator-managed"], "ClusterRole", "whetstone")
    assert set(_checkov_skips(role)) == {"CKV_K8S_155"}
    assert not _checkov_skips(kt.one(rendered["default"], "ClusterRole", "whetstone"))


def test_operator_has_a_cpu_limit(rendered) -> None:
    limits = kt.container(kt.one(rendered["default"], "Deployment"))["resources"]["limits"]
    assert limits["cpu"] and limits["memory"]


# ---------------------------------------------------------------- the default PlatformPolicy


def rendered_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's PlatformPolicy, checked as the API server and the operator would."""
    policy = kt.one(docs, "PlatformPolicy")
    schema, scope = CRD_SCHEMAS[(policy["apiVersion"], "PlatformPolicy")]
    assert scope == "Cluster" and "namespace" not in policy["metadata"], policy["metadata"]
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(policy)]
    assert not errors, errors
    return policy


def test_the_default_policy_is_the_api_defaults_written_out(rendered) -> None:
    for variant in set(VARIANTS) - {"policy-override", "no-policy"}:
        policy = rendered_policy(rendered[variant])
        assert policy["metadata"]["name"] == "default", variant
        assert policy["metadata"]["labels"]["app.kubernetes.io/instance"] == "whetstone"
        assert PlatformPolicySpec.model_validate(policy["spec"]) == PlatformPolicySpec()
    # Every field is written out (none left to the API server's defaulting).
    values = yaml.safe_load((kt.CHART / "values.yaml").read_text())
    expected = PlatformPolicySpec().wire()
    expected["namespaceSelector"] = {}
    assert values["policy"]["spec"] == expected
    assert kt.one(rendered["default"], "PlatformPolicy")["spec"] == expected


def test_a_values_override_reaches_the_policy(rendered) -> None:
    policy = rendered_policy(rendered["policy-override"])
    assert policy["metadata"]["name"] == "regulated"
    spec = PlatformPolicySpec.model_validate(policy["spec"])
    assert spec.priority == 100
    assert spec.namespace_selector.matches({"whetstone.dev/tier": "regulated", "team": "risk"})
    assert not spec.namespace_selector.matches({"whetstone.dev/tier": "regulated"})
    assert not spec.namespace_selector.matches({})
    assert spec.approval.min_approvers == 2
    assert spec.approval.approver_groups == ["model-risk"]
    assert spec.approval.forbid_self_approval is True, "keys not given keep their defaults"
    assert spec.training.node_selector == {"pool": "gpu-regulated"}
    assert spec.training.data_classes == ["public", "internal", "restricted"]
    assert spec.training.require_output_encryption is True
    assert spec.training.budget.gpu_hours_per_month == 500
    assert spec.training.gpu_resource_names == ["nvidia.com/gpu"]
    assert [e.name for e in spec.analysis.prometheus] == ["main"]


def test_policy_create_false_renders_no_policy(rendered) -> None:
    assert not kt.select(rendered["no-policy"], "PlatformPolicy")
    assert kt.select(rendered["no-policy"], "Deployment"), "only the policy is left out"


def _draft7(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema node as values.schema.json holds it: no x-kubernetes-* extensions, and
    unknown keys refused (the API server would prune them without a word)."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out:
        out["properties"] = {k: _draft7(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _draft7(out[key])
    return out


def test_the_values_schema_of_policy_spec_follows_the_crd() -> None:
    schema = json.loads((kt.CHART / "values.schema.json").read_text())
    crd, _ = CRD_SCHEMAS[("whetstone.dev/v1alpha1", "PlatformPolicy")]
    expected = _draft7(crd["properties"]["spec"])
    actual = schema["properties"]["policy"]["properties"]["spec"]
    assert actual == expected, (
        "values.schema.json properties.policy.properties.spec drifts from the PlatformPolicy "
        "CRD; it should be:\n" + json.dumps(expected, indent=2)
    )


# ---------------------------------------------------------------- observability


def test_monitoring_objects_are_off_by_default(rendered) -> None:
    kinds = {d["kind"] for d in rendered["default"]}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_service_monitor_scrapes_the_metrics_service(rendered) -> None:
    docs = rendered["monitoring"]
    monitor = kt.one(docs, "ServiceMonitor")
    service = kt.one(docs, "Service", "whetstone-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert not selector.items() <= kt.one(docs, "Deployment")["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_alerts_cover_failures_and_use_the_documented_metrics(rendered) -> None:
    rule = kt.one(rendered["monitoring"], "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "WhetstoneFineTuneJobFailed",
        "WhetstoneFineTuneJobStuckPending",
        "WhetstoneRolloutAborted",
        "WhetstoneModelVersionRejected",
        "WhetstoneReconcileErrors",
        "WhetstoneOperatorDown",
    }
    assert alerts["WhetstoneFineTuneJobStuckPending"]["for"] == "30m"
    documented = _documented_metrics()
    for alert in alerts.values():
        for metric in re.findall(r"\bwhetstone_[a-z_]+", alert["expr"]):
            assert metric in documented, f"{alert['alert']} uses undocumented {metric}"


def test_grafana_dashboard(rendered) -> None:
    config_map = kt.one(rendered["monitoring"], "ConfigMap", "whetstone-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["whetstone.json"])
    assert dashboard["uid"] == "whetstone-operator"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    documented = _documented_metrics()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for metric in re.findall(r"\bwhetstone_[a-z_]+", target["expr"]):
                used.add(re.sub(r"_(bucket|sum|count)$", "", metric))
    assert used <= documented
    assert used >= METRIC_NAMES


def test_metric_names_are_listed_in_the_chart_readme() -> None:
    assert _documented_metrics() == METRIC_NAMES


def _documented_metrics() -> set[str]:
    text = (kt.CHART / "README.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(whetstone_[a-z_]+)", section, flags=re.M))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found (Debian package prometheus)")
    return path


def test_promtool_accepts_the_rules(rendered, promtool: str, tmp_path: Path) -> None:
    rule = kt.one(rendered["monitoring"], "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    out = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_alerts_fire_on_sample_series(rendered, promtool: str, tmp_path: Path) -> None:
    rule = kt.one(rendered["monitoring"], "PrometheusRule")
    spec = copy.deepcopy(rule["spec"])
    for group in spec["groups"]:
        for r in group["rules"]:
            r.pop("annotations")  # checked by promtool check rules; here: expressions, for, labels
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    job = {"job": "whetstone-metrics", "namespace": "whetstone-system"}

    def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{inner}}}", "values": values}

    def fires(alert: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
        return {
            "alertname": alert,
            "eval_time": at,
            "exp_alerts": [{"exp_labels": labels} for labels in expected],
        }

    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series(FTJ, {"namespace": "ml", "phase": "Failed"}, "1x60"),
                    series(FTJ, {"namespace": "ml", "phase": "Pending"}, "1x60"),
                    series(FTJ, {"namespace": "cv", "phase": "Pending"}, "1x10"),
                    series(RO, {"namespace": "ml", "phase": "Aborted"}, "0 0 1x60"),
                    series(MV, {"namespace": "ml", "phase": "Rejected"}, "1x60"),
                    series("whetstone_reconcile_total", {"kind": "Rollout"}, "0+10x60"),
                    series("whetstone_reconcile_errors_total", {"kind": "Rollout"}, "0+5x60"),
                    series("whetstone_reconcile_total", {"kind": "FineTuneJob"}, "0+10x60"),
                    series("whetstone_reconcile_errors_total", {"kind": "FineTuneJob"}, "0x60"),
                    series("up", job, "1x20 0x40"),
                ],
                "alert_rule_test": [
                    fires(
                        "WhetstoneFineTuneJobFailed",
                        "5m",
                        {"severity": "warning", "namespace": "ml"},
                    ),
                    fires("WhetstoneFineTuneJobStuckPending", "20m"),
                    fires(
                        "WhetstoneFineTuneJobStuckPending",
                        "45m",
                        {"severity": "warning", "namespace": "ml"},
                    ),
                    fires("WhetstoneRolloutAborted", "2m"),
                    fires(
                        "WhetstoneRolloutAborted",
                        "5m",
                        {"severity": "critical", "namespace": "ml", "phase": "Aborted"},
                    ),
                    fires(
                        "WhetstoneModelVersionRejected",
                        "5m",
                        {"severity": "info", "namespace": "ml"},
                    ),
                    fires(
                        "WhetstoneReconcileErrors",
                        "30m",
                        {"severity": "warning", "kind": "Rollout"},
                    ),
                    fires("WhetstoneOperatorDown", "15m"),
                    fires(
                        "WhetstoneOperatorDown",
                        "40m",
                        {"severity": "critical", "namespace": "whetstone-system"},
                    ),
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run(
        [promtool, "test", "rules", str(tmp_path / "tests.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------- docs


def test_every_value_is_documented_in_the_chart_readme() -> None:
    values = yaml.safe_load((kt.CHART / "values.yaml").read_text())
    readme = (kt.CHART / "README.md").read_text()
    missing = [path for path in _leaf_paths(values) if f"`{path}`" not in readme]
    assert not missing, f"values missing from the README's values table: {missing}"


# Values documented as a whole rather than key by key.
_DOCUMENTED_WHOLE = {
    "resources",
    "podSecurityContext",
    "securityContext",
    "probes.liveness",
    "probes.readiness",
    "metrics.dashboard.labels",
}


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node and prefix not in _DOCUMENTED_WHOLE:
        return [p for k, v in node.items() for p in _leaf_paths(v, f"{prefix}.{k}".lstrip("."))]
    return [prefix]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


# ---------------------------------------------------------------- kustomize


def test_kustomize_base_matches_a_fresh_render() -> None:
    helm = kt.require_helm()
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "render-manifests.sh"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "WHETSTONE_HELM": str(helm)},
        check=False,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def kustomized() -> dict[str, list[dict[str, Any]]]:
    kubectl = kt.require_kubectl()
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [str(kubectl), "kustomize", str(REPO_ROOT / "manifests" / overlay)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, f"kubectl kustomize {overlay}:\n{result.stderr}"
        out[overlay] = kt.parse(result.stdout)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_overlays_render_and_validate(overlay: str, kustomized) -> None:
    docs = kustomized[overlay]
    errors = [e for doc in docs for e in validation_errors(doc)]
    assert not errors, "\n".join(errors)
    crds = {d["metadata"]["name"] for d in kt.select(docs, "CustomResourceDefinition")}
    assert crds == {
        "finetunejobs.whetstone.dev",
        "modelversions.whetstone.dev",
        "rollouts.whetstone.dev",
        "platformpolicies.whetstone.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    for generated in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(generated.read_text())
        assert kt.one(docs, "CustomResourceDefinition", crd["metadata"]["name"]) == crd
    for doc in docs:
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "Helm"
    assert kt.one(docs, "Namespace")["metadata"]["name"] == "whetstone-system"
    assert kt.container(kt.one(docs, "Deployment"))["securityContext"]["runAsNonRoot"]
    assert not kt.select(docs, "Secret"), "no secret is kept in Git"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomized_builtin_kinds_pass_kubernetes_validate_strict(overlay: str, kustomized) -> None:
    kubernetes_validate_strict(kustomized[overlay])


def test_dev_overlay_runs_one_debug_replica(kustomized) -> None:
    docs = kustomized["overlays/dev"]
    deployment = kt.one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    env = kt.env_of(kt.container(deployment))
    assert env["WHETSTONE_VERBOSE"] == "1"
    assert not kt.select(docs, "PodDisruptionBudget")


def test_production_overlay_spreads_replicas_and_monitors(kustomized) -> None:
    docs = kustomized["overlays/production"]
    deployment = kt.one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert kt.env_of(kt.container(deployment))["WHETSTONE_LOG_FORMAT"] == "json"
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    for kind in ("ServiceMonitor", "PrometheusRule", "PodDisruptionBudget", "Certificate"):
        kt.one(docs, kind)
    kt.one(docs, "ConfigMap", "whetstone-dashboard")
    env = kt.env_of(kt.container(deployment))
    assert env["WHETSTONE_WEBHOOK_PORT"] == "9443"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = kt.one(docs, kind)["metadata"]["annotations"]
        assert (
            annotations["cert-manager.io/inject-ca-from"]
            == "whetstone-system/whetstone-webhook-tls"
        )
    base = kustomized["base"]
    assert not kt.select(base, "MutatingWebhookConfiguration")
    assert "WHETSTONE_WEBHOOK_PORT" not in kt.env_of(kt.container(kt.one(base, "Deployment")))


def test_argocd_applications_point_at_real_paths() -> None:
    for path in sorted((REPO_ROOT / "manifests" / "argocd").glob("application*.yaml")):
        app = yaml.safe_load(path.read_text())
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
        assert app["spec"]["destination"]["namespace"]
        assert app["spec"]["source"]["repoURL"].startswith("https://")
    operator_app = yaml.safe_load((REPO_ROOT / "manifests/argocd/application.yaml").read_text())
    assert (REPO_ROOT / operator_app["spec"]["source"]["path"] / "kustomization.yaml").is_file()
    assert "ServerSideApply=true" in operator_app["spec"]["syncPolicy"]["syncOptions"]
