"""The only module that writes to the Kubernetes API (besides kopf's own status patches).

A small synchronous REST client over the credentials kopf logs in with (one login for both),
so the operator needs no Kubernetes client library. Creates are idempotent (an existing object
of the same name counts as done) and deletes tolerate absence, so executing a decision twice
is harmless.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import threading
import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any

import kopf

from whetstone_operator.api import GROUP, VERSION

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
TIMEOUT_SECONDS = 60.0
_POOL_SIZE = 32  # above kopf's 20 workers: a connection per concurrent handler
_METHODS = {"create": "POST", "get": "GET", "patch": "PATCH", "delete": "DELETE"}
_SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class ApiException(Exception):  # noqa: N818  (the name callers know from the kubernetes client)
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"({status}) {reason}: {body[:500]}")
        self.status, self.reason, self.body = status, reason, body


def login(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo:
    """In-cluster service account when running in a pod, else the kubeconfig (KUBECONFIG or
    ~/.kube/config): the same choice as the kubernetes client's own loaders."""
    settings = settings or kopf.OperatorSettings()
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if host and port and _SA_TOKEN.exists():
        info = kopf.login_with_service_account(settings=settings)
        if info is not None:
            host = f"[{host}]" if ":" in host else host
            # The service's address, not kopf's DNS name: works without cluster DNS too.
            return replace(info, server=f"https://{host}:{port}")
    info = kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("neither an in-cluster service account nor a kubeconfig")
    return info


@kopf.on.login()
def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    # Registered so that kopf uses this login rather than a client library's.
    return login(settings)


class Client:
    """Thread-safe: kopf runs sync handlers in a pool of threads; each request borrows a
    keep-alive connection from a small pool."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        url = urllib.parse.urlsplit(info.server)
        self.https = url.scheme == "https"
        self.host, self.port = url.hostname or "localhost", url.port
        self.prefix = url.path.rstrip("/")
        self.proxy = urllib.parse.urlsplit(info.proxy_url) if info.proxy_url else None
        self.ssl = info.as_ssl_context() if self.https else None
        self.headers = {
            **info.as_http_headers(),
            "Accept": "application/json",
            "User-Agent": "whetstone-operator",
        }
        self.idle: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue(_POOL_SIZE)

    def _connect(self) -> http.client.HTTPConnection:
        host, port = (
            (self.proxy.hostname, self.proxy.port) if self.proxy else (self.host, self.port)
        )
        conn: http.client.HTTPConnection
        if self.https:
            conn = http.client.HTTPSConnection(
                host or self.host, port, timeout=TIMEOUT_SECONDS, context=self.ssl
            )
        else:
            conn = http.client.HTTPConnection(host or self.host, port, timeout=TIMEOUT_SECONDS)
        if self.proxy:
            conn.set_tunnel(self.host, self.port)
        return conn

    def _borrow(self) -> http.client.HTTPConnection:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            return self._connect()

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        """The decoded JSON answer; raises ApiException for any status outside 2xx."""
        data = json.dumps(body).encode() if body is not None else None
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            conn = self._connect() if attempt else self._borrow()
            try:
                conn.request(method, self.prefix + path, body=data, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                # Most likely an idle keep-alive connection the server had closed: once more on
                # a new one (a create repeated after all answers 409, which counts as done).
                if attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if response.will_close:
                conn.close()
            else:
                try:
                    self.idle.put_nowait(conn)
                except queue.Full:
                    conn.close()
            if not 200 <= response.status < 300:
                raise ApiException(
                    response.status, response.reason, payload.decode("utf-8", "replace")
                )
            return json.loads(payload) if payload else None
        raise AssertionError("unreachable")


_client: Client | None = None
_client_lock = threading.Lock()


def _api() -> Client:
    global _client
    with _client_lock:
        if _client is None:
            _client = Client(login())
        return _client


def _relogin(stale: Client) -> None:
    # Service-account tokens rotate: a 401 means read the credentials again.
    global _client
    with _client_lock:
        if _client is stale:
            _client = None


def _call(
    verb: str,
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    *,
    subresource: str | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> Any:
    """One API request; `verb` is the RBAC verb (create, get, patch, delete)."""
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    for attempt in range(2):
        api = _api()
        try:
            return api.request(_METHODS[verb], path, body, content_type)
        except ApiException as exc:
            if exc.status != 401 or attempt:
                raise
            _relogin(api)
    raise AssertionError("unreachable")


def create(body: dict[str, Any]) -> bool:
    """Create `body`; False when an object of that name already exists."""
    kind = body["kind"]
    namespace = body["metadata"]["namespace"]
    try:
        if kind == "ConfigMap":
            _call("create", "", "v1", "configmaps", namespace, body=body)
        elif kind == "Service":
            _call("create", "", "v1", "services", namespace, body=body)
        elif kind == "Job":
            _call("create", "batch", "v1", "jobs", namespace, body=body)
        elif kind == "ModelVersion":
            _call("create", GROUP, VERSION, "modelversions", namespace, body=body)
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
    options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    try:
        if kind == "Job":
            _call("delete", "batch", "v1", "jobs", namespace, name, body=options)
        elif kind == "ConfigMap":
            _call("delete", "", "v1", "configmaps", namespace, name, body=options)
        elif kind == "Service":
            _call("delete", "", "v1", "services", namespace, name, body=options)
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
        return dict(_call("get", GROUP, VERSION, "modelversions", namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def can_approve(userinfo: dict[str, Any], namespace: str, name: str) -> tuple[bool, str]:
    """Ask the API server (SubjectAccessReview) whether the requester may `approve` this
    ModelVersion; returns (allowed, the authorizer's reason)."""
    spec: dict[str, Any] = {
        "user": userinfo.get("username"),
        "uid": userinfo.get("uid"),
        "groups": list(userinfo.get("groups") or []),
        "extra": {k: list(v) for k, v in (userinfo.get("extra") or {}).items()},
        "resourceAttributes": {
            "namespace": namespace,
            "verb": "approve",
            "group": GROUP,
            "resource": "modelversions",
            "name": name,
        },
    }
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {k: v for k, v in spec.items() if v is not None},
    }
    answer = _call("create", "authorization.k8s.io", "v1", "subjectaccessreviews", body=review)
    status = answer.get("status") or {}
    return bool(status.get("allowed")), str(status.get("reason") or "")


def patch_object(plural: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch a FineTuneJob or ModelVersion as kopf writes a handler's patch: the status
    through the status subresource, anything else (labels) on the object itself."""
    status = {"status": patch["status"]} if patch.get("status") else None
    rest = {k: v for k, v in patch.items() if k != "status"}
    if plural == "finetunejobs" and not rest:
        if status:
            _call(
                "patch",
                GROUP,
                VERSION,
                "finetunejobs",
                namespace,
                name,
                subresource="status",
                body=status,
                content_type=MERGE_PATCH,
            )
    elif plural == "modelversions":
        if rest:
            _call(
                "patch",
                GROUP,
                VERSION,
                "modelversions",
                namespace,
                name,
                body=rest,
                content_type=MERGE_PATCH,
            )
        if status:
            _call(
                "patch",
                GROUP,
                VERSION,
                "modelversions",
                namespace,
                name,
                subresource="status",
                body=status,
                content_type=MERGE_PATCH,
            )
    else:
        raise ValueError(f"no patch for {plural} {sorted(patch)}")


# ----------------------------------------------------------------------------- Rollout

ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


def get_rollout(namespace: str, name: str) -> dict[str, Any] | None:
    """The Rollout as stored now (None when it is gone)."""
    try:
        return dict(_call("get", GROUP, VERSION, "rollouts", namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def patch_rollout_status(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """Merge-patch the Rollout's status subresource."""
    _call(
        "patch",
        GROUP,
        VERSION,
        "rollouts",
        namespace,
        name,
        subresource="status",
        body={"status": patch},
        content_type=MERGE_PATCH,
    )


def patch_inference_service_predictor(namespace: str, name: str, patch: dict[str, Any]) -> bool:
    """Merge-patch a KServe InferenceService; False when it does not exist."""
    try:
        _call(
            "patch",
            "serving.kserve.io",
            ISVC_VERSION,
            "inferenceservices",
            namespace,
            name,
            body=patch,
            content_type=MERGE_PATCH,
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
    for _ in range(attempts):
        body = get_model_version(namespace, name)
        if body is None:
            return False
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
            _call(
                "patch",
                GROUP,
                VERSION,
                "modelversions",
                namespace,
                name,
                subresource="status",
                body=patch,
                content_type=MERGE_PATCH,
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
