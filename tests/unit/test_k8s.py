"""k8s.py against a scripted loopback HTTP server: paths, verbs, bodies, idempotence, retries,
re-login; and its login (kubeconfig token, exec plugin, in-cluster service account)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.configuration import Configuration
from kubernetes.config import incluster_config

from whetstone_operator import k8s
from whetstone_operator.handlers import runtime
from whetstone_operator.reconcile.rollout import set_deployment

from tests.loopback import LoopbackServer, QuietHandler

API = "whetstone.dev/v1alpha1"


class Server:
    """Answers each request with the next scripted (status, body[, headers]); records what
    came."""

    def __init__(self) -> None:
        self.answers: list[tuple[Any, ...]] = []
        self.seen: list[dict[str, Any]] = []
        outer = self

        class Handler(QuietHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                outer.seen.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "type": self.headers.get("Content-Type"),
                        "body": json.loads(raw) if raw else None,
                        "at": time.monotonic(),
                    }
                )
                status, body, *extra = outer.answers.pop(0) if outer.answers else (200, {})
                headers: dict[str, str] = extra[0] if extra else {}
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = do_DELETE = _any

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.url


def config(url: str, token: str) -> Configuration:
    return Configuration(host=url, api_key={"BearerToken": f"Bearer {token}"})


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    srv = Server()
    monkeypatch.setattr(k8s, "configuration", lambda: config(srv.url, "t1"))
    monkeypatch.setattr(k8s, "_client", None)
    yield srv
    srv.loopback.close()


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "RETRY", k8s.RETRY.new(backoff_factor=0))


def job(name: str = "j") -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "ns"}}


# ----------------------------------------------------------------------------- verbs


def test_create_posts_to_the_collection_and_counts_409_as_done(server: Server) -> None:
    server.answers = [(201, job()), (409, {"reason": "AlreadyExists"})]
    assert k8s.create(job()) is True
    assert k8s.create(job()) is False
    first = server.seen[0]
    assert (first["method"], first["path"]) == ("POST", "/apis/batch/v1/namespaces/ns/jobs")
    assert first["auth"] == "Bearer t1" and first["body"] == job()


def test_create_raises_other_errors_and_refuses_unknown_kinds(
    server: Server, quick_retries: None
) -> None:
    # A 5xx is retried: it raises once the retries are spent.
    server.answers = [(500, {"message": "boom"})] * (k8s.RETRY.status + 1)
    with pytest.raises(k8s.ApiException) as caught:
        k8s.create({"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}})
    assert caught.value.status == 500 and "boom" in caught.value.body
    assert server.seen[0]["path"] == "/api/v1/namespaces/ns/configmaps"
    assert len(server.seen) == k8s.RETRY.status + 1
    server.answers = [(422, {"message": "invalid"})]
    with pytest.raises(k8s.ApiException) as caught:
        k8s.create(job())
    assert caught.value.status == 422
    with pytest.raises(ValueError, match="Secret"):
        k8s.create({"kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}})


def test_delete_propagates_in_background_and_tolerates_absence(server: Server) -> None:
    server.answers = [(200, {}), (404, {})]
    assert k8s.delete("batch/v1", "Job", "ns", "j") is True
    assert k8s.delete("batch/v1", "Job", "ns", "j") is False
    assert server.seen[0]["method"] == "DELETE"
    assert server.seen[0]["path"] == "/apis/batch/v1/namespaces/ns/jobs/j"
    assert server.seen[0]["body"]["propagationPolicy"] == "Background"


def test_get_is_none_on_404(server: Server) -> None:
    server.answers = [(404, {}), (200, {"metadata": {"name": "mv"}})]
    assert k8s.get(API, "ModelVersion", "ns", "mv") is None
    assert k8s.get(API, "ModelVersion", "ns", "mv") == {"metadata": {"name": "mv"}}
    assert server.seen[1]["path"] == "/apis/whetstone.dev/v1alpha1/namespaces/ns/modelversions/mv"


def test_paths_of_a_custom_resource_a_core_kind_and_a_status_subresource(
    server: Server,
) -> None:
    answered = {"metadata": {"name": "r"}, "status": {"phase": "Progressing"}}
    server.answers = [(200, {}), (200, {}), (200, answered), (200, {}), (404, {})]
    k8s.get(API, "FineTuneJob", "ns", "ftj")
    k8s.get("v1", "Pod", "ns", "p")
    patched = k8s.patch(API, "Rollout", "ns", "r", {"status": {"x": 1}}, subresource="status")
    k8s.patch("serving.kserve.io/v1beta1", "InferenceService", "ns", "isvc", {"spec": {}})
    assert k8s.patch(API, "ModelVersion", "ns", "gone", {"metadata": {"labels": {}}}) is None
    assert patched == answered
    assert [(s["method"], s["path"]) for s in server.seen] == [
        ("GET", "/apis/whetstone.dev/v1alpha1/namespaces/ns/finetunejobs/ftj"),
        ("GET", "/api/v1/namespaces/ns/pods/p"),
        ("PATCH", "/apis/whetstone.dev/v1alpha1/namespaces/ns/rollouts/r/status"),
        ("PATCH", "/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices/isvc"),
        ("PATCH", "/apis/whetstone.dev/v1alpha1/namespaces/ns/modelversions/gone"),
    ]
    assert server.seen[2]["type"] == k8s.MERGE_PATCH
    assert server.seen[2]["body"] == {"status": {"x": 1}}


def test_what_the_kinds_table_does_not_declare_is_never_sent(server: Server) -> None:
    for call, match in [
        (lambda: k8s.patch("v1", "Pod", "ns", "p", {}), "patch for kind Pod"),
        (lambda: k8s.delete(API, "FineTuneJob", "ns", "f"), "delete for kind FineTuneJob"),
        (lambda: k8s.patch(API, "FineTuneJob", "ns", "f", {}), "patch for kind FineTuneJob"),
        (lambda: k8s.get("apps/v1", "Job", "ns", "j"), "not in apps/v1"),
        (lambda: k8s.get("v1", "Pod", None, "p"), "Pod is namespaced"),
        (lambda: k8s.get("v1", "Secret", "ns", "s"), "Secret"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
    assert server.seen == []


def test_deployment_patch_is_optimistic_and_retries_a_conflict(server: Server) -> None:
    stored = {"metadata": {"resourceVersion": "7"}, "status": {"deployments": []}}
    server.answers = [(200, stored), (409, {}), (200, stored), (200, {})]
    entry = {"rollout": "r", "weight": 5}
    runtime.execute(set_deployment("r", "mv", entry), "ns")
    patches = [s for s in server.seen if s["method"] == "PATCH"]
    assert len(patches) == 2
    assert patches[0]["path"].endswith("/modelversions/mv/status")
    assert patches[0]["type"] == k8s.MERGE_PATCH
    assert patches[0]["body"] == {
        "metadata": {"resourceVersion": "7"},
        "status": {"deployments": [entry]},
    }


def test_subject_access_review_omits_unknown_fields(server: Server) -> None:
    server.answers = [(201, {"status": {"allowed": True, "reason": "RBAC: allowed"}})]
    user = {"username": "alice", "groups": ["dev"]}
    assert k8s.can_approve(user, "ns", "mv") == (True, "RBAC: allowed")
    sent = server.seen[0]
    assert sent["path"] == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    assert "uid" not in sent["body"]["spec"]
    assert sent["body"]["spec"]["resourceAttributes"]["verb"] == "approve"


# ----------------------------------------------------------------------------- retries


def test_a_429_waits_for_retry_after(server: Server) -> None:
    server.answers = [(429, {}, {"Retry-After": "1"}), (200, {"metadata": {"name": "r"}})]
    started = time.monotonic()
    assert k8s.get(API, "Rollout", "ns", "r") == {"metadata": {"name": "r"}}
    assert time.monotonic() - started >= 1.0
    assert len(server.seen) == 2
    assert server.seen[1]["at"] - server.seen[0]["at"] >= 1.0


def test_a_503_twice_is_retried_with_backoff(server: Server) -> None:
    server.answers = [(503, {}), (503, {}), (200, {"metadata": {"name": "mv"}})]
    assert k8s.get(API, "ModelVersion", "ns", "mv") == {"metadata": {"name": "mv"}}
    assert len(server.seen) == 3
    # urllib3: the first retry at once, then backoff_factor * 2**(n-1).
    assert server.seen[2]["at"] - server.seen[1]["at"] >= 2 * k8s.RETRY.backoff_factor


def test_every_verb_is_retried(server: Server) -> None:
    server.answers = [
        (503, {}),
        (201, job()),
        (429, {}, {"Retry-After": "0"}),
        (200, {}),
        (502, {}),
        (200, {}),
    ]
    assert k8s.create(job()) is True
    assert k8s.patch(API, "ModelVersion", "ns", "mv", {"metadata": {}}) == {}
    assert k8s.delete("batch/v1", "Job", "ns", "j") is True
    assert [s["method"] for s in server.seen] == [
        "POST",
        "POST",
        "PATCH",
        "PATCH",
        "DELETE",
        "DELETE",
    ]


def test_a_create_repeated_after_a_lost_answer_counts_as_done(server: Server) -> None:
    # The first POST went through but its answer was a 503: the retry meets the object.
    server.answers = [(503, {}), (409, {"reason": "AlreadyExists"})]
    assert k8s.create(job()) is False


def test_a_401_logs_in_again_once(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["old", "new", "newer"])
    monkeypatch.setattr(k8s, "configuration", lambda: config(server.url, next(tokens)))
    server.answers = [(401, {}), (200, {"metadata": {"name": "r"}}), (401, {}), (401, {})]
    assert k8s.get(API, "Rollout", "ns", "r") == {"metadata": {"name": "r"}}
    with pytest.raises(k8s.ApiException) as caught:
        k8s.get(API, "Rollout", "ns", "r")
    assert caught.value.status == 401
    # Once per request: a second 401 right after logging in again is an answer.
    assert [s["auth"] for s in server.seen] == [
        "Bearer old",
        "Bearer new",
        "Bearer new",
        "Bearer newer",
    ]


def test_the_client_pools_more_connections_than_kopf_has_threads(server: Server) -> None:
    k8s.get(API, "Rollout", "ns", "r")
    api = k8s._api()
    assert api.configuration.connection_pool_maxsize == k8s.POOL_SIZE > 20
    assert api.configuration.retries is k8s.RETRY


# ----------------------------------------------------------------------------- login


def write_kubeconfig(
    path: Path, user: dict[str, Any], server: str = "https://10.0.0.1:6443"
) -> Path:
    config = {
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_login_reads_the_kubeconfig_outside_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outside_a_cluster: None
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", {"token": "abc"})))
    info = k8s.login()
    assert (info.server, info.token, info.default_namespace) == (
        "https://10.0.0.1:6443",
        "abc",
        "ns",
    )
    assert k8s.configuration().get_api_key_with_prefix("BearerToken") == "Bearer abc"


def exec_user(plugin: Path, *args: str) -> dict[str, Any]:
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin), *args],
            "interactiveMode": "Never",
        }
    }


def test_an_expired_exec_token_is_refreshed_before_the_next_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outside_a_cluster: None
) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """
            import json, pathlib, sys
            token = pathlib.Path(sys.argv[1]).read_text()
            print(json.dumps({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": token, "expirationTimestamp": "2000-01-01T00:00:00Z"},
            }))
            """
        )
    )
    srv = Server()
    token = tmp_path / "token"
    user = exec_user(plugin, str(token))
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", user, srv.url)))
    monkeypatch.setattr(k8s, "_client", None)
    try:
        token.write_text("one")
        k8s.get(API, "Rollout", "ns", "r")
        token.write_text("two")
        k8s.get(API, "Rollout", "ns", "r")
    finally:
        srv.loopback.close()
    assert [s["auth"] for s in srv.seen] == ["Bearer one", "Bearer two"]


def test_login_runs_an_exec_credential_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outside_a_cluster: None
) -> None:
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        textwrap.dedent(
            """
            import json
            print(json.dumps({
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "status": {"token": "from-exec", "expirationTimestamp": "2099-01-02T03:04:05Z"},
            }))
            """
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", exec_user(plugin))))
    info = k8s.login()
    assert (info.scheme, info.token) == ("Bearer", "from-exec")
    assert info.expiration == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert k8s.configuration().get_api_key_with_prefix("BearerToken") == "Bearer from-exec"


def test_login_prefers_the_in_cluster_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text("whetstone-system")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setattr(k8s, "_SA_NAMESPACE", tmp_path / "namespace")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "config", {"token": "x"})))
    info = k8s.login()
    assert (info.server, info.token, info.default_namespace) == (
        "https://10.96.0.1:443",
        "sa-token",
        "whetstone-system",
    )
    assert info.ca_path == str(tmp_path / "ca.crt")


def test_the_operator_loads_no_generated_api_classes() -> None:
    # Only the generic client, its configuration and the config loaders: the per-kind API
    # classes and their models stay out of the operator's memory.
    code = (
        "import sys, whetstone_operator.__main__\n"
        "loaded = [m for m in sys.modules if m.startswith('kubernetes.client.api.')]\n"
        "models = [m for m in sys.modules if m.startswith('kubernetes.client.models.')]\n"
        "assert not loaded and len(models) < 10, (loaded, models)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
