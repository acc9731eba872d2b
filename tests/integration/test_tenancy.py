"""Tenants as users really get them: the built-in ``edit`` role, filled with Whetstone's verbs
by ClusterRole aggregation of the chart's user roles, bound per namespace. Every check is
the real API server's answer to the tenant's own request (or a SubjectAccessReview)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from cluster import ApiError, ControlPlane, Kube, resource_path
from tenancy import AUTHZ_API, EDIT_VERBS, WHETSTONE_KINDS, Tenant, role_verbs

pytestmark = pytest.mark.integration

API = "whetstone.dev/v1alpha1"
DIGEST = "sha256:" + "ab" * 32


def finetunejob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "tiny://llama"},
            "dataset": {"train": {"uri": "file:///data/train.jsonl"}},
            "output": {"uri": "file:///artifacts/"},
        },
    }


def modelversion(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {
            "model": "grader",
            "version": 1,
            "artifact": {"uri": "s3://models/grader/v1/", "digest": DIGEST},
        },
    }


def rollout(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "modelVersion": "grader-v1",
            "inferenceService": {"name": "grader"},
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"setWeight": 100}]}},
        },
    }


BUILDERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "finetunejobs": finetunejob,
    "modelversions": modelversion,
    "rollouts": rollout,
}


def path(
    plural: str, namespace: str | None, name: str | None = None, sub: str | None = None
) -> str:
    return resource_path(API, plural, namespace, name, sub)


def forbidden(call: Callable[[], object], user: str) -> ApiError:
    """``call`` answered 403 Forbidden, naming ``user`` (so it was judged as that user)."""
    with pytest.raises(ApiError) as err:
        call()
    assert err.value.status == 403, err.value
    assert err.value.reason == "Forbidden", err.value
    assert f'"{user}"' in err.value.message, err.value.message
    return err.value


def without_status(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "status": {}}


@pytest.fixture
def other_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"elsewhere-{secrets.token_hex(3)}"
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


# --------------------------------------------------------------------------- aggregation


def test_built_in_roles_aggregate_the_charts_user_roles(kube: Kube) -> None:
    for kind in WHETSTONE_KINDS:
        assert role_verbs(kube, "view", kind) >= {"get", "list", "watch"}, kind
        assert not role_verbs(kube, "view", kind) & {"create", "update", "patch", "delete"}, kind
        assert role_verbs(kube, "edit", kind) >= EDIT_VERBS, kind
        assert role_verbs(kube, "admin", kind) >= EDIT_VERBS, kind
    # Approving is a verb of its own that no built-in role carries.
    for role in ("view", "edit", "admin"):
        assert "approve" not in role_verbs(kube, role, "modelversions"), role
    assert "approve" in role_verbs(kube, "whetstone-approver", "modelversions")
    # Nor do they carry the platform team's cluster-scoped kind.
    assert not role_verbs(kube, "edit", "platformpolicies")


# --------------------------------------------------------------------------- in its namespace


def test_tenant_with_edit_manages_whetstone_objects_in_its_namespace(
    tenant: Callable[..., Tenant], namespace: str
) -> None:
    me = tenant(namespace)
    for plural, build in BUILDERS.items():
        created = me.kube.create(path(plural, namespace), build("mine"))
        assert created["metadata"]["name"] == "mine"
        assert (
            me.kube.get(path(plural, namespace, "mine"))["metadata"]["uid"]
            == (created["metadata"]["uid"])
        )
        assert [o["metadata"]["name"] for o in me.kube.list(path(plural, namespace))] == ["mine"]
        patched = me.kube.patch(
            path(plural, namespace, "mine"), {"metadata": {"labels": {"team": "a"}}}
        )
        assert patched["metadata"]["labels"] == {"team": "a"}
        me.kube.delete(path(plural, namespace, "mine"), missing_ok=False)
        assert not me.kube.exists(path(plural, namespace, "mine"))
    # kubectl acting as the same user, in the kubeconfig's namespace.
    applied = me.kubectl(
        "create", "-f", "-", "-o", "name", input=json.dumps(finetunejob("by-kubectl"))
    )
    assert applied.stdout.strip() == "finetunejob.whetstone.dev/by-kubectl"
    listed = me.kubectl("get", "finetunejobs", "-o", "name")
    assert listed.stdout.split() == ["finetunejob.whetstone.dev/by-kubectl"]


def test_tenant_cannot_write_status(
    tenant: Callable[..., Tenant], kube: Kube, namespace: str
) -> None:
    me = tenant(namespace)
    for plural, build in BUILDERS.items():
        kube.create(path(plural, namespace), build("guarded"))
        status_path = path(plural, namespace, "guarded", "status")
        # Reading status is fine (view), writing it is the operator's alone.
        me.kube.get(status_path)
        forbidden(partial(me.kube.patch, status_path, {"status": {"phase": "Done"}}), me.user)
        forbidden(partial(me.kube.update_with_retry, status_path, without_status), me.user)
    # A forged verification and approval, as the operator would write them: nothing lands.
    guarded = path("modelversions", namespace, "guarded")
    before = kube.get(guarded)
    forbidden(
        lambda: me.kube.patch(
            f"{guarded}/status",
            {"status": {"phase": "Approved", "verifiedDigest": DIGEST, "approvedBy": "mallory"}},
        ),
        me.user,
    )
    after = kube.get(guarded)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after.get("status") == before.get("status")


# --------------------------------------------------------------------------- beyond it

POLICY = "platformpolicies"


def test_tenant_cannot_create_or_change_platform_policies(
    tenant: Callable[..., Tenant], kube: Kube, namespace: str
) -> None:
    me = tenant(namespace)
    name = f"tenancy-{secrets.token_hex(3)}"
    policy = {
        "apiVersion": API,
        "kind": "PlatformPolicy",
        "metadata": {"name": name},
        # Selects no namespace, so it governs nothing while it exists.
        "spec": {"namespaceSelector": {"matchLabels": {"whetstone.dev/tenancy-test": name}}},
    }
    forbidden(lambda: me.kube.create(path(POLICY, None), policy), me.user)
    denied = me.kubectl("create", "-f", "-", input=json.dumps(policy), check=False)
    assert denied.returncode != 0
    assert 'User "mallory" cannot create resource "platformpolicies"' in denied.stderr
    # The same object is valid: the platform team (admin) may create it.
    kube.create(path(POLICY, None), policy)
    try:
        forbidden(
            lambda: me.kube.patch(path(POLICY, None, name), {"spec": {"priority": 1000}}),
            me.user,
        )
        forbidden(lambda: me.kube.delete(path(POLICY, None, name)), me.user)
        forbidden(
            lambda: me.kube.patch(path(POLICY, None, name, "status"), {"status": {}}),
            me.user,
        )
        assert kube.get(path(POLICY, None, name))["spec"].get("priority", 0) == 0
    finally:
        kube.delete(path(POLICY, None, name))


def test_tenant_is_confined_to_its_namespace(
    tenant: Callable[..., Tenant], kube: Kube, namespace: str, other_namespace: str
) -> None:
    me = tenant(namespace)
    theirs = kube.create(path("finetunejobs", other_namespace), finetunejob("theirs"))
    there = path("finetunejobs", other_namespace, "theirs")
    forbidden(lambda: me.kube.get(there), me.user)
    forbidden(lambda: me.kube.list(path("finetunejobs", other_namespace)), me.user)
    forbidden(lambda: me.kube.list(path("finetunejobs", None)), me.user)
    forbidden(lambda: me.kube.patch(there, {"metadata": {"labels": {"owned": "mallory"}}}), me.user)
    forbidden(lambda: me.kube.delete(there), me.user)
    for plural, build in BUILDERS.items():
        forbidden(partial(me.kube.create, path(plural, other_namespace), build("planted")), me.user)
    after = kube.get(there)
    assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert kube.list(path("modelversions", other_namespace)) == []
    # The same requests in its own namespace are allowed: the denial is the namespace.
    me.kube.create(path("finetunejobs", namespace), finetunejob("theirs"))
    me.kube.list(path("finetunejobs", namespace))


# --------------------------------------------------------------------------- approving


def self_review(client: Kube, namespace: str) -> bool:
    """A SelfSubjectAccessReview sent by ``client`` itself: may it approve ModelVersions?"""
    review = client.create(
        f"/apis/{AUTHZ_API}/selfsubjectaccessreviews",
        {
            "apiVersion": AUTHZ_API,
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "approve",
                    "group": "whetstone.dev",
                    "resource": "modelversions",
                }
            },
        },
    )
    return bool(review["status"].get("allowed", False))


def test_only_approvers_may_approve(
    tenant: Callable[..., Tenant],
    approver: Callable[..., Tenant],
    sa_approver: Callable[..., Tenant],
    namespace: str,
    other_namespace: str,
) -> None:
    mallory = tenant(namespace)
    alice = approver(namespace)
    bot = sa_approver(namespace)
    assert bot.user == f"system:serviceaccount:{namespace}:release-bot"

    # As the admin asks on the operator's behalf (SubjectAccessReview).
    assert mallory.can("approve", "modelversions") is False
    assert alice.can("approve", "modelversions") is True
    assert bot.can("approve", "modelversions") is True
    assert alice.can("approve", "modelversions", namespace=other_namespace) is False
    assert bot.can("approve", "modelversions", namespace=other_namespace) is False
    # Approving is about ModelVersions only.
    assert alice.can("approve", "rollouts") is False

    # As each identity asks for itself, through its own credentials.
    assert self_review(mallory.kube, namespace) is False
    assert self_review(alice.kube, namespace) is True
    assert self_review(bot.kube, namespace) is True
    assert self_review(alice.kube, other_namespace) is False
    no = mallory.kubectl("auth", "can-i", "approve", "modelversions.whetstone.dev", check=False)
    assert (no.returncode, no.stdout.strip()) == (1, "no")
    yes = alice.kubectl("auth", "can-i", "approve", "modelversions.whetstone.dev", check=False)
    assert (yes.returncode, yes.stdout.strip()) == (0, "yes")

    # Both approvers also hold edit; the ServiceAccount acts with its own token.
    bot.kube.create(path("modelversions", namespace), modelversion("from-ci"))
    assert bot.kube.get(path("modelversions", namespace, "from-ci"))["spec"]["version"] == 1
    listed = bot.kubectl("get", "modelversions", "-o", "name")
    assert listed.stdout.split() == ["modelversion.whetstone.dev/from-ci"]
    forbidden(
        lambda: bot.kube.create(path("modelversions", other_namespace), modelversion("x")),
        bot.user,
    )
