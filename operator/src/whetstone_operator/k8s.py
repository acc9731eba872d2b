"""The only module that writes to the Kubernetes API (besides kopf's own status patches).

Creates are idempotent (an existing object of the same name counts as done) and deletes
tolerate absence, so executing a decision twice is harmless.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from whetstone_operator.api import GROUP, VERSION

log = logging.getLogger(__name__)

_CUSTOM_PLURALS = {
    "ModelVersion": "modelversions",
    "FineTuneJob": "finetunejobs",
    "Rollout": "rollouts",
}


@cache
def api_client() -> client.ApiClient:
    """An API client from the in-cluster service account, else KUBECONFIG."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def create(body: dict[str, Any]) -> bool:
    """Create `body`; False when an object of that name already exists."""
    kind = body["kind"]
    namespace = body["metadata"]["namespace"]
    api = api_client()
    try:
        if kind == "ConfigMap":
            client.CoreV1Api(api).create_namespaced_config_map(namespace, body)
        elif kind == "Service":
            client.CoreV1Api(api).create_namespaced_service(namespace, body)
        elif kind == "Job":
            client.BatchV1Api(api).create_namespaced_job(namespace, body)
        elif kind in _CUSTOM_PLURALS:
            client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, namespace, _CUSTOM_PLURALS[kind], body
            )
        else:
            raise ValueError(f"no create for kind {kind}")
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    log.info("created %s %s/%s", kind, namespace, body["metadata"]["name"])
    return True


def delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    """Delete an object with background propagation; False when it was already gone."""
    api = api_client()
    options = client.V1DeleteOptions(propagation_policy="Background")
    try:
        if kind == "Job":
            client.BatchV1Api(api).delete_namespaced_job(name, namespace, body=options)
        elif kind == "ConfigMap":
            client.CoreV1Api(api).delete_namespaced_config_map(name, namespace, body=options)
        elif kind == "Service":
            client.CoreV1Api(api).delete_namespaced_service(name, namespace, body=options)
        else:
            raise ValueError(f"no delete for {api_version} {kind}")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    log.info("deleted %s %s/%s", kind, namespace, name)
    return True


def get_model_version(namespace: str, name: str) -> dict[str, Any] | None:
    """The ModelVersion as stored now (None when there is none)."""
    try:
        body = client.CustomObjectsApi(api_client()).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "modelversions", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(body)


def can_approve(userinfo: dict[str, Any], namespace: str, name: str) -> tuple[bool, str]:
    """Ask the API server (SubjectAccessReview) whether the requester may `approve` this
    ModelVersion; returns (allowed, the authorizer's reason)."""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=userinfo.get("username"),
            uid=userinfo.get("uid"),
            groups=list(userinfo.get("groups") or []),
            extra={k: list(v) for k, v in (userinfo.get("extra") or {}).items()},
            resource_attributes=client.V1ResourceAttributes(
                namespace=namespace,
                verb="approve",
                group=GROUP,
                resource="modelversions",
                name=name,
            ),
        )
    )
    answer = client.AuthorizationV1Api(api_client()).create_subject_access_review(review)
    return bool(answer.status.allowed), str(answer.status.reason or "")


# ----------------------------------------------------------------------------- Rollout

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MERGE_PATCH = "application/merge-patch+json"


def get_rollout(namespace: str, name: str) -> dict[str, Any] | None:
    """The Rollout as stored now (None when it is gone)."""
    try:
        body = client.CustomObjectsApi(api_client()).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "rollouts", name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(body)


def patch_rollout_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch the Rollout's status subresource."""
    client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "rollouts", name, {"status": patch}, _content_type=MERGE_PATCH
    )


def patch_inference_service_predictor(namespace: str, name: str, patch: dict[str, Any]) -> bool:
    """Merge-patch a KServe InferenceService; False when it does not exist."""
    try:
        client.CustomObjectsApi(api_client()).patch_namespaced_custom_object(
            ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name, patch, _content_type=MERGE_PATCH
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    log.info("patched InferenceService %s/%s: %s", namespace, name, patch)
    return True


def set_model_version_deployment(
    namespace: str,
    name: str,
    rollout: str,
    entry: dict[str, Any] | None,
    superseded_by: str | None = None,
    attempts: int = 5,
) -> bool:
    """Replace `rollout`'s entry in a ModelVersion's status.deployments (None removes it),
    leaving other Rollouts' entries alone; a version that serves again loses supersededBy,
    one replaced on promotion gets it. Optimistic on resourceVersion; False when the
    ModelVersion does not exist."""
    api = client.CustomObjectsApi(api_client())
    for _ in range(attempts):
        try:
            body = api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "modelversions", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        status = body.get("status") or {}
        current = list(status.get("deployments") or [])
        wanted = [d for d in current if d.get("rollout") != rollout]
        if entry is not None:
            wanted.append(entry)
        change: dict[str, Any] = {}
        if wanted != current:
            change["deployments"] = wanted
        if entry is not None and status.get("supersededBy"):
            change["supersededBy"] = None
        elif superseded_by and status.get("supersededBy") != superseded_by:
            change["supersededBy"] = superseded_by
        if not change:
            return True
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": change,
        }
        try:
            api.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "modelversions", name, patch, _content_type=MERGE_PATCH
            )
        except ApiException as exc:
            if exc.status == 409:
                continue
            if exc.status == 404:
                return False
            raise
        log.info("ModelVersion %s/%s status: %s", namespace, name, change)
        return True
    raise RuntimeError(f"ModelVersion {namespace}/{name}: deployments still conflicting")
