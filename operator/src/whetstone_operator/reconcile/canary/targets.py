"""Where analysis may send a request, as pure rules.

Two layers. The namespace's PlatformPolicy decides which targets a Rollout may name: a
Prometheus endpoint by name, a raw address only under an allowed prefix, golden prompts only to
the canary URL KServe reports or a listed host. Whatever the policy says, some addresses are
never connected to (`address_refusal`): link-local (cloud metadata), loopback (unless the
operator runs on a test cluster), unspecified, multicast and the API server's. Messages show a
target without its credentials, query or fragment.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from whetstone_operator.api.rollout import PrometheusQuery
from whetstone_operator.reconcile.policy import Policy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}
# Metadata services outside the link-local ranges (AWS over IPv6, Alibaba Cloud).
METADATA = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOOPBACK_FLAG = "--allow-loopback-targets"


@dataclass(frozen=True)
class Target:
    """The parts of an http(s) URL that say where a request goes."""

    scheme: str
    host: str
    port: int
    path: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_target(url: str) -> Target | None:
    """Scheme, host (lower case), port and path of an http(s) URL; None when it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return Target(scheme, host, port or DEFAULT_PORTS[scheme], parts.path or "/")


def display(url: str | None) -> str:
    """`url` for a message: scheme, host, port and path; never credentials or a query."""
    target = parse_target(url or "")
    if target is None:
        return "(not an http(s) URL)"
    return f"{target.scheme}://{target.netloc}{target.path[:200]}"


def is_under(url: str, prefix: str) -> bool:
    """Whether `url` lies under `prefix`: the same scheme, host and port, and a path that
    continues the prefix's at a segment boundary (a plain string prefix would let
    http://prom:9090.evil.example or http://prom:9090@evil.example through)."""
    target, base = parse_target(url), parse_target(prefix)
    if target is None or base is None or target.origin != base.origin:
        return False
    stem = base.path.rstrip("/")
    return target.path == stem or target.path.startswith(stem + "/")


def prometheus_address(query: PrometheusQuery, policy: Policy) -> tuple[str | None, str | None]:
    """(the address to query, None) or (None, why the policy refuses the metric's target)."""
    rules = policy.spec.analysis
    if query.endpoint is not None:
        for endpoint in rules.prometheus:
            if endpoint.name == query.endpoint:
                return endpoint.address, None
        named = ", ".join(e.name for e in rules.prometheus) or "none"
        return None, (
            f"prometheus.endpoint {query.endpoint} is not a name in "
            f"{policy.field('analysis.prometheus')} (named: {named})"
        )
    address = query.address or ""
    if any(is_under(address, prefix) for prefix in rules.allow_addresses):
        return address, None
    return None, (
        f"prometheus.address {display(address)} is under no prefix in "
        f"{policy.field('analysis.allowAddresses')}: name an endpoint of "
        f"{policy.field('analysis.prometheus')} in prometheus.endpoint instead"
    )


def _host_listed(target: Target, hosts: Iterable[str]) -> bool:
    for entry in hosts:
        listed = parse_target(f"{target.scheme}://{entry.strip()}")
        if listed is None or listed.host != target.host:
            continue
        # An entry without a port allows any port of that host.
        if ":" not in entry.strip().rsplit("]", 1)[-1] or listed.port == target.port:
            return True
    return False


def prompt_refusal(
    url: str, canary_url: str | None, headers: Mapping[str, str], policy: Policy
) -> str | None:
    """Why golden prompts may not go to `url` (None: they may): it must be on the canary URL
    KServe reports (same scheme, host and port) or a host the policy lists; a Host header may
    only name the canary."""
    target = parse_target(url)
    if target is None:
        return f"http.url {display(url)} is not an http(s) URL with a host"
    canary = parse_target(canary_url) if canary_url else None
    on_canary = canary is not None and canary.origin == target.origin
    if not on_canary and not _host_listed(target, policy.spec.analysis.golden_prompt_hosts):
        return (
            f"http.url {display(url)} is neither the canary URL KServe reports "
            f"({display(canary_url) if canary_url else 'none yet'}) nor a host in "
            f"{policy.field('analysis.goldenPromptHosts')}"
        )
    for name, value in headers.items():
        if name.lower() != "host":
            continue
        if canary is None or value.strip().lower() not in (canary.host, canary.netloc):
            shown = canary.netloc if canary is not None else "(no canary URL yet)"
            return f"the Host header may only name the canary's host {shown}"
    return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    # IPv6 forms that reach an IPv4 address: mapped, NAT64 and 6to4.
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def parse_ip(text: str) -> IPAddress:
    """An IP address from a resolver's answer (an IPv6 zone like %eth0 is dropped)."""
    return ipaddress.ip_address(text.split("%", 1)[0])


def address_refusal(
    ip_text: str,
    port: int,
    *,
    allow_loopback: bool = False,
    api_servers: Iterable[tuple[str, int]] = (),
) -> str | None:
    """Why analysis never connects to `ip_text`:`port`, whatever the policy (None: it may).
    `api_servers` are the API server's (ip, port); the API server is refused on every port
    of its address, except a loopback one allowed for tests, where only its own port is."""
    ip = parse_ip(ip_text)
    for server_ip, server_port in api_servers:
        if parse_ip(server_ip) == ip and (not ip.is_loopback or port == server_port):
            return f"{ip} is the Kubernetes API server's address"
    inner = _embedded_ipv4(ip)
    if inner is not None:
        why = address_refusal(
            str(inner), port, allow_loopback=allow_loopback, api_servers=api_servers
        )
        return f"{ip} reaches {inner}: {why}" if why else None
    if ip in METADATA:
        return f"{ip} is a cloud metadata service"
    if ip.is_link_local:
        return f"{ip} is a link-local address (where cloud metadata services answer)"
    if ip.is_loopback and not allow_loopback:
        return (
            f"{ip} is a loopback address (the operator's own pod; test clusters only, with "
            f"{LOOPBACK_FLAG})"
        )
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip.is_reserved:
        return f"{ip} is a reserved address"
    return None
