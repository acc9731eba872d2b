"""The InferenceService as the canary sees it (storage, split, readiness) and the patch to apply.

KServe splits traffic between the last rolled-out revision and the latest ready one by
`spec.predictor.canaryTrafficPercent`; a new `storageUri` makes a new revision. A step's
clock may start only once KServe has observed our spec, the new revision is ready and the
split it reports is the one we asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from whetstone_operator.api.names import ROLLOUT_TARGET_ANNOTATION
from whetstone_operator.api.rollout import PredictorStorage, StorageUri

# An adapter is served on top of its base model, each fetched by KServe's storage
# initializer into a fixed folder; the serving runtime's arguments can name these two
# paths once and for all, so they never change from one version to the next.
BASE_PATH = "/mnt/models/base"
ADAPTER_PATH = "/mnt/models/adapter"


@dataclass(frozen=True)
class Traffic:
    """One entry of status.components.predictor.traffic."""

    revision: str
    percent: int
    latest: bool = False
    tag: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class ServiceView:
    """What the canary needs to know about an InferenceService."""

    name: str
    generation: int = 1
    observed_generation: int | None = None
    storage: PredictorStorage = field(default_factory=PredictorStorage)
    canary_traffic_percent: int | None = None
    ready: bool = False
    ready_message: str = ""
    latest_ready_revision: str | None = None
    latest_created_revision: str | None = None
    traffic: tuple[Traffic, ...] = ()
    model_form: bool = True
    rollout: str | None = None  # the Rollout the service opted in to (its annotation)

    def url_of(self, revision: str | None) -> str | None:
        """The tag-routed URL reaching `revision` alone (KServe's tag routing), if reported."""
        return next(
            (t.url for t in self.traffic if revision and t.revision == revision and t.url), None
        )

    def percent_of(self, revision: str | None) -> int:
        """Traffic (%) KServe reports for `revision`."""
        return sum(t.percent for t in self.traffic if revision and t.revision == revision)

    def serving_revision(self) -> str | None:
        """The revision with the most traffic (the stable one before a canary starts)."""
        if self.traffic:
            return max(self.traffic, key=lambda t: t.percent).revision
        return self.latest_ready_revision


@dataclass(frozen=True)
class Desired:
    """The predictor fields a rollout wants: storage and the canary share (None: cleared)."""

    storage: PredictorStorage
    canary_traffic_percent: int | None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _storage(predictor: Mapping[str, Any]) -> PredictorStorage:
    # KServe: spec.predictor.model.storageUri, or several on spec.predictor.storageUris.
    uris = predictor.get("storageUris")
    entries = None
    # Built unchecked: a view of someone else's object must not fail on values beyond the
    # bounds of our status (a status write would say so instead).
    if isinstance(uris, list):
        entries = [
            StorageUri.model_construct(uri=str(u.get("uri", "")), mount_path=u.get("mountPath"))
            for u in uris
            if isinstance(u, Mapping)
        ]
    uri = (predictor.get("model", {}) or {}).get("storageUri")
    return PredictorStorage.model_construct(
        storage_uri=str(uri) if uri else None, storage_uris=entries or None
    )


def service_view(body: Mapping[str, Any]) -> ServiceView:
    """A ServiceView from an InferenceService object."""
    meta = body.get("metadata", {}) or {}
    predictor = (body.get("spec", {}) or {}).get("predictor", {}) or {}
    status = body.get("status", {}) or {}
    component = (status.get("components", {}) or {}).get("predictor", {}) or {}
    ready = next((c for c in status.get("conditions", []) or [] if c.get("type") == "Ready"), None)
    traffic = tuple(
        Traffic(
            revision=str(t.get("revisionName", "")),
            percent=_int_or_none(t.get("percent")) or 0,
            latest=bool(t.get("latestRevision", False)),
            tag=str(t["tag"]) if t.get("tag") else None,
            url=str(t["url"]) if t.get("url") else None,
        )
        for t in component.get("traffic", []) or []
        if t.get("revisionName")
    )
    return ServiceView(
        name=str(meta.get("name", "")),
        generation=_int_or_none(meta.get("generation")) or 1,
        observed_generation=_int_or_none(status.get("observedGeneration")),
        storage=_storage(predictor),
        canary_traffic_percent=_int_or_none(predictor.get("canaryTrafficPercent")),
        ready=ready is not None and ready.get("status") == "True",
        ready_message=str((ready or {}).get("message") or (ready or {}).get("reason") or ""),
        latest_ready_revision=component.get("latestReadyRevision"),
        latest_created_revision=component.get("latestCreatedRevision"),
        traffic=traffic,
        model_form=isinstance(predictor.get("model"), Mapping),
        rollout=(meta.get("annotations") or {}).get(ROLLOUT_TARGET_ANNOTATION),
    )


def candidate_storage(uri: str, artifact_format: str, base_uri: str | None) -> PredictorStorage:
    """What the predictor loads for an artifact: its URI, or for an adapter the base model
    and the adapter side by side (KServe's storageUris, one fixed folder each)."""
    if artifact_format == "adapter" and base_uri:
        return PredictorStorage(
            storage_uris=[
                StorageUri(uri=base_uri, mount_path=BASE_PATH),
                StorageUri(uri=uri, mount_path=ADAPTER_PATH),
            ]
        )
    return PredictorStorage(storage_uri=uri)


def _norm(uri: str | None) -> str | None:
    return uri.rstrip("/") if uri else None


def same_storage(a: PredictorStorage, b: PredictorStorage) -> bool:
    """Equal up to trailing slashes (s3://b/k/ and s3://b/k name the same folder)."""
    if _norm(a.storage_uri) != _norm(b.storage_uri):
        return False
    ua = [(_norm(u.uri), u.mount_path) for u in a.storage_uris or []]
    ub = [(_norm(u.uri), u.mount_path) for u in b.storage_uris or []]
    return ua == ub


def is_applied(service: ServiceView, desired: Desired) -> bool:
    """The InferenceService spec already says what `desired` says."""
    return (
        same_storage(service.storage, desired.storage)
        and service.canary_traffic_percent == desired.canary_traffic_percent
    )


def build_predictor_patch(desired: Desired) -> dict[str, Any]:
    """A JSON merge patch of the InferenceService setting storage and split (null clears)."""
    storage = desired.storage.wire()
    return {
        "spec": {
            "predictor": {
                "canaryTrafficPercent": desired.canary_traffic_percent,
                "storageUris": storage.get("storageUris"),
                "model": {"storageUri": storage.get("storageUri")},
            }
        }
    }


def check_ready(service: ServiceView, desired: Desired) -> tuple[bool, str]:
    """Whether KServe serves `desired`: spec observed, latest revision ready, split applied."""
    if not is_applied(service, desired):
        return False, f"InferenceService {service.name} does not have the desired spec yet"
    if service.observed_generation is None or service.observed_generation < service.generation:
        return False, (
            f"KServe has not yet observed generation {service.generation} of "
            f"InferenceService {service.name}"
        )
    if not service.ready:
        detail = f": {service.ready_message}" if service.ready_message else ""
        return False, f"InferenceService {service.name} is not Ready{detail}"
    created, ready = service.latest_created_revision, service.latest_ready_revision
    if not ready or (created and created != ready):
        return False, f"revision {created} is not ready yet (latest ready: {ready})"
    want = 100 if desired.canary_traffic_percent is None else desired.canary_traffic_percent
    got = service.percent_of(ready)
    if got != want:
        return False, f"revision {ready} has {got}% of the traffic, waiting for {want}%"
    return True, f"revision {ready} is ready with {want}% of the traffic"
