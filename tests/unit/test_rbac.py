"""RBAC: the chart grants exactly rbac-rules.yaml, no wildcards, and all that the code calls."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from whetstone_operator import k8s

from tests.conftest import REPO_ROOT
from tests.unit import kubetools as kt

RULES_FILE = kt.CHART / "rbac-rules.yaml"
RULES: dict[str, list[dict[str, Any]]] = yaml.safe_load(RULES_FILE.read_text())
OPERATOR_SRC = REPO_ROOT / "operator" / "src" / "whetstone_operator"

CLUSTER_SCOPED = {
    "customresourcedefinitions",
    "namespaces",
    "subjectaccessreviews",
    "platformpolicies",
    "clusterkopfpeerings",
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
}
MODES = {
    "cluster": {},
    "cluster-no-webhook": {"webhook": {"enabled": False}},
    "cluster-operator-webhooks": {"webhook": {"configurations": "operator"}},
    "cluster-standalone": {"replicas": 1, "peering": {"enabled": False}},
    "namespaced": {"watchNamespaces": ["ml", "research"]},
    "namespaced-operator-webhooks-standalone": {
        "watchNamespaces": ["ml"],
        "webhook": {"configurations": "operator"},
        "replicas": 1,
        "peering": {"enabled": False},
    },
}


def expected_rules(
    values: dict[str, Any], webhook_configuration: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(ClusterRole rules, per-namespace Role rules) for these values; rules with
    `resourceNames` name the webhook configuration the operator is told to manage."""
    peering = values.get("peering", {}).get("enabled", True)
    webhook = values.get("webhook", {})
    operator_webhooks = webhook.get("enabled", True) and webhook.get("configurations") == "operator"
    namespaced = bool(values.get("watchNamespaces"))
    cluster = [] if namespaced else list(RULES["namespaced"])
    cluster += RULES["cluster"]
    if peering and not namespaced:
        cluster += RULES["clusterPeering"]
    if operator_webhooks:
        assert webhook_configuration
        cluster += [
            {**rule, "resourceNames": [webhook_configuration]} if "resourceNames" in rule else rule
            for rule in RULES["webhook"]
        ]
    roles = []
    if namespaced:
        roles = RULES["namespaced"] + (RULES["namespacePeering"] if peering else [])
    return cluster, roles


def operator_roles(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The operator's ClusterRole and Roles: those its ServiceAccount is bound to."""
    account = kt.one(docs, "ServiceAccount")["metadata"]["name"]

    def bound(kind: str) -> set[str]:
        return {
            b["roleRef"]["name"]
            for b in kt.select(docs, kind)
            if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])
        }

    cluster_roles = [
        r
        for r in kt.select(docs, "ClusterRole")
        if r["metadata"]["name"] in bound("ClusterRoleBinding")
    ]
    assert len(cluster_roles) == 1
    roles = [r for r in kt.select(docs, "Role") if r["metadata"]["name"] in bound("RoleBinding")]
    return cluster_roles[0], roles


def _permissions(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def allowed(group: str, resource: str, verb: str) -> bool:
    every_rule = [r for section in RULES.values() for r in section]
    return (group, resource, verb) in _permissions(every_rule)


# ---------------------------------------------------------------- the rules file


def test_rules_file_has_its_sections_and_no_wildcards() -> None:
    assert set(RULES) == {"namespaced", "cluster", "clusterPeering", "namespacePeering", "webhook"}
    for section, rules in RULES.items():
        for rule in rules:
            keys = {"apiGroups", "resources", "verbs"}
            if section == "webhook" and "resourceNames" in rule:
                # The template names this release's configurations; RBAC never limits create.
                assert rule["resourceNames"] == [], rule
                assert "create" not in rule["verbs"], rule
                keys.add("resourceNames")
            assert set(rule) == keys, (section, rule)
            for field in ("apiGroups", "resources", "verbs"):
                assert rule[field] and "*" not in rule[field], (section, rule)
                assert all("*" not in item for item in rule[field]), (section, rule)


def test_namespaced_and_cluster_sections_hold_the_right_scopes() -> None:
    for section, rules in RULES.items():
        for rule in rules:
            for resource in rule["resources"]:
                cluster_scoped = resource.split("/")[0] in CLUSTER_SCOPED
                assert cluster_scoped == (section in {"cluster", "clusterPeering", "webhook"}), (
                    f"{resource} in section {section}"
                )


@pytest.mark.parametrize(
    ("group", "resource", "verbs"),
    [
        ("whetstone.dev", "finetunejobs", "get list watch"),
        ("whetstone.dev", "finetunejobs/status", "patch"),
        ("whetstone.dev", "modelversions", "get list watch create patch"),
        ("whetstone.dev", "rollouts/status", "patch"),
        ("batch", "jobs", "get list watch create delete"),
        ("", "configmaps", "get create"),
        ("", "services", "get create"),
        ("", "pods", "get list watch"),
        ("", "events", "create"),
        ("serving.kserve.io", "inferenceservices", "get list watch patch"),
        ("kopf.dev", "clusterkopfpeerings", "list watch patch"),
        ("kopf.dev", "kopfpeerings", "list watch patch"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list watch"),
        ("", "namespaces", "get list watch"),
        ("whetstone.dev", "platformpolicies/status", "patch"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "create patch"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "create patch"),
    ],
)
def test_the_operator_may_do_what_it_needs(group: str, resource: str, verbs: str) -> None:
    for verb in verbs.split():
        assert allowed(group, resource, verb), (group, resource, verb)


@pytest.mark.parametrize(
    ("group", "resource", "verb"),
    [
        ("", "secrets", "get"),
        ("", "secrets", "list"),
        ("", "pods", "create"),
        ("", "pods", "delete"),
        ("", "pods/exec", "create"),
        ("whetstone.dev", "finetunejobs", "delete"),
        ("whetstone.dev", "modelversions", "approve"),
        ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "patch"),
        # granted once, never used: taken away
        ("", "pods/log", "get"),
        ("", "configmaps", "patch"),
        ("", "configmaps", "delete"),
        ("", "configmaps", "list"),
        ("", "services", "patch"),
        ("", "services", "delete"),
        ("batch", "jobs", "patch"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("whetstone.dev", "finetunejobs", "patch"),
        ("whetstone.dev", "finetunejobs", "update"),
        ("whetstone.dev", "rollouts", "patch"),
        ("whetstone.dev", "modelversions/status", "update"),
        ("whetstone.dev", "finetunejobs/status", "get"),
        ("whetstone.dev", "platformpolicies/status", "get"),
        ("serving.kserve.io", "inferenceservices", "update"),
        ("kopf.dev", "clusterkopfpeerings", "get"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "list"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "watch"),
    ],
)
def test_the_operator_may_not_do_more(group: str, resource: str, verb: str) -> None:
    assert not allowed(group, resource, verb)


# ---------------------------------------------------------------- the rendered chart


@pytest.mark.parametrize("mode", MODES)
def test_rendered_operator_rules_equal_the_rules_file(mode: str) -> None:
    values = MODES[mode]
    docs = kt.render(values)
    cluster_role, roles = operator_roles(docs)
    managed = kt.env_of(kt.container(kt.one(docs, "Deployment"))).get("WHETSTONE_WEBHOOK_MANAGED")
    want_cluster, want_roles = expected_rules(values, managed)
    assert cluster_role["rules"] == want_cluster
    namespaces = values.get("watchNamespaces", [])
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces)
    for role in roles:
        assert role["rules"] == want_roles
    bindings = kt.select(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(namespaces)


@pytest.mark.parametrize("mode", MODES)
def test_no_rendered_rule_uses_a_wildcard(mode: str) -> None:
    docs = kt.render(MODES[mode])
    for role in kt.select(docs, "ClusterRole") + kt.select(docs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(field, [])), (
                    role["metadata"]["name"],
                    rule,
                )


def test_kustomize_base_grants_the_same_rules() -> None:
    docs = kt.parse((REPO_ROOT / "manifests" / "base" / "whetstone.yaml").read_text())
    cluster_role, roles = operator_roles(docs)
    assert cluster_role["rules"] == expected_rules({})[0]
    assert roles == []


def test_operator_managed_webhooks_patch_only_their_own_configurations() -> None:
    values = {"webhook": {"configurations": "operator", "configurationName": "hooks.example.com"}}
    docs = kt.render(values)
    cluster_role, _ = operator_roles(docs)
    env = kt.env_of(kt.container(kt.one(docs, "Deployment")))
    assert env["WHETSTONE_WEBHOOK_MANAGED"] == "hooks.example.com"
    hooks = [r for r in cluster_role["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    by_verb = {verb: rule for rule in hooks for verb in rule["verbs"]}
    assert set(by_verb) == {"create", "patch"}
    assert by_verb["patch"]["resourceNames"] == ["hooks.example.com"]
    # RBAC cannot limit create by name: that one rule stays unlimited, and needs no read.
    assert "resourceNames" not in by_verb["create"]
    assert set(by_verb["create"]["resources"]) == {
        "validatingwebhookconfigurations",
        "mutatingwebhookconfigurations",
    }
    # The default (configurations written by the chart) grants neither.
    default_role, _ = operator_roles(kt.render())
    assert not [
        r for r in default_role["rules"] if "admissionregistration.k8s.io" in r["apiGroups"]
    ]


def test_namespaced_install_keeps_only_cluster_scoped_rules_cluster_wide() -> None:
    docs = kt.render(
        {"watchNamespaces": ["ml", "research"], "webhook": {"configurations": "operator"}}
    )
    cluster_role, roles = operator_roles(docs)
    for rule in cluster_role["rules"]:
        for resource in rule["resources"]:
            assert resource.split("/")[0] in CLUSTER_SCOPED, resource
    assert _permissions(cluster_role["rules"]) >= {
        ("", "namespaces", "watch"),
        ("whetstone.dev", "platformpolicies", "list"),
        ("whetstone.dev", "platformpolicies/status", "patch"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    }
    for role in roles:
        assert ("batch", "jobs", "create") in _permissions(role["rules"])
    assert ("batch", "jobs", "create") not in _permissions(cluster_role["rules"])


def test_roles_for_people() -> None:
    docs = kt.render()
    approver = kt.one(docs, "ClusterRole", "whetstone-approver")
    assert approver["rules"] == [
        {
            "apiGroups": ["whetstone.dev"],
            "resources": ["modelversions"],
            "verbs": ["get", "list", "watch", "patch", "approve"],
        }
    ]
    view = kt.one(docs, "ClusterRole", "whetstone-aggregate-to-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert _permissions(view["rules"]) >= {("whetstone.dev", "rollouts", "watch")}
    assert {v for _, _, v in _permissions(view["rules"])} == {"get", "list", "watch"}
    edit = kt.one(docs, "ClusterRole", "whetstone-aggregate-to-edit")
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert ("whetstone.dev", "finetunejobs", "create") in _permissions(edit["rules"])
    assert "approve" not in {v for _, _, v in _permissions(edit["rules"])}
    off = kt.render({"rbac": {"userRoles": False}})
    assert {r["metadata"]["name"] for r in kt.select(off, "ClusterRole")} == {"whetstone"}


def test_namespaced_installs_can_coexist() -> None:
    # One release per cluster installs the default PlatformPolicy (policy.create).
    first = kt.render({"watchNamespaces": ["a"], "rbac": {"userRoles": False}}, namespace="ops-a")
    second = kt.render(
        {"watchNamespaces": ["b"], "rbac": {"userRoles": False}, "policy": {"create": False}},
        namespace="ops-b",
    )

    def cluster_scoped(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {
            (d["kind"], d["metadata"]["name"]) for d in docs if "namespace" not in d["metadata"]
        }

    assert not cluster_scoped(first) & cluster_scoped(second)


# ---------------------------------------------------------------- what the operator code calls

# kubernetes client method name -> (API group, resource); verbs come from the method prefix.
CLIENT_RESOURCES = {
    "job": ("batch", "jobs"),
    "config_map": ("", "configmaps"),
    "service": ("", "services"),
    "pod": ("", "pods"),
    "pod_log": ("", "pods/log"),
    "event": ("", "events"),
    "namespace": ("", "namespaces"),
    "subject_access_review": ("authorization.k8s.io", "subjectaccessreviews"),
    "custom_resource_definition": ("apiextensions.k8s.io", "customresourcedefinitions"),
    "validating_webhook_configuration": (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
    ),
    "mutating_webhook_configuration": (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    ),
}
# Cluster-scoped kinds: their client methods carry no `namespaced_` or `cluster_`.
CLUSTER_CLIENT_KINDS = {
    "namespace",
    "subject_access_review",
    "custom_resource_definition",
    "validating_webhook_configuration",
    "mutating_webhook_configuration",
}
CLIENT_VERBS = {
    "read": "get",
    "get": "get",
    "list": "list",
    "create": "create",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
    "delete_collection": "deletecollection",
}
_CLIENT_METHOD = re.compile(
    r"^(read|get|list|create|patch|replace|delete_collection|delete)_(namespaced_|cluster_)?"
    r"([a-z_]+?)(_status|_for_all_namespaces)?$"
)
# Resources kopf handlers may name, by plural.
KOPF_RESOURCES = {
    "finetunejobs": "whetstone.dev",
    "modelversions": "whetstone.dev",
    "rollouts": "whetstone.dev",
    "jobs": "batch",
    "pods": "",
    "configmaps": "",
    "services": "",
    "inferenceservices": "serving.kserve.io",
    "namespaces": "",
    "platformpolicies": "whetstone.dev",
    "customresourcedefinitions": "apiextensions.k8s.io",
}


def _sources() -> list[Path]:
    return sorted(OPERATOR_SRC.rglob("*.py"))


# k8s.py's generic verbs, and the reconcile actions the loop carries out with them: a call
# that names its kind literally asks k8s.KINDS for (kind, verb), in KINDS' notation.
K8S_VERBS = {
    "create": ("create",),
    "get": ("get",),
    "patch": ("patch",),
    "_patch": ("patch",),
    "delete": ("delete",),
}
ACTION_VERBS = {"Patch": ("patch",), "Delete": ("delete",), "UpdateStatus": ("get", "patch/status")}


def _literal_kind(node: ast.Call, creates: bool) -> str | None:
    if creates:
        body = node.args[0] if node.args else None
        if isinstance(body, ast.Dict):
            for key, value in zip(body.keys, body.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "kind":
                    return value.value if isinstance(value, ast.Constant) else None
        return None
    if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
        return str(node.args[1].value)
    return None


def kind_calls(text: str, *, in_k8s: bool = False) -> set[tuple[str, str]]:
    """(kind, verb) of every call that names its kind literally: k8s.get/patch/delete(version,
    "Kind", ...), k8s.create({"kind": "Kind", ...}), the actions Patch/Delete/UpdateStatus, and
    k8s.py's own calls of its verbs. Calls whose kind is computed are bounded by k8s.KINDS, which
    k8s.py enforces before sending anything."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        func, name = node.func, None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            name = func.attr if func.value.id == "k8s" and func.attr in K8S_VERBS else None
        elif isinstance(func, ast.Name) and (func.id in ACTION_VERBS or in_k8s):
            name = func.id if func.id in ACTION_VERBS or func.id in K8S_VERBS else None
        if name is None:
            continue
        kind = _literal_kind(node, creates=name == "create")
        if kind is None:
            continue
        sub_node = next((k.value for k in node.keywords if k.arg == "subresource"), None)
        if sub_node is None and name == "Patch" and len(node.args) > 4:
            sub_node = node.args[4]
        sub = sub_node.value if isinstance(sub_node, ast.Constant) else None
        for verb in ACTION_VERBS.get(name) or K8S_VERBS[name]:
            found.add((kind, f"{verb}/{sub}" if sub and verb == "patch" else verb))
    return found


def k8s_permissions() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of everything k8s.KINDS lets k8s.py send."""
    found = set()
    for entry in k8s.KINDS.values():
        group = entry.api_version.rpartition("/")[0]
        for declared in entry.verbs.split():
            verb, _, sub = declared.partition("/")
            found.add((group, f"{entry.plural}/{sub}" if sub else entry.plural, verb))
    return found


def client_calls(text: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every kubernetes-client method called in a source text."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        match = _CLIENT_METHOD.match(node.func.attr)
        if match is None:
            continue
        verb, scope, kind, suffix = match.groups()
        if not (scope or suffix == "_for_all_namespaces" or kind in CLUSTER_CLIENT_KINDS):
            continue  # not a kubernetes client method (path.read_text, our own wrappers)
        if kind == "custom_object":
            # Group and plural are arguments: known plurals among the literal ones.
            literals = [a.value for a in node.args if isinstance(a, ast.Constant)]
            pairs = [(KOPF_RESOURCES[v], v) for v in literals if v in KOPF_RESOURCES]
        elif kind in CLIENT_RESOURCES:
            pairs = [CLIENT_RESOURCES[kind]]
        else:
            raise AssertionError(
                f"the operator calls {node.func.attr}: add its resource to CLIENT_RESOURCES "
                "here and its permission to charts/whetstone/rbac-rules.yaml"
            )
        status = "/status" if suffix == "_status" else ""
        found |= {(group, resource + status, CLIENT_VERBS[verb]) for group, resource in pairs}
    return found


def kopf_watches(text: str) -> set[tuple[str, str, str]]:
    """Permissions kopf needs for the resources handlers are registered on."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        dotted = ast.unparse(node.func)
        # Admission handlers are called by the API server: they watch nothing.
        if dotted in {"kopf.on.startup", "kopf.on.cleanup", "kopf.on.validate", "kopf.on.mutate"}:
            continue
        if not dotted.startswith(("kopf.on.", "kopf.index", "kopf.timer", "kopf.daemon")):
            continue
        literals = [a.value for a in node.args if isinstance(a, ast.Constant)]
        plurals = [v for v in literals if isinstance(v, str) and v in KOPF_RESOURCES]
        for plural in plurals:
            group = KOPF_RESOURCES[plural]
            verbs = ["list", "watch"]
            # kopf records progress and finalizers on the objects of change handlers; the
            # operator's daemons run without finalizers (test_daemons_need_no_finalizer).
            if dotted not in {"kopf.index", "kopf.on.event", "kopf.daemon", "kopf.timer"}:
                verbs.append("patch")
            found |= {(group, plural, verb) for verb in verbs}
    return found


def test_the_scanners_find_calls() -> None:
    sample = (
        "batch.create_namespaced_job(ns, body)\n"
        "core.read_namespaced_pod_log(name, ns)\n"
        "core.patch_namespaced_config_map(name, ns, body)\n"
        "@kopf.on.create(GROUP, VERSION, 'finetunejobs')\n"
        "def f(**_): pass\n"
        "@kopf.index('batch', 'v1', 'jobs')\n"
        "def g(**_): pass\n"
    )
    assert client_calls(sample) == {
        ("batch", "jobs", "create"),
        ("", "pods/log", "get"),
        ("", "configmaps", "patch"),
    }
    assert ("whetstone.dev", "finetunejobs", "patch") in kopf_watches(sample)
    assert ("batch", "jobs", "watch") in kopf_watches(sample)
    assert ("batch", "jobs", "patch") not in kopf_watches(sample)
    assert client_calls(
        "api.patch_namespaced_custom_object_status(G, V, ns, 'rollouts', n, b)"
    ) == {("whetstone.dev", "rollouts/status", "patch")}
    assert client_calls("path.read_text()\nk8s.patch_rollout_status(ns, n, p)") == set()
    assert client_calls("authz.create_subject_access_review(body)") == {
        ("authorization.k8s.io", "subjectaccessreviews", "create")
    }
    with pytest.raises(AssertionError, match="read_namespaced_secret"):
        client_calls("core.read_namespaced_secret(name, ns)")
    assert kind_calls(
        "k8s.patch(API, 'InferenceService', ns, n, p)\n"
        "k8s.patch(API, 'Rollout', ns, n, p, subresource='status')\n"
        "k8s.get('v1', 'Pod', ns, n)\n"
        "k8s.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': m})\n"
        "k8s.create(body)\n"
        "k8s.delete(action.api_version, action.kind, ns, n)\n"
        "Patch(API, 'ModelVersion', n, p)\n"
        "Patch(API, 'FineTuneJob', n, p, 'status')\n"
        "Delete('batch/v1', 'Job', n)\n"
        "UpdateStatus(API, 'ModelVersion', n, change)\n"
        "get(API, 'Rollout', ns, n)\n"
        "body.get('kind', '')"
    ) == {
        ("InferenceService", "patch"),
        ("Rollout", "patch/status"),
        ("Pod", "get"),
        ("ConfigMap", "create"),
        ("ModelVersion", "patch"),
        ("FineTuneJob", "patch/status"),
        ("Job", "delete"),
        ("ModelVersion", "get"),
        ("ModelVersion", "patch/status"),
    }
    assert kind_calls("_patch(API, 'Rollout', ns, n, p, subresource='status')", in_k8s=True) == {
        ("Rollout", "patch/status")
    }


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(OPERATOR_SRC)))
def test_what_the_operator_code_calls_is_granted(path: Path) -> None:
    text = path.read_text()
    needed = client_calls(text) | kopf_watches(text)
    missing = sorted(p for p in needed if not allowed(*p))
    assert not missing, f"{path.name} needs {missing}: add them to {RULES_FILE.name}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(OPERATOR_SRC)))
def test_what_the_operator_code_asks_of_k8s_is_declared(path: Path) -> None:
    asked = kind_calls(path.read_text(), in_k8s=path.name == "k8s.py")
    undeclared = sorted(
        (kind, verb)
        for kind, verb in asked
        if kind not in k8s.KINDS or verb not in k8s.KINDS[kind].verbs.split()
    )
    assert not undeclared, (
        f"{path.name} asks k8s.py for {undeclared}, which k8s.KINDS does not declare (k8s.py "
        f"would refuse them): declare them there and grant them in {RULES_FILE.name}"
    )


def test_everything_k8s_may_send_is_granted() -> None:
    for entry in k8s.KINDS.values():
        for declared in entry.verbs.split():
            verb, _, sub = declared.partition("/")
            assert verb in {"create", "get", "list", "patch", "delete"} and sub in {"", "status"}
    missing = sorted(p for p in k8s_permissions() if not allowed(*p))
    assert not missing, f"k8s.KINDS declares {missing}: grant them in {RULES_FILE.name}"


def test_k8s_kinds_are_scoped_as_the_rules_are() -> None:
    for kind, entry in k8s.KINDS.items():
        assert entry.namespaced == (entry.plural not in CLUSTER_SCOPED), kind
    assert ("", "pods", "create") not in k8s_permissions()
    assert ("", "secrets", "get") not in k8s_permissions()


# What kopf does by itself, unseen in the operator's code: permission -> why.
KOPF_ITSELF = {
    ("", "events", "create"): "kopf posts the Events of kopf.event() (core/v1, POST only)",
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "kopf finds resources in CRDs",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "and follows them",
    ("kopf.dev", "clusterkopfpeerings", "list"): "peering: kopf watches its peering record",
    ("kopf.dev", "clusterkopfpeerings", "watch"): "peering",
    ("kopf.dev", "clusterkopfpeerings", "patch"): "peering: kopf renews its entry",
    ("kopf.dev", "kopfpeerings", "list"): "peering, one record per watched namespace",
    ("kopf.dev", "kopfpeerings", "watch"): "peering",
    ("kopf.dev", "kopfpeerings", "patch"): "peering",
    **{
        ("admissionregistration.k8s.io", kind, verb): "kopf's managed webhook configurations: "
        "created when missing, then patched (never read)"
        for kind in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations")
        for verb in ("create", "patch")
    },
}


def used_permissions() -> set[tuple[str, str, str]]:
    """Everything the operator can be seen to need: what k8s.KINDS lets k8s.py send, the
    kubernetes-client calls and kopf watches in the sources, and what kopf does by itself."""
    used = k8s_permissions() | set(KOPF_ITSELF)
    for path in _sources():
        text = path.read_text()
        used |= client_calls(text) | kopf_watches(text)
    return used


@pytest.mark.parametrize("section", sorted(RULES))
def test_every_granted_permission_is_used(section: str) -> None:
    unused = sorted(_permissions(RULES[section]) - used_permissions())
    assert not unused, (
        f"{RULES_FILE.name} section {section} grants {unused}, which neither k8s.KINDS, the "
        "kopf handlers nor kopf itself need: take them away"
    )


def test_the_unused_check_finds_unused_grants() -> None:
    assert ("", "pods/log", "get") not in used_permissions()
    assert ("", "configmaps", "patch") not in used_permissions()
    assert ("batch", "jobs", "watch") in used_permissions()
    assert ("whetstone.dev", "platformpolicies", "watch") in used_permissions()
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "patch") not in used_permissions()


def test_daemons_need_no_finalizer() -> None:
    """kopf would add a finalizer (a patch) to the object of each daemon or timer; the operator
    turns that off, which is why kopf_watches expects no patch for them."""
    import kopf

    import whetstone_operator.handlers  # noqa: F401  (registers the handlers)

    spawning = kopf.get_default_registry()._spawning.get_all_handlers()
    assert spawning, "no daemon registered: the resync loop is one"
    assert all(not handler.requires_finalizer for handler in spawning)
