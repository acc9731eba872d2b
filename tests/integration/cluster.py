"""A real Kubernetes control plane on loopback for the integration tests.

etcd + kube-apiserver (RBAC, token file, TokenRequest) + kube-controller-manager
(Job controller, garbage collector, namespace and service-account controllers,
ClusterRole aggregation),
each in its own process group, on free loopback ports, in a temp dir. There is
no scheduler and no kubelet: :class:`Kubelet` plays the kubelet by writing pod
status and :class:`KServe` plays the KServe controller by writing
InferenceService status.

Talking to the API goes through :class:`Kube`, a small stdlib HTTP client, so
that fixtures depend on nothing but the server's REST contract.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import dataclasses
import functools
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"
ISVC_CRD = Path(__file__).resolve().parent / "fixtures" / "inferenceservice-crd.yaml"
sys.path.insert(0, str(REPO_ROOT / "hack"))
from provision import Toolchain  # noqa: E402

T = TypeVar("T")
JSON = dict[str, Any]

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# clusterrole-aggregation fills the built-in edit/view/admin roles from the chart's
# aggregate-to-* ClusterRoles, as on a real cluster.
CONTROLLERS = "job,garbagecollector,namespace,serviceaccount,clusterrole-aggregation"
# The operator's key for signed approval/verification records in tests (see operator_running).
APPROVAL_KEY = "integration-key"


# --------------------------------------------------------------------------- processes

_PROCESSES: set[ManagedProcess] = set()
_TEMP_DIRS: set[Path] = set()
_LOCK = threading.Lock()
_HOOKS_INSTALLED = False


def _set_parent_death_signal() -> None:
    # Children die with the test runner even when it is SIGKILLed.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cleanup_all() -> None:
    """Stop every process started here and remove every temp dir; idempotent."""
    with _LOCK:
        procs = list(_PROCESSES)
        dirs = list(_TEMP_DIRS)
    for proc in procs:
        proc.stop(timeout=5)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
        with _LOCK:
            _TEMP_DIRS.discard(path)


def _on_signal(signum: int, _frame: object) -> None:
    cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _HOOKS_INSTALLED
    if _HOOKS_INSTALLED:
        return
    _HOOKS_INSTALLED = True
    atexit.register(cleanup_all)
    # SIGINT stays with pytest (KeyboardInterrupt runs fixture teardown + atexit).
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


OWNER_FILE = ".owner-pid"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temp_dirs(prefix: str) -> None:
    """Remove temp dirs left by a run that was SIGKILLed (its owner pid is gone)."""
    for path in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((path / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not _pid_exists(owner):
            shutil.rmtree(path, ignore_errors=True)


def make_temp_dir(prefix: str) -> Path:
    _install_hooks()
    sweep_stale_temp_dirs(prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / OWNER_FILE).write_text(str(os.getpid()))
    with _LOCK:
        _TEMP_DIRS.add(path)
    return path


def remove_temp_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with _LOCK:
        _TEMP_DIRS.discard(path)


class ManagedProcess:
    """A subprocess in its own process group, logged to a file, always reaped."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        _install_hooks()
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal,
        )
        with _LOCK:
            _PROCESSES.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_bytes(self, peak: bool = False) -> int:
        """Resident memory (or its peak so far) of the process; 0 when gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        field = "VmHWM" if peak else "VmRSS"
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", status, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else 0

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait(10)
        # Grandchildren may outlive the leader: sweep the whole group anyway.
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._log.close()
        with _LOCK:
            _PROCESSES.discard(self)
        return self.popen.returncode

    def __hash__(self) -> int:
        return id(self)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str,
) -> T:
    """Poll ``probe`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except (ApiError, OSError, urllib.error.URLError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            hint = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{hint}")
        time.sleep(interval)


@functools.cache
def supports_flag(binary: Path, flag: str) -> bool:
    """Whether ``binary --help`` lists ``flag``."""
    out = subprocess.run(
        [str(binary), "--help"], capture_output=True, text=True, check=False, timeout=30
    )
    return flag in out.stdout + out.stderr


@functools.cache
def kube_minor_version(binary: Path) -> int:
    """Minor version of a Kubernetes binary (``Kubernetes v1.20.2`` -> 20)."""
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    match = re.search(r"v1\.(\d+)", out.stdout + out.stderr)
    return int(match.group(1)) if match else 0


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resource_path(
    api_version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """REST path of a collection or object: ``/api/v1/...`` or ``/apis/<group>/<v>/...``."""
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace is not None:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name is not None:
        parts.append(name)
    if subresource is not None:
        parts.append(subresource)
    return "/".join(parts)


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status object."""

    def __init__(self, method: str, path: str, status: int, body: JSON | str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        self.message = message
        super().__init__(f"{method} {path} -> {status} {self.reason}: {message}")


MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class Kube:
    """Minimal JSON client for the Kubernetes REST API (bearer-token auth).

    With ``impersonate_user`` every request acts as that user and ``impersonate_groups``
    (exactly those groups: add ``system:authenticated`` for discovery and the like).
    """

    def __init__(
        self,
        server: str,
        token: str,
        ca_file: Path,
        *,
        timeout: float = 30,
        impersonate_user: str | None = None,
        impersonate_groups: Sequence[str] = (),
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.impersonate_user = impersonate_user
        self.impersonate_groups = tuple(impersonate_groups)
        if self.impersonate_groups and not impersonate_user:
            raise ValueError("impersonating groups needs a user")
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        self._url = urllib.parse.urlsplit(self.server)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> JSON:
        target = self._url.path + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = [("Authorization", f"Bearer {self.token}"), ("Accept", "application/json")]
        if data is not None:
            headers += [("Content-Type", content_type), ("Content-Length", str(len(data)))]
        if self.impersonate_user:
            headers.append(("Impersonate-User", self.impersonate_user))
            # One header per group: urllib folds repeated headers, so http.client it is.
            headers += [("Impersonate-Group", group) for group in self.impersonate_groups]
        conn = http.client.HTTPSConnection(
            self._url.hostname or "127.0.0.1",
            self._url.port,
            timeout=self.timeout,
            context=self._ssl,
        )
        try:
            conn.putrequest(method, target)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders(data)
            resp = conn.getresponse()
            status, raw = resp.status, resp.read()
        finally:
            conn.close()
        if not 200 <= status < 300:
            try:
                parsed: JSON | str = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiError(method, path, status, parsed)
        if not raw:
            return {}
        try:
            result = json.loads(raw)
        except ValueError:
            return {"text": raw.decode(errors="replace")}
        return result if isinstance(result, dict) else {"items": result}

    # Verbs on object paths (see resource_path).
    def get(self, path: str, **query: str) -> JSON:
        return self.request("GET", path, query=query or None)

    def list(self, path: str, **query: str) -> list[JSON]:
        return list(self.get(path, **query).get("items", []))

    def create(self, path: str, body: JSON) -> JSON:
        return self.request("POST", path, body)

    def replace(self, path: str, body: JSON) -> JSON:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> JSON:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, *, propagation: str | None = None, missing_ok: bool = True) -> JSON:
        body = {"propagationPolicy": propagation} if propagation else None
        try:
            return self.request("DELETE", path, body)
        except ApiError as exc:
            if exc.status == 404 and missing_ok:
                return {}
            raise

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def update_with_retry(
        self, path: str, mutate: Callable[[JSON], JSON | None], attempts: int = 10
    ) -> JSON:
        """GET, mutate, PUT; retry on 409 Conflict (optimistic concurrency)."""
        for _ in range(attempts):
            obj = self.get(path)
            obj = mutate(obj) or obj
            try:
                return self.replace(path, obj)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        raise TimeoutError(f"{path}: still conflicting after {attempts} attempts")


def write_kubeconfig(
    path: Path,
    server: str,
    ca_pem: bytes,
    user: str,
    token: str,
    namespace: str | None = None,
    *,
    impersonate_user: str | None = None,
    impersonate_groups: Sequence[str] = (),
) -> Path:
    """A kubeconfig with a bearer token; with ``impersonate_user`` (kubeconfig ``as`` and
    ``as-groups``) every client of it acts as that user, like ``kubectl --as --as-group``."""
    context: JSON = {"cluster": "whetstone-test", "user": user}
    auth: JSON = {"token": token}
    if impersonate_user:
        auth["as"] = impersonate_user
        if impersonate_groups:
            auth["as-groups"] = list(impersonate_groups)
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "whetstone-test",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": "whetstone-test", "context": context}],
        "current-context": "whetstone-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- control plane


@dataclasses.dataclass
class Timings:
    etcd: float = 0.0
    apiserver: float = 0.0
    crds: float = 0.0
    controller_manager: float = 0.0
    total: float = 0.0


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback."""

    def __init__(
        self, tools: Toolchain, workdir: Path | None = None, apiserver_args: Sequence[str] = ()
    ) -> None:
        self.tools = tools
        self.apiserver_args = list(apiserver_args)
        self.workdir = workdir or make_temp_dir("whetstone-cp-")
        self.processes: dict[str, ManagedProcess] = {}
        self.timings = Timings()
        self.admin_token = secrets.token_hex(16)
        self._kcm_token = secrets.token_hex(16)
        self.server = ""
        self.ca_file = self.workdir / "ca.crt"
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"
        self._admin: Kube | None = None
        self.last_rss: dict[str, int] = {}
        self.peak_rss: dict[str, int] = {}

    # -- lifecycle

    def start(self, crd_files: Iterable[Path] = (), *, timeout: float = 90) -> None:
        """Start everything; CRDs go in before the controller manager so its
        garbage collector discovers them at once."""
        started = time.monotonic()
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            t0 = time.monotonic()
            crd_files = list(crd_files)
            if crd_files:
                self.install_crds(crd_files, timeout=timeout)
            self.timings.crds = time.monotonic() - t0
            self._start_controller_manager(timeout)
        except BaseException:
            self.stop()
            raise
        self.timings.total = time.monotonic() - started

    def stop(self) -> None:
        if any(p.alive() for p in self.processes.values()):
            self.last_rss = self.rss_bytes()
            self.peak_rss = self.rss_bytes(peak=True)
        # Reverse start order: clients of etcd first.
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
        remove_temp_dir(self.workdir)

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _fail(self, name: str, message: str) -> RuntimeError:
        proc = self.processes.get(name)
        tail = proc.tail() if proc else ""
        return RuntimeError(f"{name}: {message}\n--- last log lines ---\n{tail}")

    def _start_etcd(self, timeout: float) -> None:
        t0 = time.monotonic()
        client, peer = free_port(), free_port()
        data = self.workdir / "etcd"
        argv: list[str | os.PathLike[str]] = [
            self.tools.etcd,
            f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}",
            "--log-level=warn",
        ]
        if supports_flag(self.tools.etcd, "--unsafe-no-fsync"):
            # Test data is disposable; fsync dominates latency on shared disks.
            argv.append("--unsafe-no-fsync")
        proc = self.processes["etcd"] = ManagedProcess("etcd", argv, self.workdir / "etcd.log")
        self.etcd_url = f"http://127.0.0.1:{client}"

        def healthy() -> bool:
            if not proc.alive():
                raise self._fail("etcd", f"exited with {proc.popen.returncode}")
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")

        wait_for(healthy, timeout=timeout, what="etcd /health")
        self.timings.etcd = time.monotonic() - t0

    def _start_apiserver(self, timeout: float) -> None:
        t0 = time.monotonic()
        port = free_port()
        certs = self.workdir / "certs"
        certs.mkdir()
        sa_key = self.workdir / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(sa_key), "2048"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},whetstone-admin,whetstone-admin,"system:masters"\n'
            f'{self._kcm_token},system:kube-controller-manager,kcm,"system:masters"\n'
        )
        tokens.chmod(0o600)
        argv: list[str | os.PathLike[str]] = [
            self.tools.kube_apiserver,
            f"--etcd-servers={self.etcd_url}",
            f"--cert-dir={certs}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            # Only before 1.24, which removed it; envtest binaries from
            # KUBEBUILDER_ASSETS can be newer than the 1.20 build.
            *(["--insecure-port=0"] if kube_minor_version(self.tools.kube_apiserver) < 24 else []),
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--token-auth-file={tokens}",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            "--authorization-mode=Node,RBAC",
            # No kubelet mounts tokens here: the admission plugin would reject pods.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *self.apiserver_args,
        ]
        proc = self.processes["kube-apiserver"] = ManagedProcess(
            "kube-apiserver", argv, self.workdir / "kube-apiserver.log"
        )
        self.server = f"https://127.0.0.1:{port}"
        cert = certs / "apiserver.crt"

        def cert_written() -> bool:
            if not proc.alive():
                raise self._fail("kube-apiserver", f"exited with {proc.popen.returncode}")
            return cert.exists() and b"END CERTIFICATE" in cert.read_bytes()

        wait_for(cert_written, timeout=timeout, what="kube-apiserver serving certificate")
        # The self-signed serving cert file carries its CA: trust exactly that.
        self.ca_file.write_bytes(cert.read_bytes())
        write_kubeconfig(
            self.admin_kubeconfig,
            self.server,
            self.ca_file.read_bytes(),
            "whetstone-admin",
            self.admin_token,
        )
        self._admin = Kube(self.server, self.admin_token, self.ca_file)

        def ready() -> bool:
            if not proc.alive():
                raise self._fail("kube-apiserver", f"exited with {proc.popen.returncode}")
            return str(self.admin.get("/readyz").get("text", "")).strip() == "ok"

        wait_for(ready, timeout=timeout, what="kube-apiserver /readyz")
        # RBAC bootstrap roles land shortly after readyz on a fresh etcd.
        wait_for(
            lambda: self.admin.exists("/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"),
            timeout=timeout,
            what="RBAC bootstrap ClusterRoles",
        )
        self.timings.apiserver = time.monotonic() - t0

    def _start_controller_manager(self, timeout: float) -> None:
        t0 = time.monotonic()
        kubeconfig = write_kubeconfig(
            self.workdir / "kcm.kubeconfig",
            self.server,
            self.ca_file.read_bytes(),
            "system:kube-controller-manager",
            self._kcm_token,
        )
        argv: list[str | os.PathLike[str]] = [
            self.tools.kube_controller_manager,
            f"--kubeconfig={kubeconfig}",
            f"--controllers={CONTROLLERS}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            # Insecure serving off where the flag still exists (it went in 1.24).
            *(["--port=0"] if supports_flag(self.tools.kube_controller_manager, "--port ") else []),
            "--secure-port=0",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--profiling=false",
            "--v=1",
        ]
        proc = self.processes["kube-controller-manager"] = ManagedProcess(
            "kube-controller-manager", argv, self.workdir / "kube-controller-manager.log"
        )

        # The serviceaccount controller creating "default" in kube-system proves the
        # manager is up, authenticated and its informers have synced.
        def running() -> bool:
            if not proc.alive():
                raise self._fail("kube-controller-manager", f"exited with {proc.popen.returncode}")
            return self.admin.exists(
                resource_path("v1", "serviceaccounts", "kube-system", "default")
            )

        wait_for(running, timeout=timeout, what="kube-controller-manager")
        self.timings.controller_manager = time.monotonic() - t0

    # -- clients

    @property
    def admin(self) -> Kube:
        if self._admin is None:
            raise RuntimeError("control plane not started")
        return self._admin

    def client(self, token: str) -> Kube:
        return Kube(self.server, token, self.ca_file)

    def impersonating(self, user: str, groups: Sequence[str]) -> Kube:
        """A client with the admin token that acts as ``user`` in exactly ``groups``."""
        return Kube(
            self.server,
            self.admin_token,
            self.ca_file,
            impersonate_user=user,
            impersonate_groups=groups,
        )

    def impersonating_kubeconfig(
        self, path: Path, user: str, groups: Sequence[str], namespace: str | None = None
    ) -> Path:
        """A kubeconfig at ``path`` (admin token, ``as``/``as-groups``) acting as ``user``."""
        return write_kubeconfig(
            path,
            self.server,
            self.ca_file.read_bytes(),
            user,
            self.admin_token,
            namespace,
            impersonate_user=user,
            impersonate_groups=groups,
        )

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.admin_kubeconfig),
            "HOME": str(self.workdir),
        }
        proc = subprocess.run(
            [str(self.tools.kubectl), *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def apply(
        self, manifest: str, *, namespace: str | None = None, kubeconfig: Path | None = None
    ) -> str:
        """``kubectl apply`` a multi-document YAML string as admin (or ``kubeconfig``)."""
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        return self.kubectl(*args, input=manifest, kubeconfig=kubeconfig).stdout

    # -- CRDs

    def install_crds(self, files: Iterable[Path], *, timeout: float = 60) -> list[str]:
        """Create or replace every CRD in ``files``; wait until all are Established."""
        names: list[str] = []
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for path in files:
            for doc in yaml.safe_load_all(Path(path).read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                name = doc["metadata"]["name"]
                try:
                    self.admin.create(base, doc)
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                    current = self.admin.get(f"{base}/{name}")
                    doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    self.admin.replace(f"{base}/{name}", doc)
                names.append(name)
        for name in names:
            self.wait_crd_established(name, timeout=timeout)
        return names

    def wait_crd_established(self, name: str, *, timeout: float = 60) -> JSON:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"

        def established() -> JSON | None:
            crd = self.admin.get(path)
            conditions = {
                c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])
            }
            ok = (
                conditions.get("Established") == "True"
                and conditions.get("NamesAccepted") == "True"
            )
            return crd if ok else None

        crd = wait_for(established, timeout=timeout, what=f"CRD {name} Established")
        group = crd["spec"]["group"]
        served = [v["name"] for v in crd["spec"]["versions"] if v.get("served")]
        plural = crd["spec"]["names"]["plural"]
        # Established precedes discovery by a moment; kubectl needs discovery.
        for version in served:
            wait_for(
                lambda v=version: any(  # type: ignore[misc]
                    r["name"] == plural for r in self.admin.get(f"/apis/{group}/{v}")["resources"]
                ),
                timeout=timeout,
                what=f"discovery of {plural}.{group}/{version}",
            )
        return crd

    # -- identities

    def create_namespace(self, name: str) -> JSON:
        return self.admin.create(
            "/api/v1/namespaces",
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"whetstone.dev/test": "true"}},
            },
        )

    def delete_namespace(self, name: str, *, wait: bool = False, timeout: float = 60) -> None:
        self.admin.delete(f"/api/v1/namespaces/{name}")
        if wait:
            wait_for(
                lambda: not self.admin.exists(f"/api/v1/namespaces/{name}"),
                timeout=timeout,
                what=f"namespace {name} deleted",
            )

    def ensure_service_account(self, namespace: str, name: str) -> JSON:
        path = resource_path("v1", "serviceaccounts", namespace)
        try:
            return self.admin.create(
                path,
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {"name": name, "namespace": namespace},
                },
            )
        except ApiError as exc:
            if exc.status != 409:
                raise
            return self.admin.get(f"{path}/{name}")

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> str:
        """A bound token for the ServiceAccount via the TokenRequest API."""
        self.ensure_service_account(namespace, name)
        answer = self.admin.create(
            resource_path("v1", "serviceaccounts", namespace, name, "token"),
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        return str(answer["status"]["token"])

    def sa_kubeconfig(self, namespace: str, name: str, *, expiration_seconds: int = 3600) -> Path:
        """A kubeconfig that authenticates as ``system:serviceaccount:<ns>:<name>``."""
        token = self.service_account_token(namespace, name, expiration_seconds=expiration_seconds)
        path = self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        return write_kubeconfig(
            path,
            self.server,
            self.ca_file.read_bytes(),
            f"system:serviceaccount:{namespace}:{name}",
            token,
            namespace=namespace,
        )

    def sa_client(self, namespace: str, name: str) -> Kube:
        return self.client(self.service_account_token(namespace, name))

    # -- observation

    def rss_bytes(self, peak: bool = False) -> dict[str, int]:
        return {name: proc.rss_bytes(peak) for name, proc in self.processes.items()}

    def logs(self, name: str) -> str:
        return self.processes[name].logs()

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if not proc.alive():
                raise self._fail(name, f"died with exit code {proc.popen.returncode}")


def start_control_plane(
    tools: Toolchain, crd_files: Iterable[Path] = (), *, attempts: int = 2
) -> ControlPlane:
    """Start a control plane, retrying once: a free port can be taken between
    probing it and the server binding it."""
    files = list(crd_files)
    for attempt in range(1, attempts + 1):
        plane = ControlPlane(tools)
        try:
            plane.start(files)
        except (RuntimeError, TimeoutError):
            if attempt == attempts:
                raise
            continue
        return plane
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- kubelet / KServe


class Kubelet:
    """Plays the kubelet: writes pod status through the pods/status subresource."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def pods(self, namespace: str, selector: str | None = None) -> list[JSON]:
        query = {"labelSelector": selector} if selector else {}
        return self.kube.list(resource_path("v1", "pods", namespace), **query)

    def job_pods(self, namespace: str, job_name: str) -> list[JSON]:
        return self.pods(namespace, f"job-name={job_name}")

    def wait_job_pods(
        self, namespace: str, job_name: str, count: int = 1, *, timeout: float = 60
    ) -> list[JSON]:
        """Pods the Job controller created (it runs for real in the control plane)."""

        def created() -> list[JSON] | None:
            pods = self.job_pods(namespace, job_name)
            return pods if len(pods) >= count else None

        what = f"{count} pod(s) of Job {namespace}/{job_name}"
        return wait_for(created, timeout=timeout, what=what)

    def set_phase(
        self,
        namespace: str,
        name: str,
        phase: str,
        *,
        message: str | None = None,
        reason: str | None = None,
        exit_code: int | None = None,
    ) -> JSON:
        """Move a pod to Pending / Running / Succeeded / Failed like a kubelet would.

        For terminal phases each container gets ``state.terminated`` with
        ``exitCode``, ``reason`` and ``message`` (the termination message the
        operator reads).
        """
        if phase not in {"Pending", "Running", "Succeeded", "Failed"}:
            raise ValueError(f"unknown pod phase {phase!r}")
        path = resource_path("v1", "pods", namespace, name, "status")
        stamp = now_rfc3339()

        def mutate(pod: JSON) -> JSON:
            status = pod.setdefault("status", {})
            status["phase"] = phase
            status.setdefault("startTime", stamp)
            status.setdefault("hostIP", "127.0.0.1")
            status.setdefault("podIP", "10.244.0.10")
            ready = "True" if phase == "Running" else "False"
            status["conditions"] = [
                {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
                {"type": "Ready", "status": ready, "lastTransitionTime": stamp},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": stamp},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
            ]
            if reason and phase in {"Failed", "Pending"}:
                status["reason"] = reason
            if message and phase in {"Failed", "Pending"}:
                status["message"] = message
            statuses = []
            for container in pod["spec"]["containers"]:
                entry: JSON = {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "started": phase == "Running",
                }
                if phase == "Running":
                    entry["state"] = {"running": {"startedAt": stamp}}
                elif phase == "Pending":
                    entry["state"] = {"waiting": {"reason": reason or "ContainerCreating"}}
                else:
                    code = (
                        exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
                    )
                    terminated: JSON = {
                        "exitCode": code,
                        "reason": reason or ("Completed" if phase == "Succeeded" else "Error"),
                        "startedAt": status["startTime"],
                        "finishedAt": stamp,
                    }
                    if message:
                        terminated["message"] = message
                    entry["state"] = {"terminated": terminated}
                statuses.append(entry)
            status["containerStatuses"] = statuses
            return pod

        return self.kube.update_with_retry(path, mutate)

    def run(self, namespace: str, name: str) -> JSON:
        return self.set_phase(namespace, name, "Running")

    def succeed(self, namespace: str, name: str, message: str | None = None) -> JSON:
        return self.set_phase(namespace, name, "Succeeded", message=message)

    def fail(
        self,
        namespace: str,
        name: str,
        message: str | None = None,
        *,
        reason: str = "Error",
        exit_code: int = 1,
    ) -> JSON:
        return self.set_phase(
            namespace, name, "Failed", message=message, reason=reason, exit_code=exit_code
        )


ISVC_API = "serving.kserve.io/v1beta1"


class KServe:
    """Plays the KServe controller: writes InferenceService status."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def get(self, namespace: str, name: str) -> JSON:
        return self.kube.get(resource_path(ISVC_API, "inferenceservices", namespace, name))

    def set_status(self, namespace: str, name: str, status: JSON) -> JSON:
        """Merge-patch ``status`` into the InferenceService's status subresource."""
        path = resource_path(ISVC_API, "inferenceservices", namespace, name, "status")
        return self.kube.patch(path, {"status": status})

    @staticmethod
    def build_status(
        *,
        name: str,
        namespace: str,
        ready: bool = True,
        generation: int = 1,
        revisions: Mapping[str, int] | None = None,
        canary_revision: str | None = None,
        message: str | None = None,
    ) -> JSON:
        """A v1beta1 status as KServe writes it; ``revisions`` maps revision -> percent."""
        stamp = now_rfc3339()
        flag = "True" if ready else "False"
        url = f"http://{name}.{namespace}.example.com"
        traffic = [
            {"revisionName": rev, "percent": pct, "latestRevision": rev == canary_revision}
            for rev, pct in (revisions or {f"{name}-predictor-00001": 100}).items()
        ]
        latest = canary_revision or traffic[-1]["revisionName"]
        conditions = []
        for kind in ("IngressReady", "PredictorReady", "Ready"):
            cond: JSON = {"type": kind, "status": flag, "lastTransitionTime": stamp}
            if not ready and message:
                cond["message"] = message
                cond["reason"] = "PredictorNotReady"
            conditions.append(cond)
        return {
            "observedGeneration": generation,
            "url": url,
            "address": {"url": f"http://{name}.{namespace}.svc.cluster.local"},
            "conditions": conditions,
            "components": {
                "predictor": {
                    "latestCreatedRevision": latest,
                    "latestReadyRevision": latest if ready else traffic[0]["revisionName"],
                    "url": f"http://{name}-predictor.{namespace}.example.com",
                    "traffic": traffic,
                }
            },
        }

    def mark_ready(self, namespace: str, name: str, **kwargs: Any) -> JSON:
        generation = self.get(namespace, name)["metadata"].get("generation", 1)
        return self.set_status(
            namespace,
            name,
            self.build_status(name=name, namespace=namespace, generation=generation, **kwargs),
        )


# --------------------------------------------------------------------------- operator


class OperatorProcess:
    """The operator, run as the image runs it, with a given kubeconfig."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.process = ManagedProcess("operator", argv, log_path, env=env, cwd=REPO_ROOT)

    def logs(self) -> str:
        return self.process.logs()

    def alive(self) -> bool:
        return self.process.alive()

    def wait_for_log(self, pattern: str, *, timeout: float = 60) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            match = regex.search(self.logs())
            if match is None and not self.alive():
                raise RuntimeError(
                    f"operator exited ({self.process.popen.returncode}) before logging "
                    f"{pattern!r}:\n{self.process.tail(80)}"
                )
            return match

        return wait_for(found, timeout=timeout, what=f"operator log matching {pattern!r}")

    def stop(self, timeout: float = 15) -> int | None:
        return self.process.stop(timeout=timeout)


OperatorFactory = Callable[..., OperatorProcess]


def operator_argv(extra_args: Sequence[str] = ()) -> list[str]:
    """The image's entry point: ``python -m whetstone_operator``."""
    return [sys.executable, "-m", "whetstone_operator", *extra_args]


@contextlib.contextmanager
def operator_running(
    kubeconfig: Path,
    log_path: Path,
    *,
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[OperatorProcess]:
    """The operator as a subprocess; unless ``env`` says otherwise it signs approval and
    verification records with :data:`APPROVAL_KEY`, so they survive a restart."""
    inherited = {k: v for k, v in os.environ.items() if k != "WHETSTONE_APPROVAL_KEY_FILE"}
    full_env = {
        **inherited,
        "KUBECONFIG": str(kubeconfig),
        "PYTHONUNBUFFERED": "1",
        "WHETSTONE_APPROVAL_KEY": APPROVAL_KEY,
        **(env or {}),
    }
    # Never let the test runner's in-cluster hints leak into the operator.
    full_env.pop("KUBERNETES_SERVICE_HOST", None)
    op = OperatorProcess(list(argv or operator_argv()), log_path, full_env)
    try:
        yield op
    finally:
        op.stop()


RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


CHART = REPO_ROOT / "charts" / "whetstone"
USER_ROLES_TEMPLATE = "templates/rbac-users.yaml"


def helm_template(
    helm: Path,
    chart: Path,
    release: str,
    namespace: str,
    values: Sequence[str] = (),
    show_only: Sequence[str] = (),
) -> list[tuple[str, JSON]]:
    """``helm template`` (``--set`` values, ``--show-only`` templates) as (template, object)
    pairs, the template named as in its ``# Source:`` line (``templates/x.yaml``)."""
    home = make_temp_dir("whetstone-helm-")
    try:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        args = [str(helm), "template", release, str(chart), "--namespace", namespace]
        for value in values:
            args += ["--set", value]
        for template in show_only:
            args += ["--show-only", template]
        out = subprocess.run(
            args, capture_output=True, text=True, env=env, check=False, timeout=120
        )
        if out.returncode != 0:
            raise RuntimeError(f"helm template failed:\n{out.stderr}")
    finally:
        remove_temp_dir(home)
    rendered: list[tuple[str, JSON]] = []
    for chunk in re.split(r"^---\s*$", out.stdout, flags=re.MULTILINE):
        doc = yaml.safe_load(chunk)
        if not doc:
            continue
        source = re.search(r"^# Source: [^/\n]+/(\S+)", chunk, re.MULTILINE)
        rendered.append((source.group(1) if source else "", doc))
    return rendered


def render_chart_rbac(
    helm: Path, chart: Path, release: str, namespace: str, values: Sequence[str] = ()
) -> tuple[list[JSON], str] | None:
    """``helm template`` the chart and keep only the operator's identity and RBAC objects.

    Returns (objects, service account name), or None when the chart has no
    templates yet. Running the operator under exactly these objects is what
    makes a missing or excessive permission show up in tests. The user roles of
    rbac-users.yaml are left out: they are fixed names shared by every release,
    installed once per control plane (:func:`render_chart_user_roles`).
    """
    if not (chart / "templates").is_dir():
        return None
    docs = [
        doc
        for template, doc in helm_template(helm, chart, release, namespace, values)
        if doc.get("kind") in RBAC_KINDS and template != USER_ROLES_TEMPLATE
    ]
    accounts = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"]
    if not accounts:
        return None
    for doc in docs:
        if doc["kind"] in {"ServiceAccount", "Role", "RoleBinding"}:
            doc["metadata"].setdefault("namespace", namespace)
    return docs, accounts[0]


def render_chart_user_roles(helm: Path, chart: Path = CHART) -> list[JSON]:
    """The chart's ClusterRoles for users (rbac-users.yaml), with its default values."""
    rendered = helm_template(helm, chart, "whetstone", "default", show_only=[USER_ROLES_TEMPLATE])
    return [doc for _, doc in rendered if doc.get("kind") == "ClusterRole"]


CLUSTER_SCOPED = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}


@contextlib.contextmanager
def chart_rbac_applied(
    plane: ControlPlane, release: str, namespace: str, values: Sequence[str] = ()
) -> Iterator[tuple[str, Path]]:
    """The chart's ServiceAccount and RBAC (``--set`` values) applied in ``namespace``; yields
    (service account, a kubeconfig of its token). The cluster-scoped objects, which outlive
    the namespace, are deleted afterwards."""
    rendered = render_chart_rbac(plane.tools.helm, CHART, release, namespace, values)
    if rendered is None:
        raise RuntimeError("charts/whetstone renders no ServiceAccount for the operator")
    docs, account = rendered
    plane.apply(yaml.safe_dump_all(docs))
    try:
        yield account, plane.sa_kubeconfig(namespace, account)
    finally:
        for doc in docs:
            if doc["kind"] in CLUSTER_SCOPED:
                plane.admin.delete(
                    resource_path(
                        "rbac.authorization.k8s.io/v1",
                        CLUSTER_SCOPED[doc["kind"]],
                        name=doc["metadata"]["name"],
                    )
                )


def make_certificate(directory: Path, name: str = "whetstone-test") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


WEBHOOK_KINDS = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")


@contextlib.contextmanager
def webhook_operator_running(
    plane: ControlPlane,
    start: OperatorFactory,
    kubeconfig: Path,
    namespace: str,
    managed: str,
    env: Mapping[str, str],
) -> Iterator[OperatorProcess]:
    """The operator for ``namespace`` serving its admission webhook on loopback (a fresh
    self-signed certificate), kopf managing the webhook configurations named ``managed``;
    yields once both exist, and deletes them afterwards (they are cluster-scoped)."""
    workdir = make_temp_dir("whetstone-hook-")
    cert, key = make_certificate(workdir, "webhook")
    hooks = "/apis/admissionregistration.k8s.io/v1"
    op = start(
        kubeconfig,
        args=[
            "--namespace",
            namespace,
            "--webhook-port",
            str(free_port()),
            "--webhook-addr",
            "127.0.0.1",
            "--webhook-host",
            "127.0.0.1",
            "--webhook-cert",
            str(cert),
            "--webhook-key",
            str(key),
            "--webhook-managed",
            managed,
        ],
        env=dict(env),
    )
    try:
        for kind in WEBHOOK_KINDS:
            try:
                wait_for(
                    lambda kind=kind: plane.admin.exists(f"{hooks}/{kind}/{managed}"),
                    timeout=60,
                    what=f"the operator's {kind}",
                )
            except TimeoutError as exc:
                raise RuntimeError(f"{exc}; operator log:\n{op.process.tail(60)}") from None
        yield op
    finally:
        op.stop()
        for kind in WEBHOOK_KINDS:
            plane.admin.delete(f"{hooks}/{kind}/{managed}")
        remove_temp_dir(workdir)
