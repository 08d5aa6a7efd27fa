"""Network policy for HTTP nodes: which hosts and addresses the worker may connect to.

The policy comes from the ``[network]`` table of dagwright.toml::

    [network]
    allow = ["127.0.0.1/32", "*.example.com"]   # empty (the default): allow all but `deny`
    deny = ["10.0.0.0/8", "internal.example.com"]
    default_deny = true                          # keep DEFAULT_DENY in the deny list

A rule is a network in CIDR notation (``169.254.0.0/16``), a single address (``fd00:ec2::254``),
a host name (``metadata.google.internal``) or a wildcard name (``*.example.com``, which matches
every subdomain of example.com but not example.com itself). Deny rules win over allow rules.

Checks happen at two points, so neither a redirect nor DNS can route around them:

1. Before each request and each redirect hop (an httpx request hook), on the URL's host: name
   rules against the name, address rules against a literal address. A denied name is never
   resolved.
2. When a connection opens (an httpcore network backend), on the resolved addresses: the host
   is resolved once, every address it resolves to is checked, and the connection is made to
   one of the checked addresses. Because the socket connects to the address that was checked,
   a DNS server that answers differently on a second lookup (DNS rebinding) cannot redirect
   the connection. TLS still verifies the certificate against the host name of the URL.

An HTTP proxy that httpx reads from the environment (``HTTPS_PROXY`` and so on) resolves the
target itself. For proxied requests, only the first check applies to the target, and the
second one to the proxy's address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from dagwright.config import ConfigError

logger = logging.getLogger(__name__)

NETWORK_POLICY_DENIED = "NetworkPolicyDenied"

# Link-local ranges and the cloud metadata endpoints (AWS, GCP, Azure and others serve
# instance credentials on 169.254.169.254; AWS also on fd00:ec2::254 over IPv6).
DEFAULT_DENY = (
    "169.254.0.0/16",
    "fe80::/10",
    "169.254.169.254",
    "fd00:ec2::254",
    "metadata.google.internal",
)

# A host name, optionally after "*.": dot-separated labels of letters, digits, "-" and "_".
_NAME_RULE_PATTERN = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


class NetworkPolicyViolation(Exception):
    """Raised before a connection to a host that the network policy denies."""

    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.describe())
        self.denial = denial


@dataclass(frozen=True)
class Rule:
    """One allow or deny entry: a network or a host name pattern, as written in the config."""

    text: str
    network: IPNetwork | None = None
    name: str | None = None

    def matches_name(self, host: str) -> bool:
        if self.name is None:
            return False
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name

    def matches_address(self, address: IPAddress) -> bool:
        return self.network is not None and address.version == self.network.version and address in self.network


@dataclass(frozen=True)
class Denial:
    """Why a host was denied: the host, the address that failed (if any) and the rule."""

    host: str
    rule: str
    address: str | None = None

    def describe(self) -> str:
        where = f"host '{self.host}'"
        if self.address is not None and self.address != self.host:
            where += f" (resolved to {self.address})"
        if self.rule == "allow":
            return f"{where} matches no rule of the network allow list"
        return f"{where} matches the network deny rule '{self.rule}'"


@dataclass(frozen=True)
class NetworkPolicy:
    """Allow and deny rules for outgoing HTTP connections; the default denies DEFAULT_DENY."""

    allow: tuple[Rule, ...] = ()
    deny: tuple[Rule, ...] = field(default_factory=lambda: tuple(parse_rule(text) for text in DEFAULT_DENY))

    @classmethod
    def from_rules(cls, *, allow: Iterable[str] = (), deny: Iterable[str] = (),
                   default_deny: bool = True) -> NetworkPolicy:
        """Build a policy from rule strings; DEFAULT_DENY is added unless ``default_deny`` is False.

        Raises:
            ValueError: a rule is neither a network, an address nor a host name pattern.
        """
        deny_texts = [*(DEFAULT_DENY if default_deny else ()), *deny]
        return cls(allow=tuple(parse_rule(text) for text in allow),
                   deny=tuple(parse_rule(text) for text in deny_texts))

    def check_host(self, host: str) -> Denial | None:
        """Check a URL's host before any lookup: name rules, and address rules for a literal."""
        name = normalize_host(host)
        address = _parse_address(name)
        if address is not None:
            return self.check_addresses(name, [str(address)])
        for rule in self.deny:
            if rule.matches_name(name):
                return Denial(host=name, rule=rule.text)
        return None

    def check_addresses(self, host: str, addresses: Sequence[str]) -> Denial | None:
        """Check every address a host resolved to; one denied address denies the host."""
        name = normalize_host(host)
        name_allowed = any(rule.matches_name(name) for rule in self.allow)
        for text in addresses:
            denial = self._check_address(name, text, name_allowed)
            if denial is not None:
                return denial
        return None

    def _check_address(self, name: str, text: str, name_allowed: bool) -> Denial | None:
        candidates = _address_forms(text)
        for rule in self.deny:
            if rule.matches_name(name) or any(rule.matches_address(candidate) for candidate in candidates):
                return Denial(host=name, rule=rule.text, address=text)
        if not self.allow or name_allowed:
            return None
        if any(rule.matches_address(candidate) for rule in self.allow for candidate in candidates):
            return None
        return Denial(host=name, rule="allow", address=text)


def parse_rule(text: str) -> Rule:
    """Parse one rule string: a CIDR network, an address, a host name or ``*.domain``.

    Raises:
        ValueError: the text is none of these.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"network rule {text!r} is empty or not a string")
    cleaned = text.strip()
    try:
        return Rule(text=cleaned, network=ipaddress.ip_network(cleaned, strict=False))
    except ValueError:
        pass
    name = normalize_host(cleaned)
    if not _NAME_RULE_PATTERN.fullmatch(name):
        raise ValueError(
            f"network rule {text!r} is not a network (10.0.0.0/8), an address, a host name "
            "(metadata.google.internal) or a wildcard name (*.example.com)"
        )
    return Rule(text=cleaned, name=name)


def network_policy_from_config(raw: Mapping[str, Any]) -> NetworkPolicy:
    """Build the policy from a parsed dagwright.toml (its ``[network]`` table, if any).

    Raises:
        ConfigError: the table has unknown keys, or a rule or value is invalid.
    """
    section = raw.get("network", {})
    if not isinstance(section, Mapping):
        raise ConfigError("[network] must be a table with 'allow', 'deny' and 'default_deny'")
    unknown = sorted(set(section) - {"allow", "deny", "default_deny"})
    if unknown:
        raise ConfigError(f"[network] has unknown keys {unknown}; expected 'allow', 'deny' and 'default_deny'")
    default_deny = section.get("default_deny", True)
    if not isinstance(default_deny, bool):
        raise ConfigError(f"[network] default_deny must be true or false, not {default_deny!r}")
    try:
        return NetworkPolicy.from_rules(allow=_rule_list(section, "allow"), deny=_rule_list(section, "deny"),
                                        default_deny=default_deny)
    except ValueError as exc:
        raise ConfigError(f"[network]: {exc}") from None


def _rule_list(section: Mapping[str, Any], key: str) -> list[str]:
    value = section.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"[network] {key} must be a list of strings, not {value!r}")
    return value


def normalize_host(host: str) -> str:
    """Lower-case a host, drop IPv6 brackets and a trailing dot (``Example.COM.`` = ``example.com``)."""
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _address_forms(text: str) -> list[IPAddress]:
    """Return the address and, for an IPv4-mapped IPv6 address, the IPv4 address it maps to."""
    address = _parse_address(text)
    if address is None:
        return []
    forms: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    return forms


# ---------------------------------------------------------------- enforcement in httpx


async def resolve_host(host: str, port: int) -> list[str]:
    """Resolve a host name to its addresses, in the resolver's order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canonical, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class PolicyNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks, then connects to a checked address."""

    def __init__(self, policy: NetworkPolicy, inner: httpcore.AsyncNetworkBackend | None = None,
                 resolver: Resolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()
        self._resolver = resolver

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        denial = self._policy.check_addresses(host, addresses)
        if denial is not None:
            raise NetworkPolicyViolation(denial)

        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return await self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        if _parse_address(host) is not None:
            return [host]
        # Looked up at call time, so tests can replace `resolve_host` for the whole module.
        resolver = self._resolver or resolve_host
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out after {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolved to no address")
        return addresses


class PolicyTransport(httpx.AsyncHTTPTransport):
    """httpx's default transport with the connection pool's network backend replaced."""

    def __init__(self, policy: NetworkPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pool = self._pool
        # NOTE: httpx has no public option for the network backend, so the pool it built is
        # given one here. httpcore 1.0 reads `_network_backend` each time it opens a connection.
        if not hasattr(pool, "_network_backend"):
            raise RuntimeError(
                "this httpcore version has no connection-pool network backend; the network "
                "policy cannot be enforced. Install httpcore 1.0.x."
            )
        pool._network_backend = PolicyNetworkBackend(policy, inner=pool._network_backend)


def client_options(policy: NetworkPolicy) -> dict[str, Any]:
    """Return ``httpx.AsyncClient`` keyword arguments that enforce ``policy`` on every hop."""

    async def check_request(request: httpx.Request) -> None:
        denial = policy.check_host(request.url.host)
        if denial is not None:
            raise NetworkPolicyViolation(denial)

    return {"transport": PolicyTransport(policy), "event_hooks": {"request": [check_request]}}
