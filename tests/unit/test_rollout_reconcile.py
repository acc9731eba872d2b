"""decide_rollout and its KServe view: which ModelVersion may be used, the predictor patch,
the deployments written to ModelVersions, and the status patch."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from whetstone_contract.result import EXIT_VERIFY_FAILED
from whetstone_operator import analysis
from whetstone_operator.api.platformpolicy import PlatformPolicySpec
from whetstone_operator.api.rollout import PredictorStorage
from whetstone_operator.approval import Approver, Trust
from whetstone_operator.reconcile.canary import (
    build_predictor_patch,
    candidate_storage,
    check_ready,
    service_view,
)
from whetstone_operator.reconcile.canary.kserve import ADAPTER_PATH, BASE_PATH, Desired
from whetstone_operator.reconcile.core import Create, Obj, Patch, apply_merge_patch, status_diff
from whetstone_operator.reconcile.finetunejob import JobView, PodView
from whetstone_operator.reconcile.policy import Policy
from whetstone_operator.reconcile.rollout import (
    SetDeployment,
    VersionInfo,
    World,
    decide_rollout,
    due_queries,
    patch_predictor,
    serving_version,
    set_deployment,
    version_problem,
)
from whetstone_operator.render.verify import rollout_verify_job_name

from tests.conftest import REPO_ROOT
from tests.loopback import LoopbackServer, QuietHandler

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)
SAMPLE = yaml.safe_load((REPO_ROOT / "manifests/samples/rollout.yaml").read_text())
MV_SPEC = yaml.safe_load((REPO_ROOT / "manifests/samples/modelversion.yaml").read_text())["spec"]
ALICE = Approver("alice", ("reviewers",), "2026-11-22T19:00:00Z")
TRUSTED = Trust(verified=True, approvers=(ALICE,), required=1)


def version(
    name: str,
    uri: str,
    phase: str | None = "Approved",
    trust: Trust | None = TRUSTED,
    spec: dict[str, Any] | None = None,
    **kw: Any,
) -> VersionInfo:
    """A ModelVersion as the Rollout's observe hands it over (phase is only its status: the
    decision must not rely on it)."""
    spec = spec or {**MV_SPEC, "artifact": {**MV_SPEC["artifact"], "uri": uri}}
    return VersionInfo(name=name, phase=phase, artifact_uri=uri, spec=spec, trust=trust, **kw)


V1 = version("grader-v1", "s3://models/grader/v1/", "Serving")
V2 = version("grader-v2", "s3://models/grader/v2/")


def isvc(
    uri: str = "s3://models/grader/v1/",
    percent: int | None = None,
    generation: int = 1,
    observed: int = 1,
    traffic: list[tuple[str, int, bool]] | None = None,
    ready: bool = True,
    created: str = "grader-predictor-00001",
    ready_rev: str = "grader-predictor-00001",
    opted_in: str | None = "grader",
) -> dict[str, Any]:
    predictor: dict[str, Any] = {
        "model": {"modelFormat": {"name": "huggingface"}, "storageUri": uri}
    }
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "grader",
            "namespace": "ml",
            "generation": generation,
            "annotations": {"whetstone.dev/rollout": opted_in} if opted_in else {},
        },
        "spec": {"predictor": predictor},
        "status": {
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "components": {
                "predictor": {
                    "latestCreatedRevision": created,
                    "latestReadyRevision": ready_rev,
                    "traffic": [
                        {"revisionName": r, "percent": p, "latestRevision": latest}
                        for r, p, latest in (traffic or [("grader-predictor-00001", 100, True)])
                    ],
                }
            },
        },
    }


PROBLEMS = {
    "unknown": (None, "ModelVersionNotFound", "not found"),
    "no signed verification": (
        version("v", "s3://a/", trust=Trust(verified=False, approvers=(ALICE,), required=1)),
        "ModelVersionNotVerified",
        "no valid signed verification",
    ),
    "a status that claims Approved is not trusted": (
        version("v", "s3://a/", "Approved", trust=None),
        "ModelVersionNotVerified",
        "status.verification",
    ),
    "not approved": (
        version("v", "s3://a/", "Verified", trust=Trust(verified=True, approvers=(), required=1)),
        "ModelVersionNotApproved",
        "is not Approved: approve it first (0 of 1",
    ),
    "one of two approvers": (
        version("v", "s3://a/", trust=Trust(verified=True, approvers=(ALICE,), required=2)),
        "ModelVersionNotApproved",
        "1 of 2 approval(s) that count: alice",
    ),
    "an approver the policy does not count": (
        version(
            "v",
            "s3://a/",
            trust=Trust(
                verified=True,
                approvers=(),
                required=1,
                refused=("system:serviceaccount:x:y is a ServiceAccount",),
            ),
        ),
        "ModelVersionNotApproved",
        "is a ServiceAccount",
    ),
    "gates recomputed from the spec": (
        version(
            "v",
            "s3://a/",
            spec={
                **MV_SPEC,
                "artifact": {**MV_SPEC["artifact"], "uri": "s3://a/"},
                "gates": [{"metric": "exactMatch", "min": 0.99}],
            },
        ),
        "GatesFailed",
        "exactMatch",
    ),
}


@pytest.mark.parametrize("name", PROBLEMS, ids=list(PROBLEMS))
def test_version_problem(name: str) -> None:
    info, reason, text = PROBLEMS[name]
    problem = version_problem("v", info)
    assert problem is not None
    assert problem[0] == reason
    assert text in problem[1]


@pytest.mark.parametrize("phase", ["Approved", "Serving", "Verified", None])
def test_usable_versions_are_judged_on_their_records_not_their_phase(phase: str | None) -> None:
    assert version_problem("v", version("v", "s3://a/", phase)) is None


def test_adapter_storage_keeps_the_base_model_beside_the_adapter() -> None:
    storage = candidate_storage("s3://m/adapter/", "adapter", "hf://org/base")
    assert storage.wire() == {
        "storageUris": [
            {"uri": "hf://org/base", "mountPath": BASE_PATH},
            {"uri": "s3://m/adapter/", "mountPath": ADAPTER_PATH},
        ]
    }
    patch = build_predictor_patch(Desired(storage, 5))
    assert patch == {
        "spec": {
            "predictor": {
                "canaryTrafficPercent": 5,
                "storageUris": storage.wire()["storageUris"],
                "model": {"storageUri": None},
            }
        }
    }
    merged = build_predictor_patch(Desired(candidate_storage("s3://m/v2/", "merged", None), None))
    assert merged["spec"]["predictor"] == {
        "canaryTrafficPercent": None,
        "storageUris": None,
        "model": {"storageUri": "s3://m/v2/"},
    }


def test_serving_version_matches_storage_up_to_a_trailing_slash() -> None:
    view = service_view(isvc(uri="s3://models/grader/v1"))
    assert serving_version(view, {"grader-v1": V1, "grader-v2": V2}) == "grader-v1"
    assert serving_version(service_view(isvc(uri="s3://other/")), {"grader-v1": V1}) is None


@pytest.mark.parametrize(
    ("obj", "desired", "ok", "text"),
    [
        (
            isvc(),
            Desired(PredictorStorage(storage_uri="s3://models/grader/v2/"), 5),
            False,
            "desired spec",
        ),
        (
            isvc(uri="s3://models/grader/v2/", percent=5, generation=2, observed=1),
            Desired(PredictorStorage(storage_uri="s3://models/grader/v2/"), 5),
            False,
            "not yet observed generation 2",
        ),
        (
            isvc(uri="s3://models/grader/v2/", percent=5, generation=2, observed=2, created="r2"),
            Desired(PredictorStorage(storage_uri="s3://models/grader/v2/"), 5),
            False,
            "revision r2 is not ready yet",
        ),
        (
            isvc(uri="s3://models/grader/v2/", percent=5, generation=2, observed=2, ready=False),
            Desired(PredictorStorage(storage_uri="s3://models/grader/v2/"), 5),
            False,
            "not Ready",
        ),
        (
            isvc(
                uri="s3://models/grader/v2/",
                percent=25,
                generation=3,
                observed=3,
                created="r2",
                ready_rev="r2",
                traffic=[("r2", 5, True), ("grader-predictor-00001", 95, False)],
            ),
            Desired(PredictorStorage(storage_uri="s3://models/grader/v2/"), 25),
            False,
            "r2 has 5% of the traffic, waiting for 25%",
        ),
        (
            isvc(
                uri="s3://models/grader/v2/",
                percent=25,
                generation=3,
                observed=3,
                created="r2",
                ready_rev="r2",
                traffic=[("r2", 25, True), ("grader-predictor-00001", 75, False)],
            ),
            Desired(PredictorStorage(storage_uri="s3://models/grader/v2/"), 25),
            True,
            "r2 is ready with 25%",
        ),
        (
            isvc(
                uri="s3://models/grader/v2/",
                generation=4,
                observed=4,
                created="r2",
                ready_rev="r2",
                traffic=[("r2", 100, True)],
            ),
            Desired(PredictorStorage(storage_uri="s3://models/grader/v2/"), None),
            True,
            "100%",
        ),
    ],
    ids=[
        "spec not patched yet",
        "KServe behind",
        "canary revision not ready",
        "service not ready",
        "old split still applied",
        "split applied",
        "promoted",
    ],
)
def test_check_ready(obj: dict[str, Any], desired: Desired, ok: bool, text: str) -> None:
    got, why = check_ready(service_view(obj), desired)
    assert got is ok
    assert text in why


def rollout(status: dict[str, Any] | None = None, **annotations: str) -> Obj:
    spec = copy.deepcopy(SAMPLE["spec"])
    spec["modelVersion"] = "grader-v2"
    spec["strategy"]["canary"]["steps"] = [{"setWeight": 5}, {"pause": {}}, {"setWeight": 100}]
    del spec["strategy"]["canary"]["analysis"]
    return Obj(
        name="grader",
        namespace="ml",
        generation=1,
        spec=spec,
        status=status or {},
        annotations=annotations,
    )


V2_DIGEST = MV_SPEC["artifact"]["digest"]


def verify_job(
    message: str | None = None, complete: bool = True, owner: str = "", failed: bool = False
) -> JobView:
    """The Rollout's verify Job for grader-v2 (the Rollout's uid is "" in these tests)."""
    pod = PodView(
        name="p",
        phase="Succeeded" if complete else ("Failed" if failed else "Running"),
        exit_code=(0 if complete else (EXIT_VERIFY_FAILED if failed else None)),
        message=message,
    )
    return JobView(
        name=rollout_verify_job_name("grader", "grader-v2", V2_DIGEST),
        succeeded=int(complete),
        complete=complete,
        failed_reason="BackoffLimitExceeded" if failed else None,
        pods=(pod,),
        owner_uid=owner,
    )


CHECKED = verify_job(json.dumps({"ok": True, "digest": V2_DIGEST}))


def test_first_reconcile_patches_the_predictor_and_records_both_deployments() -> None:
    world = World(
        service=service_view(isvc()),
        versions={"grader-v1": V1, "grader-v2": V2},
        verify_job=CHECKED,
    )
    decision = decide_rollout(rollout(), world, NOW)
    assert decision.actions == [
        patch_predictor(
            "grader",
            {
                "spec": {
                    "predictor": {
                        "canaryTrafficPercent": 5,
                        "storageUris": None,
                        "model": {"storageUri": "s3://models/grader/v2/"},
                    }
                }
            },
        ),
        set_deployment(
            "grader",
            "grader-v1",
            {
                "rollout": "grader",
                "inferenceService": "grader",
                "trafficPercent": 95,
                "role": "stable",
            },
        ),
        set_deployment(
            "grader",
            "grader-v2",
            {
                "rollout": "grader",
                "inferenceService": "grader",
                "trafficPercent": 5,
                "role": "canary",
            },
        ),
    ]
    status = decision.status
    assert status["phase"] == "Progressing"
    assert status["stableModelVersion"] == "grader-v1"
    assert status["stableStorage"] == {"storageUri": "s3://models/grader/v1/"}
    assert status["stableRevision"] == "grader-predictor-00001"
    assert status["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} >= {
        "Valid",
        "ModelVersionReady",
        "Progressing",
    }
    assert [e.reason for e in decision.events] == ["ModelVersionReady", "Started"]


def test_unapproved_version_is_refused_without_touching_anything() -> None:
    verified = version(
        "grader-v2",
        "s3://models/grader/v2/",
        "Verified",
        trust=Trust(verified=True, approvers=(), required=1),
    )
    world = World(service=service_view(isvc()), versions={"grader-v1": V1, "grader-v2": verified})
    decision = decide_rollout(rollout(), world, NOW)
    assert decision.actions == []
    assert decision.status["phase"] == "Pending"
    (cond,) = [c for c in decision.status["conditions"] if c["type"] == "ModelVersionReady"]
    assert cond["status"] == "False"
    assert cond["message"].startswith(
        "ModelVersion grader-v2 is not Approved: approve it first (0 of 1"
    )
    again = decide_rollout(rollout(decision.status), world, NOW + timedelta(seconds=10))
    assert again.events == []  # the refusal is reported once, not at every resync


def test_promotion_moves_deployments_and_supersedes_the_old_stable() -> None:
    promoting = {
        "phase": "Progressing",
        "currentStepIndex": 3,
        "canaryWeight": 100,
        "stableModelVersion": "grader-v1",
        "canaryModelVersion": "grader-v2",
        "stableStorage": {"storageUri": "s3://models/grader/v1/"},
        "stableRevision": "grader-predictor-00001",
        "canaryRevision": "r2",
    }
    on_v1 = {
        "rollout": "grader",
        "inferenceService": "grader",
        "trafficPercent": 0,
        "role": "stable",
    }
    on_v2 = {
        "rollout": "grader",
        "inferenceService": "grader",
        "trafficPercent": 100,
        "role": "canary",
    }
    other = {"rollout": "other", "inferenceService": "x", "trafficPercent": 100, "role": "stable"}
    versions = {
        "grader-v1": version(
            "grader-v1", "s3://models/grader/v1/", "Serving", deployments=(on_v1, other)
        ),
        "grader-v2": version(
            "grader-v2", "s3://models/grader/v2/", "Serving", deployments=(on_v2,)
        ),
    }
    served = isvc(
        uri="s3://models/grader/v2/",
        generation=5,
        observed=5,
        created="r2",
        ready_rev="r2",
        traffic=[("r2", 100, True)],
    )
    decision = decide_rollout(rollout(promoting), World(service_view(served), versions), NOW)
    assert decision.status["phase"] == "Succeeded"
    assert decision.status["stableModelVersion"] == "grader-v2"
    assert decision.actions == [
        set_deployment("grader", "grader-v1", None, "grader-v2"),
        set_deployment("grader", "grader-v2", {**on_v2, "role": "stable"}),
    ]


def test_abort_annotation_restores_the_stable_storage_at_zero() -> None:
    running = {
        "phase": "Paused",
        "currentStepIndex": 1,
        "canaryWeight": 5,
        "stableModelVersion": "grader-v1",
        "canaryModelVersion": "grader-v2",
        "stableStorage": {"storageUri": "s3://models/grader/v1/"},
        "stableRevision": "grader-predictor-00001",
        "canaryRevision": "r2",
        "stepStartTime": "2026-11-22T19:59:00Z",
    }
    served = isvc(
        uri="s3://models/grader/v2/",
        percent=5,
        generation=2,
        observed=2,
        created="r2",
        ready_rev="r2",
        traffic=[("r2", 5, True), ("grader-predictor-00001", 95, False)],
    )
    world = World(service_view(served), {"grader-v1": V1, "grader-v2": V2})
    decision = decide_rollout(rollout(running, **{"whetstone.dev/abort": "now"}), world, NOW)
    assert decision.actions[0] == patch_predictor(
        "grader",
        {
            "spec": {
                "predictor": {
                    "canaryTrafficPercent": 0,
                    "storageUris": None,
                    "model": {"storageUri": "s3://models/grader/v1/"},
                }
            }
        },
    )
    assert decision.status["phase"] == "Aborted"
    assert decision.status["handledCommands"] == {"abort": "now"}
    assert decision.status["stepStartTime"] is None  # removed by the merge patch
    assert "whetstone.dev/abort=now" in decision.status["abortReason"]


def test_invalid_spec_is_reported_and_nothing_is_touched() -> None:
    obj = rollout()
    obj.spec["strategy"]["canary"]["steps"] = [{"setWeight": 50}]
    decision = decide_rollout(obj, World(service_view(isvc()), {"grader-v2": V2}), NOW)
    assert decision.actions == []
    assert decision.status["phase"] == "Pending"
    assert "must be 100" in decision.status["message"]


def test_status_diff_removes_nested_keys_and_applies_back() -> None:
    before = {"a": 1, "s": {"storageUri": "x"}, "gone": True, "same": [1]}
    after = {"a": 2, "s": {"storageUris": [{"uri": "y"}]}, "same": [1]}
    assert status_diff(before, after) == {
        "a": 2,
        "s": {"storageUri": None, "storageUris": [{"uri": "y"}]},
        "gone": None,
    }
    assert apply_merge_patch(before, status_diff(before, after)) == after


def test_finished_rollout_drops_its_entry_once_the_service_moved_on() -> None:
    done = {
        "phase": "Succeeded",
        "currentStepIndex": 3,
        "canaryWeight": 100,
        "stableModelVersion": "grader-v2",
        "canaryModelVersion": "grader-v2",
        "stableStorage": {"storageUri": "s3://models/grader/v2/"},
    }
    mine = {
        "rollout": "grader",
        "inferenceService": "grader",
        "trafficPercent": 100,
        "role": "stable",
    }
    versions = {
        "grader-v2": version("grader-v2", "s3://models/grader/v2/", "Serving", deployments=(mine,))
    }
    still = World(service_view(isvc(uri="s3://models/grader/v2/")), versions)
    assert decide_rollout(rollout(done), still, NOW).actions == []
    moved = World(service_view(isvc(uri="s3://models/grader/v3/", percent=5)), versions)
    assert decide_rollout(rollout(done), moved, NOW).actions == [
        set_deployment("grader", "grader-v2", None)
    ]


@pytest.mark.parametrize(
    ("status", "change", "expected"),
    [
        ({}, SetDeployment("r", {"rollout": "r", "trafficPercent": 5}), "added"),
        (
            {"deployments": [{"rollout": "r", "trafficPercent": 5}]},
            SetDeployment("r", {"rollout": "r", "trafficPercent": 5}),
            None,
        ),
        (
            {"deployments": [{"rollout": "other"}, {"rollout": "r"}]},
            SetDeployment("r", None, "v2"),
            "removed, others kept",
        ),
        ({"supersededBy": "v9"}, SetDeployment("r", {"rollout": "r"}), "serves again"),
    ],
)
def test_set_deployment_changes_only_this_rollouts_entry(
    status: dict[str, Any], change: SetDeployment, expected: str | None
) -> None:
    patch = change(status)
    if expected is None:
        assert patch is None
    elif expected == "added":
        assert patch == {"deployments": [{"rollout": "r", "trafficPercent": 5}]}
    elif expected == "removed, others kept":
        assert patch == {"deployments": [{"rollout": "other"}], "supersededBy": "v2"}
    else:
        assert patch == {"deployments": [{"rollout": "r"}], "supersededBy": None}


@pytest.mark.parametrize("opted_in", [None, "another-rollout"])
def test_a_service_that_did_not_opt_in_is_never_touched(opted_in: str | None) -> None:
    world = World(
        service=service_view(isvc(opted_in=opted_in)), versions={"grader-v1": V1, "grader-v2": V2}
    )
    decision = decide_rollout(rollout(), world, NOW)
    assert decision.actions == []
    cond = next(c for c in decision.status["conditions"] if c["type"] == "TargetOptedIn")
    assert cond["status"] == "False" and cond["reason"] == "NotOptedIn"
    assert (
        "kubectl annotate inferenceservice grader whetstone.dev/rollout=grader" in cond["message"]
    )
    assert [e.reason for e in decision.events] == ["NotOptedIn"]
    opted = World(service=service_view(isvc()), versions=world.versions)
    after = decide_rollout(rollout(decision.status), opted, NOW)
    assert after.actions, "once the service opts in, the rollout starts"


# ----------------------------------------------------------------------------- analysis answers

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class _Vault(QuietHandler):
    """A metrics 'server' and a canary that both answer with cloud credentials."""

    def do_GET(self) -> None:
        self.reply(200, {"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": SECRET})

    def do_POST(self) -> None:
        self.read_json()
        self.reply(400, {"error": {"message": SECRET}})


def _analysing(metrics: list[dict[str, Any]]) -> Obj:
    spec = copy.deepcopy(SAMPLE["spec"])
    spec["modelVersion"] = "grader-v2"
    spec["strategy"]["canary"]["steps"] = [{"setWeight": 5}, {"pause": {}}, {"setWeight": 100}]
    spec["strategy"]["canary"]["analysis"]["metrics"] = metrics
    spec["strategy"]["canary"]["analysis"]["failureLimit"] = 3
    status = {
        "phase": "Progressing",
        "currentStepIndex": 1,
        "canaryWeight": 5,
        "stableModelVersion": "grader-v1",
        "canaryModelVersion": "grader-v2",
        "stableRevision": "grader-predictor-00001",
        "canaryRevision": "grader-predictor-00002",
        "stepStartTime": "2026-11-22T19:59:00Z",
        "stableStorage": {"storageUri": "s3://models/grader/v1/"},
    }
    return Obj(name="grader", namespace="ml", generation=1, spec=spec, status=status)


def _split(canary_url: str) -> dict[str, Any]:
    body = isvc(
        uri="s3://models/grader/v2/",
        percent=5,
        created="grader-predictor-00002",
        ready_rev="grader-predictor-00002",
        traffic=[("grader-predictor-00002", 5, True), ("grader-predictor-00001", 95, False)],
    )
    body["status"]["components"]["predictor"]["traffic"][0]["url"] = canary_url
    return body


def test_no_byte_of_an_answer_reaches_status_events_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    prompts = SAMPLE["spec"]["strategy"]["canary"]["analysis"]["metrics"][2]
    with LoopbackServer(_Vault) as vault:
        policy = Policy(
            "team",
            PlatformPolicySpec.model_validate(
                {"analysis": {"prometheus": [{"name": "main", "address": vault.url}]}}
            ),
        )
        obj = _analysing(
            [
                {
                    "name": "vault",
                    "prometheus": {"endpoint": "main", "query": "up"},
                    "thresholdRange": {"max": 1},
                },
                {**prompts, "http": {**prompts["http"], "responseField": "SecretAccessKey"}},
            ]
        )
        service = service_view(_split(f"{vault.url}/rev/grader-predictor-00002"))
        checks = due_queries(obj, NOW, service, policy)
        measured = analysis.measure_all(checks, analysis.Guard(allow_loopback=True))
    versions = {"grader-v1": V1, "grader-v2": V2}
    decision = decide_rollout(obj, World(service, versions, measured), NOW)
    status = apply_merge_patch(obj.status, decision.status)
    assert status["analysis"]["failures"] == 1  # both metrics failed, the round counted
    results = {r["metric"]: r["message"] for r in status["analysis"]["lastResults"]}
    assert "answered 102 bytes that are not a successful query result" in results["vault"]
    assert "golden prompt essay-short: HTTP 400 Bad Request" in results["golden-prompts"]
    shown = json.dumps([status, [e.message for e in decision.events]]) + caplog.text
    for secret in (SECRET, "wJalr", "AKIA", "EXAMPLE"):
        assert secret not in shown


def test_a_refused_target_is_a_condition_and_an_event_and_nothing_is_sent() -> None:
    obj = _analysing(
        [
            {
                "name": "metadata",
                "prometheus": {"address": "http://user:pw@169.254.169.254/latest", "query": "up"},
                "thresholdRange": {"max": 1},
            }
        ]
    )
    service = service_view(_split("http://latest-grader.ml.example.com"))
    (check,) = due_queries(obj, NOW, service)  # no PlatformPolicy: the built-in default
    measured = analysis.measure_all([check])  # refused before any I/O
    decision = decide_rollout(
        obj, World(service, {"grader-v1": V1, "grader-v2": V2}, measured), NOW
    )
    status = apply_merge_patch(obj.status, decision.status)
    allowed = next(c for c in status["conditions"] if c["type"] == "AnalysisTargetsAllowed")
    assert allowed["status"] == "False" and allowed["reason"] == "TargetRefused"
    assert "PlatformPolicy built-in default spec.analysis.allowAddresses" in allowed["message"]
    events = {e.reason: e.message for e in decision.events}
    assert "spec.analysis.allowAddresses" in events["AnalysisTargetRefused"]
    assert "refused, nothing sent" in status["analysis"]["lastResults"][0]["message"]
    assert status["analysis"]["lastResults"][0]["passed"] is False
    assert "user:pw" not in json.dumps(status)


FIRST_TRAFFIC = {
    "no check yet: a verify Job of the Rollout's own, nothing sent": (
        None,
        "ArtifactVerifying",
        ["Job"],
    ),
    "still checking": (verify_job(complete=False), "ArtifactVerifying", []),
    "the files changed in storage since the version was verified": (
        verify_job(json.dumps({"ok": True, "digest": "sha256:" + "0" * 64})),
        "ArtifactChanged",
        [],
    ),
    "a failed check": (
        verify_job('{"ok": false, "reason": "digest mismatch"}', complete=False, failed=True),
        "ArtifactChanged",
        [],
    ),
    "a result without the digest": (verify_job(json.dumps({"ok": True})), "ArtifactChanged", []),
    "a Job someone else made": (
        verify_job(json.dumps({"ok": True, "digest": V2_DIGEST}), owner="not-ours"),
        "ChildConflict",
        [],
    ),
}


@pytest.mark.parametrize("name", FIRST_TRAFFIC, ids=list(FIRST_TRAFFIC))
def test_no_first_traffic_before_the_rollout_checked_the_artifact_again(name: str) -> None:
    job, reason, creates = FIRST_TRAFFIC[name]
    world = World(
        service=service_view(isvc()), versions={"grader-v1": V1, "grader-v2": V2}, verify_job=job
    )
    decision = decide_rollout(rollout(), world, NOW)
    kinds = [a.body["kind"] for a in decision.actions if isinstance(a, Create)]
    assert kinds == creates
    assert not [a for a in decision.actions if isinstance(a, Patch)]  # the service untouched
    assert decision.status["phase"] == "Pending"
    ready = next(c for c in decision.status["conditions"] if c["type"] == "ModelVersionReady")
    assert (ready["status"], ready["reason"]) == ("False", reason), ready
    if creates:
        (create,) = decision.actions
        assert isinstance(create, Create)
        owner = create.body["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["controller"]) == ("Rollout", True)
        container = create.body["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][-2:] == ["--digest", V2_DIGEST]


def test_a_passed_check_is_recorded_and_the_canary_starts() -> None:
    world = World(
        service=service_view(isvc()),
        versions={"grader-v1": V1, "grader-v2": V2},
        verify_job=CHECKED,
    )
    decision = decide_rollout(rollout(), world, NOW)
    assert decision.status["candidateVerification"]["digest"] == V2_DIGEST
    assert decision.status["phase"] == "Progressing"
    assert [a for a in decision.actions if isinstance(a, Patch)]
    # Once recorded, the Job is no longer needed to go on.
    again = decide_rollout(
        rollout(apply_merge_patch({}, decision.status)),
        World(service=world.service, versions=world.versions),
        NOW + timedelta(seconds=1),
    )
    assert not [a for a in again.actions if isinstance(a, Create)]
