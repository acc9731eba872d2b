"""Fixtures for the integration tier: one real control plane per test session.

The binaries come from ``hack/provision.py`` (``KUBEBUILDER_ASSETS``, then the
per-machine cache, else a build); a provisioning failure fails the run, it never
skips it.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

# cluster.py sits beside this file; make it importable however pytest was invoked.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import (
    CRD_DIR,
    ISVC_CRD,
    ControlPlane,
    KServe,
    Kube,
    Kubelet,
    OperatorFactory,
    OperatorProcess,
    chart_rbac_applied,
    make_temp_dir,
    operator_argv,
    operator_running,
    remove_temp_dir,
    start_control_plane,
)
from provision import ProvisionError, Toolchain, provision  # hack/, put on sys.path by cluster
from tenancy import APPROVER_ROLE, Tenant, install_user_roles, service_account_tenant, user_tenant

_started: list[ControlPlane] = []


def crd_files() -> list[Path]:
    files = sorted(CRD_DIR.glob("*.yaml"))
    if not files:
        pytest.fail(
            f"no CRDs in {CRD_DIR}: generate them first (python -m whetstone_operator.crdgen)",
            pytrace=False,
        )
    return [*files, ISVC_CRD]


@pytest.fixture(scope="session")
def toolchain() -> Toolchain:
    try:
        return provision()
    except ProvisionError as exc:
        pytest.fail(f"provisioning the control plane failed:\n{exc}", pytrace=False)


@pytest.fixture(scope="session")
def control_plane(toolchain: Toolchain) -> Iterator[ControlPlane]:
    try:
        plane = start_control_plane(toolchain, crd_files())
    except Exception as exc:
        pytest.fail(f"control plane did not start: {exc}", pytrace=False)
    _started.append(plane)
    try:
        install_user_roles(plane)
    except Exception as exc:
        plane.stop()
        pytest.fail(f"the chart's user ClusterRoles did not aggregate: {exc}", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    """Admin (system:masters) API client."""
    return control_plane.admin


@pytest.fixture(scope="session")
def admin_kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.admin_kubeconfig


@pytest.fixture(scope="session")
def sa_kubeconfig(control_plane: ControlPlane) -> Callable[[str, str], Path]:
    """``sa_kubeconfig(namespace, name)`` -> kubeconfig for that ServiceAccount
    (created if missing; token from the TokenRequest API)."""
    return control_plane.sa_kubeconfig


@pytest.fixture(scope="session")
def kubelet(kube: Kube) -> Kubelet:
    return Kubelet(kube)


@pytest.fixture(scope="session")
def kserve(kube: Kube) -> KServe:
    return KServe(kube)


@pytest.fixture(scope="session")
def tenant(control_plane: ControlPlane) -> Callable[..., Tenant]:
    """``tenant(namespace, user="mallory", groups=("tenants",))``: ``user`` holding the
    built-in ``edit`` role in ``namespace`` (a RoleBinding), as tenants really get it; the
    :class:`Tenant` acts as that user (``.kube``, ``.kubeconfig``, ``.kubectl(...)``)."""

    def make(namespace: str, user: str = "mallory", groups: Sequence[str] = ("tenants",)) -> Tenant:
        return user_tenant(control_plane, namespace, user, groups)

    return make


@pytest.fixture(scope="session")
def approver(control_plane: ControlPlane) -> Callable[..., Tenant]:
    """``approver(namespace, user="alice", groups=("reviewers",))``: like ``tenant`` and also
    bound to the chart's ``whetstone-approver`` ClusterRole in ``namespace``."""

    def make(namespace: str, user: str = "alice", groups: Sequence[str] = ("reviewers",)) -> Tenant:
        return user_tenant(control_plane, namespace, user, groups, ("edit", APPROVER_ROLE))

    return make


@pytest.fixture(scope="session")
def sa_approver(control_plane: ControlPlane) -> Callable[..., Tenant]:
    """``sa_approver(namespace, name="release-bot")``: a ServiceAccount of ``namespace`` bound
    to ``edit`` and ``whetstone-approver`` there, acting with its own TokenRequest token."""

    def make(namespace: str, name: str = "release-bot") -> Tenant:
        return service_account_tenant(control_plane, namespace, name)

    return make


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards."""
    control_plane.check_alive()
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem or 't'}-{secrets.token_hex(3)}"
    control_plane.create_namespace(name)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            control_plane.delete_namespace(name)


@pytest.fixture
def operator_process(control_plane: ControlPlane) -> Iterator[OperatorFactory]:
    """Factory: ``operator_process(kubeconfig, args=(), env=None, argv=None)`` starts the
    operator (``python -m whetstone_operator`` unless ``argv`` is given) as a subprocess
    with KUBECONFIG set; every started operator is stopped (SIGTERM, then SIGKILL)
    at teardown. On a test failure the operator's log is attached to the report."""
    logs = make_temp_dir("whetstone-op-")
    with contextlib.ExitStack() as stack:
        started: list[OperatorProcess] = []

        def start(
            kubeconfig: Path,
            *,
            args: Sequence[str] = (),
            env: Mapping[str, str] | None = None,
            argv: Sequence[str] | None = None,
        ) -> OperatorProcess:
            log = logs / f"operator-{len(started)}.log"
            op = stack.enter_context(
                operator_running(kubeconfig, log, argv=argv or operator_argv(args), env=env)
            )
            started.append(op)
            return op

        try:
            yield start
        finally:
            for i, op in enumerate(started):
                print(f"--- operator {i} log (tail) ---\n{op.process.tail(60)}")
    remove_temp_dir(logs)


@pytest.fixture
def operator_rbac(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """The Helm chart's ServiceAccount and RBAC in ``namespace``; yields the account."""
    with chart_rbac_applied(control_plane, f"op-{namespace[-6:]}", namespace) as (account, _):
        yield account


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for plane in _started:
        t = plane.timings
        terminalreporter.write_line(
            f"control plane: etcd {t.etcd:.1f}s, kube-apiserver {t.apiserver:.1f}s, "
            f"CRDs {t.crds:.1f}s, kube-controller-manager {t.controller_manager:.1f}s, "
            f"total {t.total:.1f}s"
        )
        rss, peak = plane.last_rss, plane.peak_rss
        if any(rss.values()):
            terminalreporter.write_line(
                "control plane memory (RSS at end / peak): "
                + ", ".join(
                    f"{name} {rss[name] / 2**20:.0f}/{peak.get(name, 0) / 2**20:.0f} MiB"
                    for name in rss
                )
            )
