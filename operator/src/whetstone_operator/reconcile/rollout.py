"""Rollout decisions: (object, observed world, now) -> (actions, status patch, events).

Pure. Around the canary state machine (`whetstone_operator.reconcile.canary`) it adds what touches
other objects: whether the candidate ModelVersion may be used, which ModelVersion the
InferenceService serves now, the predictor patch, and each ModelVersion's
`status.deployments` entry for this Rollout (the only part of a ModelVersion it writes).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from whetstone_contract.result import EXIT_VERIFY_FAILED
from whetstone_operator.api import API_VERSION
from whetstone_operator.api.common import format_time
from whetstone_operator.api.modelversion import ModelVersionSpec
from whetstone_operator.api.names import ROLLOUT_TARGET_ANNOTATION
from whetstone_operator.api.rollout import (
    ROLLOUT_ACTIVE,
    ROLLOUT_FINISHED,
    CandidateVerification,
    PredictorStorage,
    RolloutSpec,
    RolloutStatus,
)
from whetstone_operator.approval import Trust
from whetstone_operator.reconcile.canary import (
    Check,
    Measurement,
    Observed,
    ServiceView,
    advance,
    analysis_due,
    build_predictor_patch,
    build_queries,
    candidate_storage,
    same_storage,
)
from whetstone_operator.reconcile.canary.kserve import is_applied
from whetstone_operator.reconcile.core import Create, Decision, Draft, Obj, Patch, UpdateStatus
from whetstone_operator.reconcile.finetunejob import JobView
from whetstone_operator.reconcile.modelversion import evaluate_gate, parse_verify_message
from whetstone_operator.reconcile.policy import Policy
from whetstone_operator.reconcile.validation import check_spec
from whetstone_operator.render.verify import (
    VersionOwner,
    build_verify_job,
    rollout_verify_job_name,
)
from whetstone_operator.render.workload import TrainerDefaults


@dataclass(frozen=True)
class VersionInfo:
    """A ModelVersion as a Rollout sees it: what it would serve, what its signed records
    establish (`trust`, filled in for the candidate) and where it serves now."""

    name: str
    phase: str | None = None
    artifact_uri: str | None = None
    artifact_format: str = "merged"
    base_uri: str | None = None
    deployments: tuple[Mapping[str, Any], ...] = ()
    spec: Mapping[str, Any] = field(default_factory=dict)
    record: Mapping[str, Any] = field(default_factory=dict)  # what the signatures cover
    trust: Trust | None = None

    @cached_property
    def parsed(self) -> ModelVersionSpec | None:
        """The spec, parsed once (None when it does not parse)."""
        try:
            return ModelVersionSpec.model_validate(dict(self.spec))
        except ValidationError:
            return None

    def storage(self) -> PredictorStorage | None:
        if not self.artifact_uri:
            return None
        return candidate_storage(self.artifact_uri, self.artifact_format, self.base_uri)


@dataclass(frozen=True)
class World:
    """What the operator observes besides the Rollout: its InferenceService, the namespace's
    ModelVersions, the analysis measurements, and this Rollout's verify Job for the candidate
    (with the pod defaults to build one)."""

    service: ServiceView | None = None
    versions: Mapping[str, VersionInfo] = field(default_factory=dict)
    measurements: tuple[Measurement, ...] | None = None
    verify_job: JobView | None = None
    defaults: TrainerDefaults = field(default_factory=TrainerDefaults)


ISVC_API_VERSION = "serving.kserve.io/v1beta1"


def patch_predictor(inference_service: str, patch: dict[str, Any]) -> Patch:
    """Merge-patch the InferenceService (storage and canaryTrafficPercent)."""
    return Patch(ISVC_API_VERSION, "InferenceService", inference_service, patch)


@dataclass(frozen=True)
class SetDeployment:
    """A ModelVersion status change: set (or with entry None, remove) `rollout`'s entry in
    status.deployments, leaving other Rollouts' entries alone; a version that serves again
    loses supersededBy, one replaced on promotion (`superseded_by`) gets it."""

    rollout: str
    entry: dict[str, Any] | None
    superseded_by: str | None = None

    def __call__(self, status: Mapping[str, Any]) -> dict[str, Any] | None:
        current = list(status.get("deployments") or [])
        wanted = [d for d in current if d.get("rollout") != self.rollout]
        if self.entry is not None:
            wanted.append(self.entry)
        change: dict[str, Any] = {}
        if wanted != current:
            change["deployments"] = wanted
        if self.entry is not None and status.get("supersededBy"):
            change["supersededBy"] = None
        elif self.superseded_by and status.get("supersededBy") != self.superseded_by:
            change["supersededBy"] = self.superseded_by
        return change or None


def set_deployment(
    rollout: str, model_version: str, entry: dict[str, Any] | None, superseded_by: str | None = None
) -> UpdateStatus:
    """Set this Rollout's deployment entry on a ModelVersion (see SetDeployment)."""
    change = SetDeployment(rollout, entry, superseded_by)
    return UpdateStatus(API_VERSION, "ModelVersion", model_version, change)


def version_problem(name: str, version: VersionInfo | None) -> tuple[str, str] | None:
    """(reason, message) why ModelVersion `name` may not be rolled out; None when it may.

    Decided from the signed records and the spec they cover, never from the ModelVersion's
    status (anyone with modelversions/status could write that): the operator's verification
    of the artifact, the gates recomputed from the spec, and the approvals that count under
    the namespace's PlatformPolicy."""
    if version is None:
        return "ModelVersionNotFound", (
            f"ModelVersion {name} not found in this namespace: create it (or fix spec.modelVersion)"
        )
    spec = version.parsed
    if spec is None:
        return "ModelVersionNotReady", f"ModelVersion {name} has an invalid spec"
    trust = version.trust
    if trust is None or not trust.verified:
        return "ModelVersionNotVerified", (
            f"ModelVersion {name} has no valid signed verification of its artifact "
            "(status.verification): wait for its artifact check"
        )
    failed = [r for r in (evaluate_gate(g, spec) for g in spec.gates) if not r.passed]
    if failed:
        return "GatesFailed", (
            f"ModelVersion {name} fails its gates: "
            + "; ".join(f"{r.metric}: {r.message}" for r in failed)
            + ": pick another version"
        )
    if not trust.approved:
        have = ", ".join(a.user for a in trust.approvers) or "none"
        return "ModelVersionNotApproved", (
            f"ModelVersion {name} is not Approved: approve it first ({len(trust.approvers)} "
            f"of {trust.required} approval(s) that count: {have})"
            + (f"; {'; '.join(trust.refused)}" if trust.refused else "")
        )
    if version.storage() is None:
        return "ModelVersionNotReady", f"ModelVersion {name} has no spec.artifact.uri"
    return None


def first_traffic_check(
    d: Draft[RolloutStatus], spec: ModelVersionSpec, name: str, world: World
) -> tuple[str, str] | None:
    """Before a version's first traffic, this Rollout's own verify pod checks its artifact
    against the digest again (the files may have changed in storage since the ModelVersion
    was verified): (reason, message) while that check runs or when it failed, None once it
    passed (recorded in status.candidateVerification)."""
    obj, digest = d.obj, spec.artifact.digest
    done = d.status.candidate_verification
    if done is not None and done.model_version == name and done.digest == digest:
        return None
    job_name = rollout_verify_job_name(obj.name, name, digest)
    job = world.verify_job
    if job is not None and job.owner_uid != obj.uid:
        return "ChildConflict", (
            f"Job {job_name} exists and is not this Rollout's (not controlled by uid {obj.uid}): "
            "delete it to let the artifact be checked"
        )
    if job is None:
        owner = VersionOwner(obj.name, obj.namespace, obj.uid, kind="Rollout")
        d.act(
            Create(build_verify_job(owner, spec, world.defaults, job_name=job_name, version=name))
        )
        return "ArtifactVerifying", (
            f"checking ModelVersion {name}'s artifact against {digest} again before its first "
            f"traffic (Job {job_name})"
        )
    definite = [p for p in job.pods if p.exit_code == EXIT_VERIFY_FAILED]
    pod = definite[-1] if definite else (job.pods[-1] if job.pods else None)
    found, detail = parse_verify_message(pod.message if pod else None)
    if job.complete and found == digest:
        d.status.candidate_verification = CandidateVerification(
            model_version=name, digest=digest, at=format_time(d.now)
        )
        return None
    if job.complete or job.failed_reason is not None or definite:
        what = f"its files have digest {found}" if found else (detail or "no digest reported")
        return "ArtifactChanged", (
            f"ModelVersion {name}'s artifact no longer matches {digest} ({what}): nothing is "
            "sent to it; register a new ModelVersion"
        )
    return "ArtifactVerifying", (
        f"checking ModelVersion {name}'s artifact against {digest} again before its first "
        f"traffic (Job {job_name})"
    )


def opt_in_problem(obj: Obj, service: ServiceView | None) -> str | None:
    """Why this Rollout may not drive the InferenceService (None when it opted in): the
    operator acts for the Rollout's author only on a service whose editors said so."""
    if service is None or service.rollout == obj.name:
        return None
    found = f" (it names Rollout {service.rollout})" if service.rollout else ""
    return (
        f"InferenceService {service.name} has not opted in to this Rollout{found}: someone "
        f"who may edit it runs kubectl annotate inferenceservice {service.name} "
        f"{ROLLOUT_TARGET_ANNOTATION}={obj.name}"
    )


def serving_version(service: ServiceView | None, versions: Mapping[str, VersionInfo]) -> str | None:
    """The ModelVersion whose artifact the InferenceService loads now, if one matches."""
    if service is None:
        return None
    for name in sorted(versions):
        storage = versions[name].storage()
        if storage is not None and same_storage(storage, service.storage):
            return name
    return None


def _parse_status(raw: Mapping[str, Any]) -> RolloutStatus:
    try:
        return RolloutStatus.model_validate(raw)
    except ValidationError:
        # A hand-edited status must not wedge the reconcile: keep what still parses.
        keep = {k: v for k, v in raw.items() if k in ("phase", "handledCommands")}
        try:
            return RolloutStatus.model_validate(keep)
        except ValidationError:
            return RolloutStatus()


def _parse_spec(raw: Mapping[str, Any]) -> RolloutSpec | None:
    try:
        return RolloutSpec.model_validate(raw)
    except ValidationError:
        return None


def due_queries(
    obj: Obj, now: datetime, service: ServiceView | None = None, policy: Policy | None = None
) -> list[Check]:
    """The analysis checks to run before deciding (empty when no round is due); a target the
    namespace's `policy` refuses comes as a refused check, for which nothing is sent."""
    spec = _parse_spec(obj.spec)
    if spec is None:
        return []
    status = _parse_status(obj.status)
    if not analysis_due(spec, status, now):
        return []
    return build_queries(spec, status, obj.namespace, service, policy)


def _deployment(rollout: str, service: str, percent: int, role: str) -> dict[str, Any]:
    return {
        "rollout": rollout,
        "inferenceService": service,
        "trafficPercent": percent,
        "role": role,
    }


def desired_deployments(
    obj: Obj, spec: RolloutSpec, status: RolloutStatus, observed: ServiceView | None
) -> dict[str, dict[str, Any]]:
    """ModelVersion name -> this Rollout's deployment entry, for the versions that serve."""
    service = spec.inference_service.name
    stable, canary = status.stable_model_version, status.canary_model_version
    out: dict[str, dict[str, Any]] = {}
    if status.phase in ROLLOUT_ACTIVE and canary:
        weight = status.canary_weight
        if stable and stable != canary:
            out[stable] = _deployment(obj.name, service, 100 - weight, "stable")
        out[canary] = _deployment(obj.name, service, weight, "canary")
    elif status.phase == "Succeeded" and stable:
        # A finished Rollout vouches for its version only while the service still loads it
        # (another Rollout may have moved the InferenceService on since).
        moved_on = (
            observed is not None
            and status.stable_storage is not None
            and not same_storage(observed.storage, status.stable_storage)
        )
        if not moved_on:
            out[stable] = _deployment(obj.name, service, 100, "stable")
    elif stable and status.stable_storage is not None:
        # Aborted, or waiting after a reset: the stable version has all the traffic.
        out[stable] = _deployment(obj.name, service, 100, "stable")
    return out


def _deployment_actions(
    obj: Obj,
    status: RolloutStatus,
    versions: Mapping[str, VersionInfo],
    wanted: dict[str, dict[str, Any]],
) -> list[UpdateStatus]:
    promoted = status.stable_model_version if status.phase == "Succeeded" else None
    if promoted is not None and promoted not in wanted:
        promoted = None  # moved on by someone else: not a promotion of ours
    actions: list[UpdateStatus] = []
    for name in sorted(set(wanted) | set(versions)):
        version = versions.get(name)
        if version is None:
            continue
        mine = [dict(d) for d in version.deployments if d.get("rollout") == obj.name]
        target = wanted.get(name)
        if mine == ([target] if target else []):
            continue
        replaced_by = promoted if target is None and promoted != name else None
        actions.append(set_deployment(obj.name, name, target, replaced_by))
    return actions


def decide_rollout(obj: Obj, world: World, now: datetime) -> Decision:
    """The next actions, status and Events of a Rollout."""
    d = Draft(obj, _parse_status(obj.status), now, before=obj.status)
    spec = check_spec(d, "Rollout")
    if not isinstance(spec, RolloutSpec):
        d.decision.status_first = True
        return d.finish()
    refused = opt_in_problem(obj, world.service)
    if refused is not None:
        # Nothing is touched: not the service, not the versions' deployment entries.
        if d.condition("TargetOptedIn", False, "NotOptedIn", refused):
            d.event("Warning", "NotOptedIn", refused)
        d.status.phase = d.status.phase or "Pending"
        d.status.message = f"waiting: {refused}"
        d.decision.status_first = True
        return d.finish()
    if any(c.type == "TargetOptedIn" for c in d.status.conditions):
        d.condition("TargetOptedIn", True, "OptedIn", "the InferenceService opted in")
    candidate = world.versions.get(spec.model_version)
    problem = version_problem(spec.model_version, candidate)
    first_traffic: tuple[str, str] | None = None
    starting = d.status.phase in (None, "Pending") or (
        d.status.canary_model_version not in (None, spec.model_version)
    )
    if problem is None and candidate is not None and candidate.parsed is not None and starting:
        first_traffic = first_traffic_check(d, candidate.parsed, spec.model_version, world)
    observed = Observed(
        service=world.service,
        candidate=candidate.storage() if candidate else None,
        candidate_problem=problem[1] if problem else None,
        candidate_reason=problem[0] if problem else "ModelVersionReady",
        first_traffic_problem=first_traffic,
        serving_version=serving_version(world.service, world.versions),
        annotations=obj.annotations,
        measurements=world.measurements,
    )
    desired, service = advance(d, spec, observed), world.service
    after = d.status
    if desired is not None and service is not None and not is_applied(service, desired):
        d.act(patch_predictor(service.name, build_predictor_patch(desired)))
    d.act(
        *_deployment_actions(
            obj, after, world.versions, desired_deployments(obj, spec, after, world.service)
        )
    )
    # The status records the stable version and the step before the InferenceService is
    # touched: acting first, a crash or an API error between the two left a canary patched
    # with no record of the rollout, and the next run took the canary for the stable version.
    # A finished rollout is not resynced: its last actions go first, its status when they
    # are done.
    d.decision.status_first = after.phase not in ROLLOUT_FINISHED
    return d.finish()
