"""The only module that writes to the Kubernetes API (besides kopf's own watches and patches).

Five generic verbs (`create`, `get`, `list_objects`, `patch`, `delete`) over the `kubernetes`
package's ApiClient, for the kinds and verbs that `KINDS` declares (and the chart grants).
Creates are idempotent (an existing object of the same name counts as done) and deletes
tolerate absence, so executing a decision twice is harmless. One credentials source,
`configuration()`, serves both these requests and kopf's login.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import kopf
from kubernetes.client.api_client import ApiClient
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException as ApiException
from kubernetes.config import kube_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import load_incluster_config
from urllib3 import BaseHTTPResponse
from urllib3.util.retry import Retry

from whetstone_operator.api import GROUP, VERSION

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT_SECONDS = 60.0
POOL_SIZE = 32  # above kopf's 20 sync-handler threads: a connection per concurrent request
RETRY_AFTER_MAX_SECONDS = 30.0
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class Resource(NamedTuple):
    """Where a kind lives, and what this module may do to it: RBAC verbs on the object, or
    `verb/subresource` (e.g. `patch/status`). tests/unit/test_rbac.py holds these against the
    chart's rules; any other request is refused before it is sent."""

    api_version: str
    plural: str
    verbs: str
    namespaced: bool = True


API_VERSION = f"{GROUP}/{VERSION}"
KINDS: dict[str, Resource] = {
    "ConfigMap": Resource("v1", "configmaps", "create get"),
    "Service": Resource("v1", "services", "create get"),
    "Pod": Resource("v1", "pods", "get"),
    "Job": Resource("batch/v1", "jobs", "create get delete"),
    "FineTuneJob": Resource(API_VERSION, "finetunejobs", "get patch/status"),
    "ModelVersion": Resource(API_VERSION, "modelversions", "create get patch patch/status"),
    "Rollout": Resource(API_VERSION, "rollouts", "get patch/status"),
    "InferenceService": Resource("serving.kserve.io/v1beta1", "inferenceservices", "get patch"),
    "PlatformPolicy": Resource(
        API_VERSION, "platformpolicies", "get list patch/status", namespaced=False
    ),
    "Namespace": Resource("v1", "namespaces", "get", namespaced=False),
    "SubjectAccessReview": Resource(
        "authorization.k8s.io/v1", "subjectaccessreviews", "create", namespaced=False
    ),
}


class _Retry(Retry):
    # A handler thread never sleeps longer than this, whatever a server asks.
    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, RETRY_AFTER_MAX_SECONDS)


# 429 and 5xx are retried for every verb: a repeated create answers 409 (done), a repeated
# merge patch or delete converges to the same object.
RETRY = _Retry(
    total=8,
    connect=3,
    read=2,
    status=5,
    redirect=0,
    backoff_factor=0.5,
    backoff_max=8.0,
    status_forcelist=(429, 500, 502, 503, 504),
    allowed_methods=frozenset({"GET", "POST", "PATCH", "DELETE"}),
    respect_retry_after_header=True,
    raise_on_status=False,
)


# ----------------------------------------------------------------------------- credentials


class _Credentials(NamedTuple):
    config: Configuration
    namespace: str | None
    expiry: datetime.datetime | None
    proxy: str | None


def _load_credentials() -> _Credentials:
    config = Configuration()
    try:
        load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
    except ConfigException:
        pass
    else:
        namespace = _SA_NAMESPACE.read_text().strip() if _SA_NAMESPACE.exists() else None
        return _Credentials(config, namespace or None, None, None)
    paths = os.environ.get("KUBECONFIG") or "~/.kube/config"
    merged = kube_config.KubeConfigMerger(paths).config  # type: ignore[no-untyped-call]
    if merged is None:
        raise ConfigException(f"neither an in-cluster service account nor a kubeconfig ({paths})")
    # The loader runs `exec` credential plugins and re-runs them when their token expires.
    loader = kube_config.KubeConfigLoader(  # type: ignore[no-untyped-call]
        config_dict=merged, config_base_path=None
    )
    loader.load_and_set(config)  # type: ignore[no-untyped-call]
    context = loader.current_context.get("context") or {}
    return _Credentials(
        config,
        context.get("namespace"),
        getattr(loader, "expiry", None),
        getattr(loader, "proxy", None),
    )


def configuration() -> Configuration:
    """The credentials of both kopf's login and this module's requests: the in-cluster service
    account when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config), whose
    user may be a token, a client certificate or an `exec` credential plugin."""
    return _load_credentials().config


def login(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo:
    """kopf's connection info from `configuration()`'s source."""
    try:
        config, namespace, expiry, proxy = _load_credentials()
    except ConfigException as exc:
        raise kopf.LoginError(str(exc)) from exc
    header = config.get_api_key_with_prefix("BearerToken") or ""
    scheme, _, token = header.partition(" ") if " " in header else ("", "", header)
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        default_namespace=namespace,
        proxy_url=proxy,
        trust_env=settings.networking.trust_env if settings else False,
        expiration=expiry,
    )


@kopf.on.login()
def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    # Registered so that kopf logs in as this module does (not with its own fallbacks).
    return login(settings)


# ----------------------------------------------------------------------------- requests

_client: ApiClient | None = None
_client_lock = threading.Lock()
_auth_lock = threading.Lock()


def _api() -> ApiClient:
    global _client
    with _client_lock:
        if _client is None:
            config = configuration()
            config.retries = RETRY
            config.connection_pool_maxsize = POOL_SIZE
            client = ApiClient(config)
            client.user_agent = "whetstone-operator"
            _client = client
        return _client


def _relogin(stale: ApiClient) -> None:
    # Service-account tokens rotate and exec tokens expire: a 401 means read them again.
    global _client
    with _client_lock:
        if _client is stale:
            _client = None


def _request(method: str, path: str, body: Any = None, content_type: str = JSON) -> Any:
    """The decoded JSON answer; raises ApiException for any status outside 2xx (after the
    retries of RETRY, and one fresh login on 401)."""
    for attempt in range(2):
        api = _api()
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        # An expired token is refreshed here, maybe by running an exec plugin: by one thread.
        with _auth_lock:
            request = api.param_serialize(
                method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
            )
        response = api.call_api(*request, _request_timeout=TIMEOUT_SECONDS)
        data = response.read()  # type: ignore[no-untyped-call]
        if 200 <= response.status < 300:
            return json.loads(data) if data else None
        if response.status == 401 and attempt == 0:
            _relogin(api)
            continue
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    raise AssertionError("unreachable")


def _path(
    api_version: str,
    kind: str,
    verb: str,
    namespace: str | None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    entry = KINDS.get(kind)
    wanted = f"{verb}/{subresource}" if subresource else verb
    if entry is None or wanted not in entry.verbs.split():
        raise ValueError(f"no {wanted} for kind {kind}: not declared in k8s.KINDS")
    group = api_version.rpartition("/")[0]
    if group != entry.api_version.rpartition("/")[0]:
        raise ValueError(f"{kind} is not in {api_version}")
    if bool(namespace) != entry.namespaced:
        raise ValueError(f"{kind} is {'' if entry.namespaced else 'not '}namespaced")
    path = f"/apis/{api_version}" if group else f"/api/{api_version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{entry.plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _post(body: dict[str, Any]) -> Any:
    kind = body.get("kind", "")
    entry = KINDS.get(kind)
    api_version = body.get("apiVersion") or (entry.api_version if entry else "")
    namespace = (body.get("metadata") or {}).get("namespace")
    return _request("POST", _path(api_version, kind, "create", namespace), body)


# ----------------------------------------------------------------------------- generic verbs


def create(body: dict[str, Any]) -> bool:
    """Create `body`; False when an object of that name already exists."""
    try:
        _post(body)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    meta = body["metadata"]
    log.info("created %s %s/%s", body["kind"], meta.get("namespace"), meta["name"])
    return True


def create_review(body: dict[str, Any]) -> dict[str, Any]:
    """Submit a cluster-scoped review (SubjectAccessReview); the server's answer, with its
    status filled in."""
    return dict(_post(body))


def get(api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    """The object as stored now (None when there is none)."""
    try:
        return dict(_request("GET", _path(api_version, kind, "get", namespace, name)))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def list_objects(api_version: str, kind: str, namespace: str | None) -> list[dict[str, Any]]:
    """Every object of a kind (in `namespace`, or cluster-scoped)."""
    answer = _request("GET", _path(api_version, kind, "list", namespace))
    return [dict(item) for item in (answer or {}).get("items") or []]


def patch(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str,
    patch: dict[str, Any],
    *,
    subresource: str | None = None,
) -> dict[str, Any] | None:
    """JSON-merge-patch the object (or its `subresource`); the object the server answered,
    None when there is none."""
    path = _path(api_version, kind, "patch", namespace, name, subresource)
    try:
        return dict(_request("PATCH", path, patch, MERGE_PATCH))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def delete(api_version: str, kind: str, namespace: str | None, name: str) -> bool:
    """Delete an object with background propagation; False when it was already gone."""
    options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
    try:
        _request("DELETE", _path(api_version, kind, "delete", namespace, name), options)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    log.info("deleted %s %s/%s", kind, namespace, name)
    return True


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
    status = create_review(review).get("status") or {}
    return bool(status.get("allowed")), str(status.get("reason") or "")
