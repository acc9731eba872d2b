"""ModelVersion on the real control plane: verify pod, gates, and approvals through the
operator's admission webhook (SubjectAccessReview on the `approve` verb, signed record)."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from cluster import (
    ApiError,
    ControlPlane,
    Kube,
    Kubelet,
    OperatorFactory,
    chart_rbac_applied,
    resource_path,
    wait_for,
    webhook_operator_running,
)
from tests.conftest import REPO_ROOT

API = "whetstone.dev/v1alpha1"
SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/modelversion.yaml").read_text())
DIGEST = SAMPLE["spec"]["artifact"]["digest"]


def mv_path(ns: str, name: str | None = None) -> str:
    return resource_path(API, "modelversions", ns, name)


@pytest.fixture
def chart_rbac(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """The chart's RBAC with the webhook enabled (so it includes webhook permissions)."""
    values = [
        "webhook.enabled=true",
        "webhook.configurations=operator",
        f"webhook.configurationName=test-{namespace[-6:]}.whetstone.dev",
    ]
    with chart_rbac_applied(control_plane, f"mv-{namespace[-6:]}", namespace, values) as rbac:
        yield rbac[0]


@pytest.fixture
def operator_with_webhook(
    control_plane: ControlPlane,
    namespace: str,
    chart_rbac: str,
    operator_process: OperatorFactory,
) -> Iterator[Any]:
    with webhook_operator_running(
        control_plane,
        operator_process,
        control_plane.sa_kubeconfig(namespace, chart_rbac),
        namespace,
        f"test-{namespace[-6:]}.whetstone.dev",
        {"WHETSTONE_RESYNC_SECONDS": "1", "WHETSTONE_APPROVAL_KEY": "integration-key"},
    ) as op:
        yield op


def user_with_rights(
    control_plane: ControlPlane, namespace: str, user: str, approver: bool
) -> None:
    """`user` may get/list/patch ModelVersions; with approver, also bound to whetstone-approver."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": f"{user}-edit", "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["whetstone.dev"],
                    "resources": ["modelversions"],
                    "verbs": ["get", "list", "watch", "patch", "update"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{user}-edit", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{user}-edit",
            },
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
        },
    ]
    if approver:
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"{user}-approver", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "whetstone-approver",
                },
                "subjects": [
                    {"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}
                ],
            }
        )
    control_plane.apply(yaml.safe_dump_all(docs))


def annotate_as(
    control_plane: ControlPlane, ns: str, name: str, user: str, annotation: str
) -> subprocess.CompletedProcess[str]:
    return control_plane.kubectl(
        "annotate",
        "modelversion",
        name,
        "-n",
        ns,
        annotation,
        "--as",
        user,
        "--as-group",
        "system:authenticated",
        check=False,
    )


def wait_phase(kube: Kube, ns: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = kube.get(mv_path(ns, name))
        return obj if (obj.get("status") or {}).get("phase") == phase else None

    return wait_for(check, timeout=timeout, what=f"ModelVersion {name} {phase}")


def finish_verify(kubelet: Kubelet, ns: str, name: str, ok: bool, digest: str = DIGEST) -> None:
    (pod,) = kubelet.wait_job_pods(ns, f"{name}-verify")
    if ok:
        kubelet.succeed(
            ns, pod["metadata"]["name"], message=json.dumps({"ok": True, "digest": digest})
        )
    else:
        kubelet.fail(
            ns,
            pod["metadata"]["name"],
            message=json.dumps({"ok": False, "digest": digest, "problems": ["digest mismatch"]}),
            exit_code=4,
        )


def version(name: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(SAMPLE)
    body["metadata"] = {"name": name}
    body["spec"].update(changes)
    return body


def test_verified_then_approved_by_an_approver_only(
    control_plane: ControlPlane,
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    operator_with_webhook: Any,
) -> None:
    ns, name = namespace, "grader-v4"
    user_with_rights(control_plane, ns, "alice", approver=True)
    user_with_rights(control_plane, ns, "bob", approver=False)
    kube.create(mv_path(ns), version(name))
    finish_verify(kubelet, ns, name, ok=True)
    obj = wait_phase(kube, ns, name, "Verified")
    assert [g["passed"] for g in obj["status"]["gateResults"]] == [True, True]

    denied = annotate_as(control_plane, ns, name, "bob", "whetstone.dev/approve=true")
    assert denied.returncode != 0
    assert "bob may not approve" in denied.stderr and "whetstone-approver" in denied.stderr

    forged = control_plane.kubectl(
        "annotate",
        "modelversion",
        name,
        "-n",
        ns,
        'whetstone.dev/approval={"by":"bob","at":"2026-01-01T00:00:00Z","sig":"x"}',
        check=False,
    )
    assert forged.returncode != 0 and "written only by the approval webhook" in forged.stderr

    allowed = annotate_as(control_plane, ns, name, "alice", "whetstone.dev/approve=true")
    assert allowed.returncode == 0, allowed.stderr
    obj = wait_phase(kube, ns, name, "Approved")
    assert obj["status"]["approvedBy"] == "alice"
    assert obj["status"]["approvedAt"]
    assert "whetstone.dev/approve" not in obj["metadata"].get("annotations", {})

    # A status write cannot forge an approval: the operator recomputes it from the signature.
    revoked = annotate_as(control_plane, ns, name, "alice", "whetstone.dev/revoke=true")
    assert revoked.returncode == 0, revoked.stderr
    obj = wait_phase(kube, ns, name, "Verified")
    assert "approvedBy" not in obj["status"] or obj["status"]["approvedBy"] is None


def test_artifact_is_immutable(
    kube: Kube, kubelet: Kubelet, namespace: str, operator_with_webhook: Any
) -> None:
    ns, name = namespace, "grader-v5"
    kube.create(mv_path(ns), version(name))
    with pytest.raises(ApiError) as info:
        kube.patch(mv_path(ns, name), {"spec": {"artifact": {"uri": "s3://elsewhere/"}}})
    assert "spec.artifact is immutable" in str(info.value)


def test_bad_spec_is_refused_at_apply(
    kube: Kube, namespace: str, operator_with_webhook: Any
) -> None:
    body = version("bad-gate", gates=[{"metric": "exactMatch"}])
    with pytest.raises(ApiError) as info:
        kube.create(mv_path(namespace), body)
    assert "gate on exactMatch has no bound" in str(info.value)


def test_wrong_digest_and_failing_gate_are_rejected(
    kube: Kube, kubelet: Kubelet, namespace: str, operator_with_webhook: Any
) -> None:
    ns = namespace
    kube.create(mv_path(ns), version("wrong-digest"))
    finish_verify(kubelet, ns, "wrong-digest", ok=False, digest="sha256:" + "0" * 64)
    obj = wait_phase(kube, ns, "wrong-digest", "Rejected")
    cond = next(c for c in obj["status"]["conditions"] if c["type"] == "ArtifactVerified")
    assert cond["status"] == "False" and "mismatch" in cond["message"]

    kube.create(mv_path(ns), version("low-score", gates=[{"metric": "exactMatch", "min": 0.95}]))
    finish_verify(kubelet, ns, "low-score", ok=True)
    obj = wait_phase(kube, ns, "low-score", "Rejected")
    assert obj["status"]["gateResults"] == [
        {"metric": "exactMatch", "value": 0.86, "passed": False, "message": "0.86 < min 0.95"}
    ]


def test_forged_status_is_undone_and_versions_list_by_label(
    control_plane: ControlPlane,
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    operator_with_webhook: Any,
) -> None:
    ns, name = namespace, "grader-v6"
    kube.create(mv_path(ns), version(name))
    finish_verify(kubelet, ns, name, ok=True)
    wait_phase(kube, ns, name, "Verified")
    # Someone with write access to the status subresource claims an approval...
    kube.patch(
        mv_path(ns, name) + "/status",
        {
            "status": {
                "phase": "Approved",
                "approvedBy": "mallory",
                "approvedAt": "2026-01-01T00:00:00Z",
            }
        },
    )
    # ...and the operator, which trusts only a signed approval, puts the truth back.
    obj = wait_phase(kube, ns, name, "Verified")
    assert obj["status"].get("approvedBy") is None

    table = control_plane.kubectl("get", "mv", "-n", ns, "-l", "whetstone.dev/model=grader").stdout
    assert name in table and "Verified" in table, table


def test_operator_restart_during_verification_duplicates_nothing(
    control_plane: ControlPlane,
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    operator_rbac: str,
    operator_process: OperatorFactory,
) -> None:
    ns, name = namespace, "grader-v7"
    config = control_plane.sa_kubeconfig(ns, operator_rbac)
    env = {"WHETSTONE_RESYNC_SECONDS": "1"}
    op = operator_process(config, args=["--namespace", ns], env=env)
    kube.create(mv_path(ns), version(name))
    kubelet.wait_job_pods(ns, f"{name}-verify")
    op.process.signal_group(9)
    op.process.popen.wait(10)
    operator_process(config, args=["--namespace", ns], env=env)
    finish_verify(kubelet, ns, name, ok=True)
    obj = wait_phase(kube, ns, name, "Verified")
    assert obj["status"]["verifiedDigest"] == DIGEST
    jobs = kube.list(resource_path("batch/v1", "jobs", ns))
    assert [j["metadata"]["name"] for j in jobs] == [f"{name}-verify"]
