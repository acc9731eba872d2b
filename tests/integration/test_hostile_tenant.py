"""A hostile tenant on the real control plane: one team with the built-in `edit` role (as users
really get it: ClusterRole aggregation), one shared operator with its admission webhook. Each
test is one attempt to skip governance; each must be refused or have no effect, with a
condition (or an admission error) naming the rule, and nothing served that was not approved as
served.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterator
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
from tenancy import Tenant, platform_policy, policy_path
from test_rollout import VerifyPods
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

API = "whetstone.dev/v1alpha1"
ISVC_API = "serving.kserve.io/v1beta1"
MV_SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/modelversion.yaml").read_text())
FTJ_SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/finetunejob.yaml").read_text())
DIGEST = MV_SAMPLE["spec"]["artifact"]["digest"]
# The GPU nodes' taint: the platform's policy gives trainer pods its toleration.
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def mv_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    return resource_path(API, "modelversions", ns, name, sub)


def version(name: str, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(MV_SAMPLE)
    body["metadata"] = {"name": name}
    body["spec"].update(changes)
    return body


def status_of(kube: Kube, path: str) -> dict[str, Any]:
    return kube.get(path).get("status") or {}


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def wait_status(
    kube: Kube, path: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = status_of(kube, path)
        return status if check(status) else None

    try:
        return wait_for(probe, timeout=timeout, what=what)
    except TimeoutError:
        pytest.fail(f"{what}: never; status is {json.dumps(status_of(kube, path))[:2000]}")


def finish_verify(kubelet: Kubelet, ns: str, name: str, digest: str = DIGEST) -> None:
    (pod,) = kubelet.wait_job_pods(ns, f"{name}-verify")
    kubelet.succeed(ns, pod["metadata"]["name"], message=json.dumps({"ok": True, "digest": digest}))


def verified(kube: Kube, kubelet: Kubelet, ns: str, name: str) -> dict[str, Any]:
    finish_verify(kubelet, ns, name)
    return wait_status(
        kube, mv_path(ns, name), lambda s: s.get("phase") == "Verified", f"{name} Verified"
    )


def annotate(who: Tenant, ns: str, name: str, annotation: str) -> Any:
    return who.kubectl("annotate", "modelversion", name, "-n", ns, annotation, check=False)


def events(kube: Kube, ns: str, name: str) -> list[str]:
    items = kube.list(resource_path("v1", "events", ns))
    return [e["reason"] for e in items if e["involvedObject"]["name"] == name]


@contextlib.contextmanager
def governing(kube: Kube, ns: str, spec: dict[str, Any]) -> Iterator[str]:
    """The platform team's PlatformPolicy for `ns`, once the operator reports it governs the
    namespace."""
    with platform_policy(kube, ns, spec) as name:
        path = policy_path(name)
        wait_status(kube, path, lambda s: ns in (s.get("namespaces") or []), f"{name} governs {ns}")
        yield name


@pytest.fixture
def operator(
    control_plane: ControlPlane, namespace: str, operator_process: OperatorFactory
) -> Iterator[Any]:
    """The operator (chart RBAC) with its admission webhook, for `namespace`."""
    values = [
        "webhook.enabled=true",
        "webhook.configurations=operator",
        f"webhook.configurationName=hostile-{namespace[-6:]}.whetstone.dev",
    ]
    with (
        chart_rbac_applied(control_plane, f"ht-{namespace[-6:]}", namespace, values) as (acct, _),
        webhook_operator_running(
            control_plane,
            operator_process,
            control_plane.sa_kubeconfig(namespace, acct),
            namespace,
            f"hostile-{namespace[-6:]}.whetstone.dev",
            {"WHETSTONE_RESYNC_SECONDS": "1"},
        ) as op,
    ):
        yield op


def create_service(kube: Kube, ns: str, opted_in: str | None = "grader") -> str:
    """An InferenceService serving v1, made by its owner (the admin here: the tenant has no
    rights on InferenceServices), opted in to Rollout `opted_in`."""
    annotations = {"whetstone.dev/rollout": opted_in} if opted_in else {}
    kube.create(
        resource_path(ISVC_API, "inferenceservices", ns),
        {
            "apiVersion": ISVC_API,
            "kind": "InferenceService",
            "metadata": {"name": "grader", "annotations": annotations},
            "spec": {
                "predictor": {
                    "model": {
                        "modelFormat": {"name": "huggingface"},
                        "storageUri": "s3://models/grader/v1/",
                    }
                }
            },
        },
    )
    return resource_path(ISVC_API, "inferenceservices", ns, "grader")


def rollout(kube: Kube, ns: str, model_version: str) -> str:
    kube.create(
        resource_path(API, "rollouts", ns),
        {
            "apiVersion": API,
            "kind": "Rollout",
            "metadata": {"name": "grader"},
            "spec": {
                "modelVersion": model_version,
                "inferenceService": {"name": "grader"},
                "strategy": {
                    "canary": {"steps": [{"setWeight": 5}, {"pause": {}}, {"setWeight": 100}]}
                },
            },
        },
    )
    return resource_path(API, "rollouts", ns, "grader")


def untouched(admin: Kube, service: str, seconds: float = 3.0) -> None:
    """The InferenceService keeps serving v1 with no canary for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        predictor = admin.get(service)["spec"]["predictor"]
        assert "canaryTrafficPercent" not in predictor, predictor
        assert predictor["model"]["storageUri"] == "s3://models/grader/v1/", predictor
        time.sleep(0.5)


# --------------------------------------------------------------------------- approvals


def test_approval_switched_off_by_the_tenant_serves_nothing(
    kube: Kube, kubelet: Kubelet, namespace: str, tenant: Callable[..., Tenant], operator: Any
) -> None:
    ns, mallory = namespace, tenant(namespace)
    mallory.kube.create(mv_path(ns), version("off-at-birth", approval={"required": False}))
    mallory.kube.create(mv_path(ns), version("off-later"))
    for name in ("off-at-birth", "off-later"):
        verified(kube, kubelet, ns, name)
    mallory.kube.patch(mv_path(ns, "off-later"), {"spec": {"approval": {"required": False}}})
    service = create_service(kube, ns)
    ro = rollout(mallory.kube, ns, "off-later")
    status = wait_status(
        kube,
        ro,
        lambda s: condition(s, "ModelVersionReady").get("reason") == "ModelVersionNotApproved",
        "the Rollout refuses the unapproved version",
    )
    assert "approve it first" in condition(status, "ModelVersionReady")["message"]
    for name in ("off-at-birth", "off-later"):
        mv = status_of(kube, mv_path(ns, name))
        assert mv["phase"] == "Verified", mv
        approved = condition(mv, "Approved")
        assert approved["status"] == "False" and "waiting for an approver" in approved["message"]
    untouched(kube, service)


def test_edits_after_approval_revoke_it(
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    tenant: Callable[..., Tenant],
    approver: Callable[..., Tenant],
    operator: Any,
) -> None:
    ns, mallory, alice = namespace, tenant(namespace), approver(namespace)
    mallory.kube.create(mv_path(ns), version("grader-v4"))
    verified(kube, kubelet, ns, "grader-v4")
    edits = {
        "gates": {"gates": [{"metric": "exactMatch", "min": 0.1}]},
        "metrics": {"metrics": {**MV_SAMPLE["spec"]["metrics"], "exactMatch": 0.99}},
        "base model": {"baseModel": {"uri": "hf://someone/else"}},
    }
    for what, change in edits.items():
        assert annotate(alice, ns, "grader-v4", "whetstone.dev/approve=true").returncode == 0
        wait_status(kube, mv_path(ns, "grader-v4"), lambda s: s.get("phase") == "Approved", what)
        mallory.kube.patch(mv_path(ns, "grader-v4"), {"spec": change})
        status = wait_status(
            kube,
            mv_path(ns, "grader-v4"),
            lambda s: condition(s, "Approved").get("reason") == "ChangedAfterApproval",
            f"{what} edited after approval revokes it",
        )
        assert status["phase"] == "Verified" and not status.get("approvedBy"), status
    assert "ChangedAfterApproval" in events(kube, ns, "grader-v4")


def test_a_forged_status_is_not_trusted_by_the_rollout(
    kube: Kube, kubelet: Kubelet, namespace: str, tenant: Callable[..., Tenant], operator: Any
) -> None:
    """Whoever holds modelversions/status (here the admin, as a compromised controller would)
    writes an Approved status with a verification record: no signature holds, nothing serves."""
    ns, mallory = namespace, tenant(namespace)
    mallory.kube.create(mv_path(ns), version("forged"))
    service = create_service(kube, ns)
    forged = {
        "phase": "Approved",
        "verifiedDigest": DIGEST,
        "verification": {"digest": DIGEST, "at": "2026-11-27T00:00:00Z", "sig": "forged"},
        "approvedBy": "alice",
        "approvals": [{"user": "alice", "time": "2026-11-27T00:00:00Z"}],
        "conditions": [
            {"type": t, "status": "True", "reason": "Forged", "message": "forged"}
            for t in ("ArtifactVerified", "GatesPassed", "Approved")
        ],
    }
    kube.patch(mv_path(ns, "forged", "status"), {"status": forged})
    ro = rollout(mallory.kube, ns, "forged")
    status = wait_status(
        kube,
        ro,
        lambda s: condition(s, "ModelVersionReady").get("reason") == "ModelVersionNotVerified",
        "the Rollout refuses a version without a signed verification",
    )
    assert status["phase"] == "Pending", status
    untouched(kube, service)
    mv = wait_status(
        kube, mv_path(ns, "forged"), lambda s: s.get("phase") == "Pending", "the forgery undone"
    )
    assert not mv.get("approvedBy") and "verification" not in mv


def test_a_pre_created_verify_job_and_forged_pods_verify_nothing(
    kube: Kube, kubelet: Kubelet, namespace: str, tenant: Callable[..., Tenant], operator: Any
) -> None:
    ns, mallory = namespace, tenant(namespace)
    result = json.dumps({"ok": True, "digest": DIGEST})
    # A Job that merely succeeds, under the name the operator would give the verify Job, with
    # every label the operator's own carries.
    labels = {"app.kubernetes.io/managed-by": "whetstone", "whetstone.dev/modelversion": "squat"}
    mallory.kube.create(
        resource_path("batch/v1", "jobs", ns),
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "squat-verify", "labels": labels},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "verify", "image": "busybox"}],
                    },
                },
            },
        },
    )
    (pod,) = kubelet.wait_job_pods(ns, "squat-verify")
    kubelet.succeed(ns, pod["metadata"]["name"], message=result)
    mallory.kube.create(mv_path(ns), version("squat"))
    status = wait_status(
        kube,
        mv_path(ns, "squat"),
        lambda s: condition(s, "ChildConflict").get("status") == "True",
        "the squatted verify Job is reported",
    )
    assert "not owned" in condition(status, "ChildConflict")["message"]
    assert condition(status, "ArtifactVerified").get("status") != "True"

    # A pod claiming to be the verify pod of another version (its labels, a result with the
    # right digest) while the real verify pod has not finished.
    mallory.kube.create(mv_path(ns), version("forged-pod"))
    kubelet.wait_job_pods(ns, "forged-pod-verify")
    fake = mallory.kube.create(
        resource_path("v1", "pods", ns),
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "forged-pod-verify-x",
                "labels": {"job-name": "forged-pod-verify", **labels},
            },
            "spec": {"restartPolicy": "Never", "containers": [{"name": "v", "image": "busybox"}]},
        },
    )
    kubelet.succeed(ns, fake["metadata"]["name"], message=result)
    time.sleep(3)
    for name in ("squat", "forged-pod"):
        mv = status_of(kube, mv_path(ns, name))
        assert mv.get("phase") == "Pending" and "verification" not in mv, (name, mv)
    assert "ChildConflict" in events(kube, ns, "squat")


def test_service_account_and_self_approvals_are_refused(
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    approver: Callable[..., Tenant],
    sa_approver: Callable[..., Tenant],
    operator: Any,
) -> None:
    ns, alice, bot = namespace, approver(namespace), sa_approver(namespace)
    alice.kube.create(mv_path(ns), version("alices-own"))
    verified(kube, kubelet, ns, "alices-own")
    # A GitOps controller syncing an approve annotation from Git is not a person.
    refused = bot.kubectl(
        "annotate",
        "modelversion",
        "alices-own",
        "-n",
        ns,
        "whetstone.dev/approve=true",
        check=False,
    )
    assert refused.returncode != 0
    assert "spec.approval.allowServiceAccounts is false" in refused.stderr, refused.stderr
    own = annotate(alice, ns, "alices-own", "whetstone.dev/approve=true")
    assert own.returncode != 0 and "spec.approval.forbidSelfApproval" in own.stderr, own.stderr
    mv = status_of(kube, mv_path(ns, "alices-own"))
    assert mv["phase"] == "Verified" and not mv.get("approvals"), mv


def test_two_person_rule(
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    tenant: Callable[..., Tenant],
    approver: Callable[..., Tenant],
    operator: Any,
) -> None:
    ns, mallory = namespace, tenant(namespace)
    alice, bob = approver(ns, "alice"), approver(ns, "bob")
    with governing(kube, ns, {"approval": {"minApprovers": 2}}) as policy:
        mallory.kube.create(mv_path(ns), version("grader-v5"))
        verified(kube, kubelet, ns, "grader-v5")
        assert annotate(alice, ns, "grader-v5", "whetstone.dev/approve=true").returncode == 0
        waiting = wait_status(
            kube,
            mv_path(ns, "grader-v5"),
            lambda s: condition(s, "Approved").get("reason") == "AwaitingApprovers",
            "one of two approvals",
        )
        message = condition(waiting, "Approved")["message"]
        assert (
            "1 of 2" in message and f"PlatformPolicy {policy} spec.approval.minApprovers" in message
        )
        # The same person twice is still one person.
        assert annotate(alice, ns, "grader-v5", "whetstone.dev/approve=true").returncode == 0
        time.sleep(2)
        assert status_of(kube, mv_path(ns, "grader-v5"))["phase"] == "Verified"
        assert annotate(bob, ns, "grader-v5", "whetstone.dev/approve=true").returncode == 0
        done = wait_status(
            kube, mv_path(ns, "grader-v5"), lambda s: s.get("phase") == "Approved", "two approvals"
        )
        assert sorted(a["user"] for a in done["approvals"]) == ["alice", "bob"]
        assert all(a["time"] for a in done["approvals"])


def test_a_rollout_drives_only_a_service_that_opted_in(
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    tenant: Callable[..., Tenant],
    approver: Callable[..., Tenant],
    operator: Any,
) -> None:
    ns, mallory, alice = namespace, tenant(namespace), approver(namespace)
    mallory.kube.create(mv_path(ns), version("grader-v6"))
    verified(kube, kubelet, ns, "grader-v6")
    assert annotate(alice, ns, "grader-v6", "whetstone.dev/approve=true").returncode == 0
    service = create_service(kube, ns, opted_in=None)
    ro = rollout(mallory.kube, ns, "grader-v6")
    status = wait_status(
        kube,
        ro,
        lambda s: condition(s, "TargetOptedIn").get("reason") == "NotOptedIn",
        "the Rollout waits for the service to opt in",
    )
    assert "whetstone.dev/rollout=grader" in condition(status, "TargetOptedIn")["message"]
    untouched(kube, service)
    # The tenant has no rights on the InferenceService, so it cannot opt it in itself.
    with pytest.raises(ApiError) as denied:
        mallory.kube.patch(
            service, {"metadata": {"annotations": {"whetstone.dev/rollout": "grader"}}}
        )
    assert denied.value.status == 403
    # Its owner can; then the canary starts, once the Rollout checked the artifact again.
    kube.patch(service, {"metadata": {"annotations": {"whetstone.dev/rollout": "grader"}}})

    def canary() -> int | None:
        return kube.get(service)["spec"]["predictor"].get("canaryTrafficPercent")

    verifier = VerifyPods(kube, ns).start()
    try:
        assert wait_for(canary, timeout=30, what="the canary at 5%") == 5
    finally:
        verifier.stop()
    checked = status_of(kube, ro)["candidateVerification"]
    assert checked["modelVersion"] == "grader-v6" and checked["digest"] == DIGEST


def test_an_artifact_changed_in_storage_after_verification_gets_no_traffic(
    kube: Kube,
    kubelet: Kubelet,
    namespace: str,
    tenant: Callable[..., Tenant],
    approver: Callable[..., Tenant],
    operator: Any,
) -> None:
    """Verified and approved, then the tenant swaps the files at the artifact's URI: the
    Rollout's own check before the first traffic finds another digest, and nothing is sent."""
    ns, mallory, alice = namespace, tenant(namespace), approver(namespace)
    mallory.kube.create(mv_path(ns), version("swapped"))
    verified(kube, kubelet, ns, "swapped")
    assert annotate(alice, ns, "swapped", "whetstone.dev/approve=true").returncode == 0
    wait_status(kube, mv_path(ns, "swapped"), lambda s: s.get("phase") == "Approved", "approved")
    service = create_service(kube, ns)
    verifier = VerifyPods(kube, ns, changed={MV_SAMPLE["spec"]["artifact"]["uri"]}).start()
    try:
        ro = rollout(mallory.kube, ns, "swapped")
        status = wait_status(
            kube,
            ro,
            lambda s: condition(s, "ModelVersionReady").get("reason") == "ArtifactChanged",
            "the changed artifact is refused",
        )
        untouched(kube, service)
    finally:
        verifier.stop()
    assert status["phase"] == "Pending" and "candidateVerification" not in status, status
    assert "no longer matches" in condition(status, "ModelVersionReady")["message"]


# --------------------------------------------------------------------------- training


REFUSED_JOBS = {
    "image": ({"image": "evil.example.com/miner:latest"}, "spec.training.images"),
    "toleration": (
        {
            "resources": {
                **FTJ_SAMPLE["spec"]["resources"],
                "tolerations": [
                    {"key": "team-b/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            }
        },
        "spec.training.tolerations",
    ),
    "priority class": (
        {
            "resources": {
                **FTJ_SAMPLE["spec"]["resources"],
                "priorityClassName": "system-cluster-critical",
            }
        },
        "spec.training.priorityClassNames",
    ),
    "data class": (
        {"dataset": {**FTJ_SAMPLE["spec"]["dataset"], "classification": "restricted"}},
        "spec.training.dataClasses",
    ),
    "GPU count": (
        {"resources": {**FTJ_SAMPLE["spec"]["resources"], "nodes": 2, "gpusPerNode": 8}},
        "spec.training.maxGPUsPerJob",
    ),
}


def job_name(case: str) -> str:
    return "refused-" + case.lower().replace(" ", "-")


def test_training_outside_the_policy_is_refused_and_nothing_is_scheduled(
    kube: Kube, namespace: str, tenant: Callable[..., Tenant], operator: Any
) -> None:
    ns, mallory = namespace, tenant(namespace)
    tolerations = GPU_TOLERATIONS
    with governing(kube, ns, {"training": {"tolerations": tolerations}}) as policy:
        for name, (change, _) in REFUSED_JOBS.items():
            body = copy.deepcopy(FTJ_SAMPLE)
            body["metadata"] = {"name": job_name(name)}
            body["spec"].update(change)
            mallory.kube.create(resource_path(API, "finetunejobs", ns), body)
        for name, (_, rule) in REFUSED_JOBS.items():
            job = job_name(name)
            status = wait_status(
                kube,
                resource_path(API, "finetunejobs", ns, job),
                lambda s: condition(s, "PolicyAllowed").get("status") == "False",
                f"the {name} refused",
            )
            message = condition(status, "PolicyAllowed")["message"]
            assert f"PlatformPolicy {policy} {rule}" in message, (name, message)
            assert status["phase"] == "Pending", status
            assert "PolicyViolation" in events(kube, ns, job)
    assert kube.list(resource_path("batch/v1", "jobs", ns)) == []
    assert not [
        c
        for c in kube.list(resource_path("v1", "configmaps", ns))
        if c["metadata"]["name"].startswith("refused-")
    ]


def test_a_squatted_child_name_is_reported_not_adopted(
    kube: Kube, namespace: str, tenant: Callable[..., Tenant], operator: Any
) -> None:
    """The tenant makes the ConfigMap the operator would render for its FineTuneJob (its own
    trainer configuration, say): the operator reports the conflict and schedules nothing."""
    ns, mallory = namespace, tenant(namespace)
    tolerations = GPU_TOLERATIONS
    with governing(kube, ns, {"training": {"tolerations": tolerations}}):
        mallory.kube.create(
            resource_path("v1", "configmaps", ns),
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "squat-trainer-config"},
                "data": {"config.json": "{}"},
            },
        )
        body = copy.deepcopy(FTJ_SAMPLE)
        body["metadata"] = {"name": "squat"}
        mallory.kube.create(resource_path(API, "finetunejobs", ns), body)
        status = wait_status(
            kube,
            resource_path(API, "finetunejobs", ns, "squat"),
            lambda s: condition(s, "ChildConflict").get("status") == "True",
            "the squatted ConfigMap is reported",
        )
        assert "not controlled by this object" in condition(status, "ChildConflict")["message"]
        assert "ChildConflict" in events(kube, ns, "squat")
        assert kube.list(resource_path("batch/v1", "jobs", ns)) == []
        config = kube.get(resource_path("v1", "configmaps", ns, "squat-trainer-config"))
        assert config["data"] == {"config.json": "{}"}


def test_budget_exhausted_then_raised(
    kube: Kube, kubelet: Kubelet, namespace: str, tenant: Callable[..., Tenant], operator: Any
) -> None:
    """A namespace that spent its month's GPU-hours starts no new FineTuneJob until the
    platform team raises the budget; deleting the spent job does not give the hours back."""
    ns, mallory = namespace, tenant(namespace)
    spec = {
        "training": {
            "tolerations": GPU_TOLERATIONS,
            "budget": {"gpuHoursPerMonth": 0.001},  # 3.6 GPU-seconds
        }
    }
    jobs_path = resource_path(API, "finetunejobs", ns)
    with governing(kube, ns, spec) as policy:
        first = copy.deepcopy(FTJ_SAMPLE)
        first["metadata"] = {"name": "spender"}
        mallory.kube.create(jobs_path, first)
        (vpod,) = kubelet.wait_job_pods(ns, "spender-validate")
        report = {"examples": 10, "dropped": {}, "redacted": {}}
        kubelet.succeed(ns, vpod["metadata"]["name"], message=json.dumps(report))
        (tpod,) = kubelet.wait_job_pods(ns, "spender-train-1")
        kubelet.run(ns, tpod["metadata"]["name"])
        time.sleep(1.5)  # 8 GPUs: 12 GPU-seconds, over the budget
        kubelet.fail(ns, tpod["metadata"]["name"], message="preempted", exit_code=137)
        spent = wait_status(
            kube,
            policy_path(policy),
            lambda s: ((s.get("spend") or {}).get(ns) or {}).get("gpuHours", 0) >= 0.001,
            "the namespace's spend passes its budget",
        )
        assert spent["spend"][ns]["month"]
        mallory.kube.delete(resource_path(API, "finetunejobs", ns, "spender"))
        second = copy.deepcopy(FTJ_SAMPLE)
        second["metadata"] = {"name": "over-budget"}
        mallory.kube.create(jobs_path, second)
        waiting = wait_status(
            kube,
            resource_path(API, "finetunejobs", ns, "over-budget"),
            lambda s: condition(s, "BudgetAvailable").get("reason") == "BudgetExhausted",
            "BudgetExhausted",
        )
        assert waiting["phase"] == "Pending"
        assert (
            f"PlatformPolicy {policy} spec.training.budget.gpuHoursPerMonth"
            in condition(waiting, "BudgetAvailable")["message"]
        )
        assert not [
            j
            for j in kube.list(resource_path("batch/v1", "jobs", ns))
            if j["metadata"]["name"].startswith("over-budget")
        ]
        kube.patch(
            policy_path(policy), {"spec": {"training": {"budget": {"gpuHoursPerMonth": 100}}}}
        )
        released = wait_status(
            kube,
            resource_path(API, "finetunejobs", ns, "over-budget"),
            lambda s: s.get("phase") == "Validating",
            "released by the raised budget",
        )
        assert condition(released, "BudgetAvailable")["status"] == "True"
