"""k8s.py's REST client against a scripted HTTP server: paths, verbs, bodies, idempotence."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from whetstone_operator import k8s


class Server:
    """Answers each request with the next scripted (status, body); records what came."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.seen: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                server.seen.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "type": self.headers.get("Content-Type"),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status, body = server.answers.pop(0) if server.answers else (200, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _any

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    srv = Server()
    monkeypatch.setattr(k8s, "login", lambda: kopf.ConnectionInfo(server=srv.url, token="t1"))
    monkeypatch.setattr(k8s, "_client", None)
    yield srv
    srv.httpd.shutdown()


def job(name: str = "j") -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "ns"}}


def test_create_posts_to_the_collection_and_counts_409_as_done(server: Server) -> None:
    server.answers = [(201, job()), (409, {"reason": "AlreadyExists"})]
    assert k8s.create(job()) is True
    assert k8s.create(job()) is False
    first = server.seen[0]
    assert (first["method"], first["path"]) == ("POST", "/apis/batch/v1/namespaces/ns/jobs")
    assert first["auth"] == "Bearer t1" and first["body"] == job()


def test_create_raises_other_errors_and_refuses_unknown_kinds(server: Server) -> None:
    server.answers = [(500, {"message": "boom"})]
    with pytest.raises(k8s.ApiException) as caught:
        k8s.create({"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}})
    assert caught.value.status == 500 and "boom" in caught.value.body
    assert server.seen[0]["path"] == "/api/v1/namespaces/ns/configmaps"
    with pytest.raises(ValueError, match="Secret"):
        k8s.create({"kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}})


def test_delete_propagates_in_background_and_tolerates_absence(server: Server) -> None:
    server.answers = [(200, {}), (404, {})]
    assert k8s.delete("batch/v1", "Job", "ns", "j") is True
    assert k8s.delete("batch/v1", "Job", "ns", "j") is False
    assert server.seen[0]["method"] == "DELETE"
    assert server.seen[0]["path"] == "/apis/batch/v1/namespaces/ns/jobs/j"
    assert server.seen[0]["body"]["propagationPolicy"] == "Background"


def test_get_model_version_is_none_when_absent(server: Server) -> None:
    server.answers = [(404, {}), (200, {"metadata": {"name": "mv"}})]
    assert k8s.get_model_version("ns", "mv") is None
    assert k8s.get_model_version("ns", "mv") == {"metadata": {"name": "mv"}}
    assert server.seen[1]["path"] == "/apis/whetstone.dev/v1alpha1/namespaces/ns/modelversions/mv"


def test_deployment_patch_is_optimistic_and_retries_a_conflict(server: Server) -> None:
    stored = {"metadata": {"resourceVersion": "7"}, "status": {"deployments": []}}
    server.answers = [(200, stored), (409, {}), (200, stored), (200, {})]
    entry = {"rollout": "r", "weight": 5}
    assert k8s.set_model_version_deployment("ns", "mv", "r", entry) is True
    patches = [s for s in server.seen if s["method"] == "PATCH"]
    assert len(patches) == 2
    assert patches[0]["path"].endswith("/modelversions/mv/status")
    assert patches[0]["type"] == k8s.MERGE_PATCH
    assert patches[0]["body"] == {
        "metadata": {"resourceVersion": "7"},
        "status": {"deployments": [entry]},
    }


def test_patch_object_splits_status_from_labels(server: Server) -> None:
    patch = {"status": {"phase": "Ready"}, "metadata": {"labels": {"a": "b"}}}
    k8s.patch_object("modelversions", "ns", "mv", patch)
    k8s.patch_object("finetunejobs", "ns", "ftj", {"status": {"phase": "Running"}})
    assert [(s["path"].rsplit("/", 2)[-2:], s["body"]) for s in server.seen] == [
        (["modelversions", "mv"], {"metadata": {"labels": {"a": "b"}}}),
        (["mv", "status"], {"status": {"phase": "Ready"}}),
        (["ftj", "status"], {"status": {"phase": "Running"}}),
    ]
    with pytest.raises(ValueError):
        k8s.patch_object("finetunejobs", "ns", "ftj", {"metadata": {"labels": {}}})


def test_subject_access_review_omits_unknown_fields(server: Server) -> None:
    server.answers = [(201, {"status": {"allowed": True, "reason": "RBAC: allowed"}})]
    user = {"username": "alice", "groups": ["dev"]}
    assert k8s.can_approve(user, "ns", "mv") == (True, "RBAC: allowed")
    sent = server.seen[0]
    assert sent["path"] == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    assert "uid" not in sent["body"]["spec"]
    assert sent["body"]["spec"]["resourceAttributes"]["verb"] == "approve"


def test_a_401_logs_in_again_once(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["old", "new"])
    monkeypatch.setattr(
        k8s, "login", lambda: kopf.ConnectionInfo(server=server.url, token=next(tokens))
    )
    server.answers = [(401, {}), (200, {"metadata": {"name": "r"}})]
    assert k8s.get_rollout("ns", "r") == {"metadata": {"name": "r"}}
    assert [s["auth"] for s in server.seen] == ["Bearer old", "Bearer new"]


def test_login_reads_the_kubeconfig_outside_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "abc"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
        "current-context": "x",
    }
    (tmp_path / "config").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = k8s.login()
    assert (info.server, info.token, info.default_namespace) == (
        "https://10.0.0.1:6443",
        "abc",
        "ns",
    )


def test_the_operator_process_never_loads_the_kubernetes_client() -> None:
    code = "import sys, whetstone_operator.__main__; assert sys.modules['kubernetes'] is None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
