"""Tenants as users really get them: the built-in ``edit`` role (filled with Whetstone's
verbs by ClusterRole aggregation from the chart's user roles), bound per namespace,
and the chart's ``whetstone-approver`` on top for reviewers.

A :class:`Tenant` acts as its identity through a :class:`Kube` client and a kubeconfig
(impersonation with the admin token for users, a TokenRequest token for
ServiceAccounts), so every answer is the API server's own RBAC decision.
:func:`platform_policy` is the other side: the PlatformPolicy the platform team writes for
a tenant's namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import yaml

from cluster import (
    ApiError,
    ControlPlane,
    Kube,
    render_chart_user_roles,
    resource_path,
    wait_for,
)

RBAC_API = "rbac.authorization.k8s.io/v1"
AUTHZ_API = "authorization.k8s.io/v1"
GROUP = "whetstone.dev"
APPROVER_ROLE = "whetstone-approver"
AUTHENTICATED = "system:authenticated"
# What `edit` must allow on each Whetstone kind once aggregation has run: reads come
# through `view` (itself aggregated into `edit`), writes from the chart's aggregate-to-edit.
EDIT_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})
WHETSTONE_KINDS = ("finetunejobs", "modelversions", "rollouts")


@dataclasses.dataclass(frozen=True)
class Tenant:
    """One identity acting in ``namespace``: its own client, kubeconfig and kubectl."""

    user: str
    groups: tuple[str, ...]
    namespace: str
    kube: Kube
    kubeconfig: Path
    plane: ControlPlane

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> CompletedProcess[str]:
        """kubectl as this identity (its kubeconfig's context is ``namespace``)."""
        return self.plane.kubectl(
            *args, kubeconfig=self.kubeconfig, input=input, check=check, timeout=timeout
        )

    def can(
        self,
        verb: str,
        resource: str,
        *,
        namespace: str | None = None,
        group: str = GROUP,
        subresource: str = "",
        name: str = "",
    ) -> bool:
        """The API server's RBAC answer for this identity (a SubjectAccessReview as admin)."""
        return access_allowed(
            self.plane.admin,
            self.user,
            self.groups,
            verb,
            resource,
            namespace=self.namespace if namespace is None else namespace,
            group=group,
            subresource=subresource,
            name=name,
        )


def access_allowed(
    admin: Kube,
    user: str,
    groups: Sequence[str],
    verb: str,
    resource: str,
    *,
    namespace: str = "",
    group: str = GROUP,
    subresource: str = "",
    name: str = "",
) -> bool:
    """Whether ``user`` in ``groups`` may ``verb`` the resource, per a SubjectAccessReview."""
    attributes = {
        "namespace": namespace,
        "verb": verb,
        "group": group,
        "resource": resource,
        "subresource": subresource,
        "name": name,
    }
    review = admin.create(
        f"/apis/{AUTHZ_API}/subjectaccessreviews",
        {
            "apiVersion": AUTHZ_API,
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": list(groups),
                "resourceAttributes": {k: v for k, v in attributes.items() if v},
            },
        },
    )
    return bool(review["status"].get("allowed", False))


def role_verbs(admin: Kube, cluster_role: str, resource: str, group: str = GROUP) -> set[str]:
    """Verbs that the ClusterRole's current rules grant on ``resource`` of ``group``."""
    role = admin.get(resource_path(RBAC_API, "clusterroles", name=cluster_role))
    verbs: set[str] = set()
    for rule in role.get("rules") or []:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs |= set(rule.get("verbs", []))
    return verbs


def install_user_roles(plane: ControlPlane, *, timeout: float = 60) -> list[str]:
    """Apply the chart's user ClusterRoles; return once aggregation has filled ``edit``
    (and through it ``admin``) with every Whetstone verb. Returns the roles' names."""
    roles = render_chart_user_roles(plane.tools.helm)
    if not roles:
        raise RuntimeError("charts/whetstone renders no user ClusterRoles (rbac-users.yaml)")
    plane.apply(yaml.safe_dump_all(roles))

    def aggregated() -> bool:
        return all(
            role_verbs(plane.admin, role, kind) >= EDIT_VERBS
            for role in ("edit", "admin")
            for kind in WHETSTONE_KINDS
        )

    wait_for(
        aggregated,
        timeout=timeout,
        what=f"ClusterRoles edit and admin aggregating {sorted(EDIT_VERBS)} on {WHETSTONE_KINDS}",
    )
    return [role["metadata"]["name"] for role in roles]


def _object_name(*parts: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", "-".join(parts).lower()).strip("-.")[:253]


def bind_cluster_role(
    plane: ControlPlane, namespace: str, cluster_role: str, subject: dict[str, str]
) -> None:
    """A RoleBinding of ``cluster_role`` to ``subject`` in ``namespace`` (idempotent)."""
    binding = {
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": {
            "name": _object_name(cluster_role, subject["kind"], subject["name"]),
            "namespace": namespace,
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role,
        },
        "subjects": [subject],
    }
    try:
        plane.admin.create(resource_path(RBAC_API, "rolebindings", namespace), binding)
    except ApiError as exc:
        if exc.status != 409:
            raise


def user_tenant(
    plane: ControlPlane,
    namespace: str,
    user: str,
    groups: Sequence[str] = (),
    roles: Sequence[str] = ("edit",),
) -> Tenant:
    """``user`` bound to ``roles`` (ClusterRoles) in ``namespace``, acting by impersonation.

    Impersonating groups replaces the ones the server would add, so
    ``system:authenticated`` is added here, as a real login would have it.
    """
    for role in roles:
        bind_cluster_role(
            plane,
            namespace,
            role,
            {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user},
        )
    all_groups = tuple(dict.fromkeys([*groups, AUTHENTICATED]))
    kubeconfig = plane.impersonating_kubeconfig(
        plane.workdir / f"user-{_object_name(namespace, user)}.kubeconfig",
        user,
        all_groups,
        namespace,
    )
    return Tenant(
        user, all_groups, namespace, plane.impersonating(user, all_groups), kubeconfig, plane
    )


def service_account_tenant(
    plane: ControlPlane,
    namespace: str,
    name: str,
    roles: Sequence[str] = ("edit", APPROVER_ROLE),
) -> Tenant:
    """ServiceAccount ``name`` in ``namespace`` bound to ``roles`` there, acting with its own
    TokenRequest token."""
    plane.ensure_service_account(namespace, name)
    for role in roles:
        bind_cluster_role(
            plane,
            namespace,
            role,
            {"kind": "ServiceAccount", "name": name, "namespace": namespace},
        )
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED)
    return Tenant(
        f"system:serviceaccount:{namespace}:{name}",
        groups,
        namespace,
        plane.sa_client(namespace, name),
        plane.sa_kubeconfig(namespace, name),
        plane,
    )


POLICY_API = "whetstone.dev/v1alpha1"
POLICY_LABEL = "whetstone.dev/test-policy"


def policy_path(name: str | None = None) -> str:
    return resource_path(POLICY_API, "platformpolicies", None, name)


@contextlib.contextmanager
def platform_policy(
    admin: Kube, namespace: str, spec: Mapping[str, Any], prefix: str = "p"
) -> Iterator[str]:
    """The platform team's PlatformPolicy `<prefix>-<namespace>` for `namespace` alone
    (selected by a label it puts on the namespace, above the default's priority): yields its
    name and deletes it afterwards (it is cluster-scoped)."""
    name = f"{prefix}-{namespace}"[:63]
    admin.patch(
        resource_path("v1", "namespaces", name=namespace),
        {"metadata": {"labels": {POLICY_LABEL: namespace}}},
    )
    admin.create(
        policy_path(),
        {
            "apiVersion": POLICY_API,
            "kind": "PlatformPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {POLICY_LABEL: namespace}},
                "priority": 100,
                **spec,
            },
        },
    )
    try:
        yield name
    finally:
        admin.delete(policy_path(name))
