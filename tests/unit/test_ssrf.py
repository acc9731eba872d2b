"""Where analysis may send requests, and what comes back of the answers: the address classes
refused whatever the policy, the policy's rules for Prometheus and golden prompts, DNS
rebinding, redirects, byte caps and deadlines against loopback servers, credentials in
addresses, and tenant regular expressions that never reach a backtracking engine."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from whetstone_operator import analysis
from whetstone_operator.analysis import Guard
from whetstone_operator.api.platformpolicy import PlatformPolicySpec
from whetstone_operator.api.rollout import PrometheusQuery, check_json_schema
from whetstone_operator.reconcile.canary import (
    Probe,
    Prompt,
    Query,
    address_refusal,
    display,
    is_under,
    prometheus_address,
    prompt_refusal,
)
from whetstone_operator.reconcile.policy import Policy

from tests.loopback import LoopbackServer, QuietHandler

LOOPBACK = Guard(allow_loopback=True)
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SECRET_ANSWER = {"AccessKeyId": "AKIAIOSFODNN7EXAMPLE", "SecretAccessKey": SECRET}


def policy(**analysis_rules: Any) -> Policy:
    return Policy("team", PlatformPolicySpec.model_validate({"analysis": analysis_rules}))


# ----------------------------------------------------------------------------- address classes


@pytest.mark.parametrize(
    ("ip", "port", "options", "refused"),
    [
        ("169.254.169.254", 80, {}, "link-local"),
        ("169.254.170.2", 80, {}, "link-local"),
        ("fe80::1", 80, {}, "link-local"),
        ("fe80::1%eth0", 80, {}, "link-local"),
        ("fd00:ec2::254", 80, {}, "cloud metadata"),
        ("100.100.100.200", 80, {}, "cloud metadata"),
        ("::ffff:169.254.169.254", 80, {}, "reaches 169.254.169.254"),
        ("64:ff9b::a9fe:a9fe", 80, {}, "reaches 169.254.169.254"),
        ("2002:a9fe:a9fe::1", 80, {}, "reaches 169.254.169.254"),
        ("127.0.0.1", 9090, {}, "loopback"),
        ("127.8.9.10", 9090, {}, "loopback"),
        ("::1", 9090, {}, "loopback"),
        ("::ffff:127.0.0.1", 9090, {}, "loopback"),
        ("0.0.0.0", 9090, {}, "unspecified"),
        ("::", 9090, {}, "unspecified"),
        ("224.0.0.1", 9090, {}, "multicast"),
        ("ff02::1", 9090, {}, "multicast"),
        ("255.255.255.255", 9090, {}, "reserved"),
        ("10.96.0.1", 443, {"api_servers": [("10.96.0.1", 443)]}, "API server"),
        ("10.96.0.1", 10250, {"api_servers": [("10.96.0.1", 443)]}, "API server"),
        (
            "127.0.0.1",
            6443,
            {"allow_loopback": True, "api_servers": [("127.0.0.1", 6443)]},
            "API server",
        ),
        ("169.254.169.254", 80, {"allow_loopback": True}, "link-local"),
        ("10.96.0.10", 9090, {}, None),
        ("93.184.216.34", 443, {}, None),
        ("2606:2800:220:1::1", 443, {}, None),
        ("127.0.0.1", 9090, {"allow_loopback": True}, None),
        (
            "127.0.0.1",
            9090,
            {"allow_loopback": True, "api_servers": [("127.0.0.1", 6443)]},
            None,
        ),
    ],
    ids=[
        "cloud metadata",
        "ECS task metadata",
        "IPv6 link-local",
        "IPv6 link-local with a zone",
        "AWS metadata over IPv6",
        "Alibaba metadata",
        "IPv4-mapped metadata",
        "NAT64 metadata",
        "6to4 metadata",
        "loopback",
        "all of 127/8",
        "IPv6 loopback",
        "IPv4-mapped loopback",
        "unspecified",
        "IPv6 unspecified",
        "multicast",
        "IPv6 multicast",
        "broadcast",
        "API server ClusterIP",
        "API server address on another port",
        "loopback API server with loopback allowed",
        "link-local even with loopback allowed",
        "an in-cluster service",
        "a public address",
        "a public IPv6 address",
        "loopback allowed for test clusters",
        "another loopback port beside a loopback API server",
    ],
)
def test_address_classes(ip: str, port: int, options: dict[str, Any], refused: str | None) -> None:
    why = address_refusal(ip, port, **options)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


# ----------------------------------------------------------------------------- the policy


POLICY = policy(
    prometheus=[{"name": "main", "address": "http://prometheus.monitoring:9090"}],
    allowAddresses=["http://prometheus.team-a.svc:9090", "https://thanos.example.com/team-a/"],
    goldenPromptHosts=["gateway.istio-system", "judge.ml.svc:8080"],
)


@pytest.mark.parametrize(
    ("prom", "address", "refusal"),
    [
        ({"endpoint": "main"}, "http://prometheus.monitoring:9090", None),
        ({"endpoint": "metadata"}, None, "PlatformPolicy team spec.analysis.prometheus"),
        (
            {"address": "http://prometheus.team-a.svc:9090"},
            "http://prometheus.team-a.svc:9090",
            None,
        ),
        (
            {"address": "http://PROMETHEUS.team-a.svc:9090/"},
            "http://PROMETHEUS.team-a.svc:9090/",
            None,
        ),
        (
            {"address": "https://thanos.example.com/team-a"},
            "https://thanos.example.com/team-a",
            None,
        ),
        (
            {"address": "https://thanos.example.com/team-a/x"},
            "https://thanos.example.com/team-a/x",
            None,
        ),
        ({"address": "https://thanos.example.com/team-ab"}, None, "spec.analysis.allowAddresses"),
        ({"address": "https://thanos.example.com/team-b/"}, None, "spec.analysis.allowAddresses"),
        ({"address": "http://prometheus.team-a.svc:9090.evil.example"}, None, "allowAddresses"),
        ({"address": "http://prometheus.team-a.svc:9090@evil.example"}, None, "allowAddresses"),
        ({"address": "https://prometheus.team-a.svc:9090"}, None, "allowAddresses"),
        ({"address": "http://prometheus.team-a.svc:9091"}, None, "allowAddresses"),
        ({"address": "http://169.254.169.254/latest"}, None, "allowAddresses"),
    ],
    ids=[
        "a named endpoint",
        "an unknown name",
        "an allowed prefix",
        "host names compare without case",
        "an allowed path prefix",
        "below an allowed path prefix",
        "a path that only starts like the prefix",
        "another path",
        "the prefix followed by more host name",
        "the prefix as credentials of another host",
        "another scheme",
        "another port",
        "metadata",
    ],
)
def test_prometheus_targets(prom: dict[str, str], address: str | None, refusal: str | None) -> None:
    query = PrometheusQuery.model_validate({**prom, "query": "up"})
    got, why = prometheus_address(query, POLICY)
    assert got == address
    if refusal is None:
        assert why is None
    else:
        assert why is not None and refusal in why


def test_the_built_in_policy_allows_no_prometheus_at_all() -> None:
    for prom in ({"endpoint": "main"}, {"address": "http://prometheus.monitoring:9090"}):
        got, why = prometheus_address(
            PrometheusQuery.model_validate({**prom, "query": "up"}), Policy()
        )
        assert got is None and why is not None and "built-in default" in why


CANARY = "http://latest-grader.ml.example.com"


@pytest.mark.parametrize(
    ("url", "canary", "headers", "refusal"),
    [
        (f"{CANARY}/openai/v1/chat/completions", CANARY, {}, None),
        (f"{CANARY}:80/v1/models/grader:predict", CANARY + "/", {}, None),
        (
            "http://gateway.istio-system/v1/chat",
            CANARY,
            {"Host": "latest-grader.ml.example.com"},
            None,
        ),
        ("http://judge.ml.svc:8080/grade", CANARY, {}, None),
        ("http://judge.ml.svc:9090/grade", CANARY, {}, "spec.analysis.goldenPromptHosts"),
        ("http://prev-grader.ml.example.com/v1", CANARY, {}, "spec.analysis.goldenPromptHosts"),
        (f"{CANARY}@169.254.169.254/latest", CANARY, {}, "goldenPromptHosts"),
        ("https://latest-grader.ml.example.com/v1", CANARY, {}, "goldenPromptHosts"),
        (f"{CANARY}:8080/v1", CANARY, {}, "goldenPromptHosts"),
        ("http://gateway.istio-system/v1", CANARY, {"Host": "other.ml.example.com"}, "Host header"),
        (f"{CANARY}/v1", CANARY, {"host": "kubernetes.default.svc"}, "Host header"),
        ("http://gateway.istio-system/v1", None, {}, None),
        ("http://gateway.istio-system/v1", None, {"Host": "x"}, "Host header"),
        ("file:///etc/passwd", CANARY, {}, "not an http(s) URL"),
    ],
    ids=[
        "the canary URL KServe reports",
        "the canary's origin, another path",
        "a listed gateway with the canary's Host",
        "a listed host and port",
        "a listed host on another port",
        "the stable revision's URL",
        "the canary URL as credentials of another host",
        "another scheme",
        "another port",
        "a Host header naming another service",
        "a Host header naming the API server",
        "a listed host before KServe reports a URL",
        "a Host header before KServe reports a URL",
        "a file URL",
    ],
)
def test_golden_prompt_targets(
    url: str, canary: str | None, headers: dict[str, str], refusal: str | None
) -> None:
    why = prompt_refusal(url, canary, headers, POLICY)
    if refusal is None:
        assert why is None
    else:
        assert why is not None and refusal in why


def test_messages_show_no_credentials_or_query() -> None:
    assert display("http://user:s3cr3t@prom.example:9090/p?token=abc#f") == (
        "http://prom.example:9090/p"
    )
    query = PrometheusQuery.model_validate(
        {"address": "http://user:s3cr3t@prom.example:9090", "query": "up"}
    )
    _, why = prometheus_address(query, POLICY)
    assert why is not None and "s3cr3t" not in why and "user" not in why
    assert is_under(
        "http://user:s3cr3t@prometheus.team-a.svc:9090/", "http://prometheus.team-a.svc:9090"
    )


# ----------------------------------------------------------------------------- over the wire


class Recorder(QuietHandler):
    """Answers every GET with `answer` and records what arrived."""

    answer: tuple[int, Any] = (200, {"ok": True})
    seen: list[tuple[str, dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, dict(self.headers)))
        self.reply(*self.answer)

    def do_POST(self) -> None:
        self.do_GET()


@pytest.fixture
def recorder() -> Iterator[LoopbackServer]:
    Recorder.seen = []
    Recorder.answer = (200, {"ok": True})
    with LoopbackServer(Recorder) as server:
        yield server


class Flip:
    """A resolver whose answer changes after the first lookup (DNS rebinding)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def test_the_connection_goes_to_the_address_that_was_checked(
    recorder: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    connects: list[tuple[str, int]] = []
    real = socket.create_connection

    def spy(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        connects.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    resolver = Flip(["127.0.0.1"], ["169.254.169.254"])
    guard = Guard(allow_loopback=True, resolve=resolver)
    url = f"http://metrics.example:{recorder.port}/api/v1/query"
    answer = analysis.fetch(url, guard, timeout=5, cap=1024)
    assert answer.status == 200
    assert resolver.calls == ["metrics.example"]  # resolved once, not again to connect
    assert connects == [("127.0.0.1", recorder.port)]
    assert Recorder.seen[0][1]["Host"] == f"metrics.example:{recorder.port}"
    # The next request resolves afresh and is checked afresh: the rebound answer is refused.
    with pytest.raises(
        analysis.RefusedError, match=r"metrics\.example resolves to 169\.254\.169\.254"
    ):
        analysis.fetch(url, guard, timeout=5, cap=1024)
    assert len(Recorder.seen) == 1 and len(connects) == 1


@pytest.mark.parametrize(
    "answer",
    [["93.184.216.34", "169.254.169.254"], ["10.0.0.7", "127.0.0.1"], ["::1", "10.0.0.7"]],
    ids=["public then metadata", "private then loopback", "loopback first"],
)
def test_every_resolved_address_is_checked_before_connecting(
    answer: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: Any, **__: Any) -> socket.socket:
        raise AssertionError("connected")

    monkeypatch.setattr(socket, "create_connection", never)
    guard = Guard(resolve=Flip(answer))
    with pytest.raises(analysis.RefusedError, match="analysis never connects there"):
        analysis.fetch("http://prometheus.example:9090/", guard, timeout=5, cap=1024)


def test_loopback_and_the_api_server_are_refused_before_any_byte(recorder: LoopbackServer) -> None:
    with pytest.raises(analysis.RefusedError, match="loopback"):
        analysis.fetch(recorder.url, analysis.STRICT, timeout=5, cap=1024)
    api = Guard(allow_loopback=True, api_servers=frozenset({("127.0.0.1", recorder.port)}))
    with pytest.raises(analysis.RefusedError, match="API server"):
        analysis.fetch(recorder.url, api, timeout=5, cap=1024)
    assert Recorder.seen == []


def test_the_api_server_addresses_come_from_its_urls() -> None:
    resolver = Flip(["10.96.0.1"])
    found = analysis.api_server_addresses(
        ["https://kubernetes.default.svc", "https://[::1]:6443", "10.0.0.5:8443", "not a url::"],
        resolver=lambda host, port: ["::1"] if host == "::1" else resolver(host, port),
    )
    assert found == {("10.96.0.1", 443), ("::1", 6443), ("10.96.0.1", 8443)}


def test_redirects_are_not_followed(recorder: LoopbackServer) -> None:
    class Redirect(QuietHandler):
        def do_GET(self) -> None:
            Recorder.seen.append((self.path, dict(self.headers)))
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()

    with LoopbackServer(Redirect) as server:
        answer = analysis.fetch(server.url, LOOPBACK, timeout=5, cap=1024)
        assert answer.status == 302
        measured = analysis.measure(Query("m", server.url, "up", 5.0), LOOPBACK)
    assert measured.error is not None and "redirect: not followed" in measured.error
    assert "meta-data" not in measured.error and "169.254" not in measured.error
    assert len(Recorder.seen) == 2  # one each, nothing more


class Endless(BaseHTTPRequestHandler):
    """/declared: a 10 MiB Content-Length; /stream: no length, bytes until the client leaves;
    /trickle: a body one byte at a time; /headers: headers one byte at a time."""

    def do_GET(self) -> None:
        try:
            if self.path == "/headers":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(100_000):
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.02)
                return
            self.send_response(200)
            if self.path == "/declared":
                self.send_header("Content-Length", str(10 * 1024 * 1024))
            elif self.path == "/trickle":
                self.send_header("Content-Length", "900000")
            self.end_headers()
            if self.path == "/trickle":
                for _ in range(900_000):
                    self.wfile.write(b"{")
                    self.wfile.flush()
                    time.sleep(0.02)
            else:
                block = b"x" * 65536
                for _ in range(100_000):
                    self.wfile.write(block)
        except OSError:
            pass

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def endless() -> Iterator[str]:
    with LoopbackServer(Endless) as server:
        yield server.url


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/declared", "/stream"])
def test_a_huge_answer_is_cut_at_the_cap(endless: str, path: str) -> None:
    with pytest.raises(analysis.AnswerTooLargeError):
        analysis.fetch(endless + path, LOOPBACK, timeout=30, cap=analysis.PROMETHEUS_BYTES)
    measured = analysis.measure(Query("m", endless + path, "up", 30.0), LOOPBACK)
    assert measured.error is not None and "answered more than 1 MiB: not read" in measured.error


# Each read returns a byte within 20 ms: a per-read timeout never fires, only the total deadline
# (without it, /trickle would take five hours). The test's own timeout turns a regression into
# a failure instead of a hang.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/trickle", "/headers"])
def test_a_trickling_server_is_cut_at_the_deadline(endless: str, path: str) -> None:
    with pytest.raises(analysis.NoAnswerError, match=r"no complete answer within 0.5s"):
        analysis.fetch(endless + path, LOOPBACK, timeout=0.5, cap=analysis.PROMETHEUS_BYTES)


@pytest.mark.timeout(60)
def test_a_resolver_that_hangs_is_cut_at_the_deadline() -> None:
    release = threading.Event()

    def hang(host: str, port: int) -> list[str]:
        release.wait(30)
        return ["10.0.0.1"]

    try:
        with pytest.raises(analysis.NoAnswerError, match="did not resolve within the deadline"):
            analysis.fetch("http://slow.example/", Guard(resolve=hang), timeout=0.2, cap=1024)
    finally:
        release.set()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """An HTTPS Recorder on loopback with a self-signed certificate for prom.test."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prom.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("prom.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = LoopbackServer(Recorder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    try:
        yield server.port, str(cert_file)
    finally:
        server.close()


def test_https_checks_the_certificate_against_the_host_name(
    tls_server: tuple[int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    port, ca = tls_server
    Recorder.seen = []
    Recorder.answer = (200, {"ok": True})
    guard = Guard(allow_loopback=True, resolve=lambda host, _: ["127.0.0.1"])
    # Not signed by a CA the operator trusts: no answer, in our words.
    with pytest.raises(analysis.NoAnswerError, match="TLS certificate is not valid"):
        analysis.fetch(f"https://prom.test:{port}/", guard, timeout=5, cap=1024)
    trusted = ssl.create_default_context(cafile=ca)
    monkeypatch.setattr(analysis.ssl, "create_default_context", lambda: trusted)
    # Connected to the checked address, verified for the URL's host name (SNI).
    answer = analysis.fetch(f"https://prom.test:{port}/q", guard, timeout=5, cap=1024)
    assert answer.status == 200 and Recorder.seen[-1][0] == "/q"
    assert Recorder.seen[-1][1]["Host"] == f"prom.test:{port}"
    other = Guard(allow_loopback=True, resolve=lambda host, _: ["127.0.0.1"])
    with pytest.raises(analysis.NoAnswerError, match="TLS certificate is not valid"):
        analysis.fetch(f"https://other.test:{port}/", other, timeout=5, cap=1024)


# ----------------------------------------------------------------------------- answers


class Vault(QuietHandler):
    """A 'Prometheus' that answers with credentials: as a result, as an error, as prose."""

    auth: list[str | None] = []

    def do_GET(self) -> None:
        self.auth.append(self.headers.get("Authorization"))
        if "/fail" in self.path:
            self.reply(500, {"status": "error", "error": SECRET, **SECRET_ANSWER})
        elif "/text" in self.path:
            self.reply(200, f"AccessKeyId=AKIAIOSFODNN7EXAMPLE SecretAccessKey={SECRET}")
        else:
            self.reply(200, SECRET_ANSWER)

    def do_POST(self) -> None:
        self.read_json()
        self.do_GET()


@pytest.fixture(scope="module")
def vault() -> Iterator[LoopbackServer]:
    with LoopbackServer(Vault) as server:
        yield server


def _probe(
    url: str | None, schema: dict[str, Any], field: str | None, parse_json: bool = True
) -> Probe:
    return Probe(
        metric="golden",
        url=url,
        headers={},
        prompts=(Prompt("p", {"messages": []}),),
        response_field=field,
        parse_json=parse_json,
        schema=schema,
        timeout=5.0,
    )


@pytest.mark.parametrize(
    ("path", "schema", "field"),
    [
        ("/", {"type": "object", "required": ["choices"]}, None),
        ("/", {"type": "integer"}, "SecretAccessKey"),
        ("/", {"enum": ["x"]}, "SecretAccessKey"),
        ("/", {"type": "string", "pattern": "^AKIA[0-9]{16}$"}, "AccessKeyId"),
        ("/", {"type": "object", "additionalProperties": False}, None),
        ("/", {"type": "object", "additionalProperties": {"type": "number"}}, None),
        ("/", {"type": "object", "patternProperties": {"^S": {"maxLength": 3}}}, None),
        ("/", {"type": "object", "propertyNames": {"maxLength": 5}}, None),
        ("/fail", {"type": "object"}, None),
        ("/text", {"type": "object"}, None),
        ("/", {"type": "object"}, "AccessKeyId.0"),
    ],
    ids=[
        "required",
        "type of the secret",
        "enum of the secret",
        "pattern of the key id",
        "no additional properties",
        "additional properties typed",
        "pattern properties",
        "property names",
        "an error answer",
        "prose",
        "a path into a string",
    ],
)
def test_golden_prompt_results_never_show_the_answer(
    vault: LoopbackServer,
    path: str,
    schema: dict[str, Any],
    field: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    check_json_schema(schema)
    caplog.set_level("DEBUG")
    measured = analysis.measure(_probe(vault.url + path, schema, field, False), LOOPBACK)
    assert measured.value == 0.0, measured
    shown = json.dumps([measured.note, measured.error]) + caplog.text
    # The answer's values never; its key names only where the spec itself names them.
    keys = ("SecretAccessKey", "AccessKeyId") if field is None else ()
    for secret in (SECRET, "wJalr", "AKIAIOSFODNN7", "EXAMPLE", *keys):
        assert secret not in shown, shown


@pytest.mark.parametrize("path", ["/", "/fail", "/text"])
def test_prometheus_results_never_show_the_answer(
    vault: LoopbackServer, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    measured = analysis.measure(Query("m", vault.url + path, "up", 5.0), LOOPBACK)
    assert measured.value is None and measured.error is not None
    shown = measured.error + caplog.text
    for secret in (SECRET, "AKIA", "EXAMPLE", "SecretAccessKey"):
        assert secret not in shown, shown


def test_credentials_in_an_address_are_sent_and_never_shown(
    vault: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    Vault.auth.clear()
    with_creds = vault.url.replace("http://", "http://grafana:s3cr3t%21@")
    failed = analysis.measure(Query("m", with_creds + "/fail", "up", 5.0), LOOPBACK)
    down = analysis.measure(Query("m", "http://grafana:s3cr3t@127.0.0.1:9", "up", 1.0), LOOPBACK)
    refused = analysis.measure(Query("m", with_creds, "up", 5.0))
    assert Vault.auth == ["Basic " + base64.b64encode(b"grafana:s3cr3t!").decode()]
    shown = json.dumps([failed.error, down.error, refused.error]) + caplog.text
    assert "s3cr3t" not in shown and "grafana" not in shown, shown
    assert failed.error is not None and "HTTP 500" in failed.error
    assert down.error is not None and "connection refused" in down.error
    assert refused.refused


# ----------------------------------------------------------------------------- the schema


def test_the_response_schema_never_fetches_a_reference(recorder: LoopbackServer) -> None:
    # A schema that slipped past validation still fetches nothing.
    probe = _probe(recorder.url, {"$ref": f"{recorder.url}/schema.json"}, None)
    why = analysis.check_answer(probe, b"{}")
    assert why == "responseSchema has a reference that does not resolve within it"
    assert Recorder.seen == []


def test_checking_an_answer_stops_at_its_budget() -> None:
    probe = _probe(None, {"type": "object", "properties": {"a": {"type": "string"}}}, None)
    assert analysis.check_answer(probe, b'{"a": "x"}') is None
    assert analysis.check_answer(probe, b'{"a": "x"}', budget=-1.0) == (
        "checking the answer took over -1s: simplify responseSchema"
    )


def test_a_deeply_nested_answer_is_not_json_to_us() -> None:
    probe = _probe(None, {"type": "array"}, None)
    deep = b"[" * 100_000 + b"]" * 100_000
    assert analysis.check_answer(probe, deep) == f"the answer ({len(deep)} bytes) is not JSON"


TENANT_PATTERNS = {"^(a+)+$", "^[a-z]+$", "^x-", "^AKIA"}
SCHEMAS = [
    {"type": "string", "pattern": "^(a+)+$"},
    {"type": "object", "patternProperties": {"^x-": {"type": "string"}}},
    {
        "type": "object",
        "properties": {"k": {"type": "string"}},
        "patternProperties": {"^[a-z]+$": {"type": "integer"}},
        "additionalProperties": False,
    },
    {"$schema": "http://json-schema.org/draft-07/schema#", "pattern": "^AKIA"},
    {"$schema": "http://json-schema.org/draft-04/schema#", "patternProperties": {"^x-": {}}},
    {"type": "object", "unevaluatedProperties": False, "properties": {"a": {"pattern": "^x-"}}},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: ",".join(sorted(s)))
def test_python_re_never_runs_a_tenant_pattern(
    schema: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import jsonschema._format
    import jsonschema._keywords
    import jsonschema._legacy_keywords
    import jsonschema._utils

    class Guarded:
        """Python's re, except for the tenant's patterns."""

        def __getattr__(self, name: str) -> Any:
            real = getattr(re, name)
            if name not in ("search", "match", "fullmatch", "compile"):
                return real

            def call(pattern: Any, *args: Any, **kwargs: Any) -> Any:
                if str(getattr(pattern, "pattern", pattern)) in TENANT_PATTERNS:
                    raise AssertionError(f"Python re ran {pattern!r}")
                return real(pattern, *args, **kwargs)

            return call

    for module in (
        jsonschema._format,
        jsonschema._keywords,
        jsonschema._legacy_keywords,
        jsonschema._utils,
    ):
        monkeypatch.setattr(module, "re", Guarded())
    check_json_schema(schema)
    probe = _probe(None, schema, None, parse_json=False)
    for answer in ("aaa!", "x-1", {"x-a": 1, "k": "v", "abc": "no", "Z": 1}, {"a": "x-b"}):
        analysis.check_answer(probe, json.dumps(answer).encode())


# Backtracking engines take 2^37 steps on this pattern and text (minutes, holding the GIL); RE2
# answers in well under a millisecond. uniqueItems over 50,000 objects is a quadratic 1.25e9
# comparisons in jsonschema's own implementation and a linear pass in ours. Run in a subprocess
# with a timeout so that a regression fails instead of hanging the suite.
CATASTROPHIC = textwrap.dedent(
    """
    import json
    from whetstone_operator import analysis
    from whetstone_operator.reconcile.canary import Probe

    def check(schema, answer):
        probe = Probe("m", None, {}, (), None, False, schema, 1.0)
        return analysis.check_answer(probe, json.dumps(answer).encode(), budget=600)

    print(check({"type": "string", "pattern": "^(a+)+$"}, "a" * 37 + "!"))
    print(check({"type": "string", "pattern": "^(a+)+$"}, "a" * 37))
    items = [{"i": i} for i in range(50_000)] + [{"i": 0}]
    print(check({"type": "array", "uniqueItems": True}, items))
    print(check({"type": "array", "uniqueItems": True}, [1, 1.0]))
    print(check({"type": "array", "uniqueItems": True}, [1, True, {"a": 1}, {"a": 1.5}]))
    """
)


def test_catastrophic_patterns_and_quadratic_checks_finish() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CATASTROPHIC],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.splitlines() == [
        "schema violation at pattern (pattern)",
        "None",
        "schema violation at uniqueItems (uniqueItems)",
        "schema violation at uniqueItems (uniqueItems)",
        "None",
    ]


# ----------------------------------------------------------------------------- the operator


def test_loopback_is_a_platform_option_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from whetstone_operator.__main__ import _parse

    monkeypatch.delenv("WHETSTONE_ALLOW_LOOPBACK_TARGETS", raising=False)
    assert _parse([]).allow_loopback_targets is False
    assert _parse(["--allow-loopback-targets"]).allow_loopback_targets is True
    monkeypatch.setenv("WHETSTONE_ALLOW_LOOPBACK_TARGETS", "true")
    assert _parse([]).allow_loopback_targets is True


def test_the_handler_guards_with_the_option_and_the_api_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from whetstone_operator import k8s, settings
    from whetstone_operator.handlers import rollout as handler

    monkeypatch.setattr(
        k8s, "configuration", lambda: SimpleNamespace(host="https://127.0.0.1:6443")
    )
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setattr(handler, "_API_SERVERS", None)
    monkeypatch.setattr(settings, "OPTIONS", settings.OperatorOptions(allow_loopback_targets=True))
    guard = handler.guard()
    assert guard.allow_loopback
    assert guard.api_servers == {("127.0.0.1", 6443), ("10.96.0.1", 443)}
    assert guard.refusal("127.0.0.1", 6443) is not None
    assert guard.refusal("127.0.0.1", 9090) is None
    monkeypatch.setattr(handler, "_API_SERVERS", None)
    monkeypatch.setattr(settings, "OPTIONS", settings.OperatorOptions())
    assert handler.guard().refusal("127.0.0.1", 9090) is not None
