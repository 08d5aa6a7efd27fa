"""Network policy for HTTP nodes: rule matching, configuration, and enforcement in the activity.

No test sends traffic anywhere but 127.0.0.1. The `connections` fixture makes every TCP
connection to another address fail the test before a socket opens, and host names other than
"localhost" resolve through a fake resolver, so no DNS query leaves the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from httpcore._backends.auto import AutoBackend
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from dagwright.activities import network_policy
from dagwright.activities.http import HttpRequest, make_http_activity
from dagwright.activities.network_policy import (
    NETWORK_POLICY_DENIED,
    Denial,
    NetworkPolicy,
    network_policy_from_config,
    parse_rule,
)
from dagwright.config import ConfigError
from http_stub import HttpStub, Reply

DEFAULT = NetworkPolicy()

# Fake DNS: names used by the tests and the addresses they "resolve" to.
FAKE_DNS = {
    "service.test": ["127.0.0.1"],
    "rebind.test": ["127.0.0.1", "169.254.169.254"],
    "loopback-two.test": ["127.0.0.2"],
}


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record each TCP connection httpx opens; fail loudly on any host but 127.0.0.1."""
    opened: list[str] = []
    real_connect = AutoBackend.connect_tcp

    async def guarded_connect(self: AutoBackend, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        opened.append(host)
        if host != "127.0.0.1":
            raise AssertionError(f"the test tried to connect to {host}:{port}; only 127.0.0.1 is allowed")
        return await real_connect(self, host, port, *args, **kwargs)

    async def fake_resolve(host: str, port: int) -> list[str]:
        if host in FAKE_DNS:
            return FAKE_DNS[host]
        if host == "localhost":
            return ["127.0.0.1"]
        raise AssertionError(f"the test tried to resolve {host}; only names in FAKE_DNS resolve")

    monkeypatch.setattr(AutoBackend, "connect_tcp", guarded_connect)
    monkeypatch.setattr(network_policy, "resolve_host", fake_resolve)
    yield opened


async def send(policy: NetworkPolicy, url: str, node_id: str = "call") -> dict[str, Any]:
    activity = make_http_activity(policy)
    return await ActivityEnvironment().run(activity, HttpRequest(node_id=node_id, url=url, timeout_seconds=10))


async def send_denied(policy: NetworkPolicy, url: str, node_id: str = "call") -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await send(policy, url, node_id)
    error = caught.value
    assert error.type == NETWORK_POLICY_DENIED, error.message
    assert error.non_retryable
    return error


# ---------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("text", "network", "name"),
    [
        ("169.254.0.0/16", "169.254.0.0/16", None),
        ("127.0.0.2", "127.0.0.2/32", None),
        ("fd00:ec2::254", "fd00:ec2::254/128", None),
        ("Metadata.Google.Internal.", None, "metadata.google.internal"),
        ("*.example.com", None, "*.example.com"),
    ],
)
def test_parse_rule(text: str, network: str | None, name: str | None) -> None:
    rule = parse_rule(text)

    assert (str(rule.network) if rule.network else None) == network
    assert rule.name == name


@pytest.mark.parametrize("text", ["", "  ", "*", "*.", "a..b", "ex*ample.com", "10.0.0.0/33x"])
def test_parse_rule_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="network rule"):
        parse_rule(text)


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("169.254.169.254", "169.254.0.0/16"),
        ("169.254.1.1", "169.254.0.0/16"),
        ("[fe80::1]", "fe80::/10"),
        ("fd00:ec2::254", "fd00:ec2::254"),
        ("::ffff:169.254.169.254", "169.254.0.0/16"),
        ("metadata.google.internal", "metadata.google.internal"),
        ("METADATA.google.internal.", "metadata.google.internal"),
    ],
)
def test_default_policy_denies(host: str, rule: str) -> None:
    denial = DEFAULT.check_host(host)

    assert denial is not None
    assert denial.rule == rule


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "example.com", "10.0.0.1"])
def test_default_policy_allows(host: str) -> None:
    assert DEFAULT.check_host(host) is None


def test_every_resolved_address_is_checked() -> None:
    denial = DEFAULT.check_addresses("rebind.test", ["127.0.0.1", "169.254.169.254"])

    assert denial == Denial(host="rebind.test", rule="169.254.0.0/16", address="169.254.169.254")


def test_allow_list() -> None:
    policy = NetworkPolicy.from_rules(allow=["127.0.0.1/32", "*.example.com"])

    assert policy.check_addresses("other.test", ["127.0.0.1"]) is None
    assert policy.check_addresses("api.example.com", ["192.0.2.10"]) is None
    assert policy.check_addresses("example.com", ["192.0.2.10"]) == Denial(
        host="example.com", rule="allow", address="192.0.2.10"
    )
    assert policy.check_addresses("other.test", ["127.0.0.2"]) == Denial(
        host="other.test", rule="allow", address="127.0.0.2"
    )


def test_deny_wins_over_allow() -> None:
    policy = NetworkPolicy.from_rules(allow=["*.example.com", "169.254.0.0/16"])

    denial = policy.check_addresses("api.example.com", ["169.254.169.254"])

    assert denial is not None
    assert denial.rule == "169.254.0.0/16"


def test_default_deny_can_be_turned_off() -> None:
    policy = NetworkPolicy.from_rules(deny=["127.0.0.2"], default_deny=False)

    assert policy.check_host("169.254.169.254") is None
    assert policy.check_host("127.0.0.2") == Denial(host="127.0.0.2", rule="127.0.0.2", address="127.0.0.2")


def test_denial_message_names_host_address_and_rule() -> None:
    text = Denial(host="rebind.test", rule="169.254.0.0/16", address="169.254.169.254").describe()

    assert text == "host 'rebind.test' (resolved to 169.254.169.254) matches the network deny rule '169.254.0.0/16'"


# ---------------------------------------------------------------- configuration


def test_config_default_policy() -> None:
    assert network_policy_from_config({}) == DEFAULT


def test_config_rules() -> None:
    policy = network_policy_from_config(
        {"network": {"allow": ["127.0.0.1/32"], "deny": ["127.0.0.2"], "default_deny": True}}
    )

    assert [rule.text for rule in policy.allow] == ["127.0.0.1/32"]
    assert [rule.text for rule in policy.deny][-1] == "127.0.0.2"
    assert policy.check_host("169.254.169.254") is not None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"alow": []}, "unknown keys \\['alow'\\]"),
        ({"deny": "127.0.0.2"}, "deny must be a list"),
        ({"deny": ["not a host!"]}, "network rule 'not a host!'"),
        ({"default_deny": "yes"}, "default_deny must be true or false"),
    ],
)
def test_config_rejects(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        network_policy_from_config({"network": section})


# ---------------------------------------------------------------- enforcement in the activity


async def test_metadata_address_denied_before_connecting(connections: list[str]) -> None:
    error = await send_denied(DEFAULT, "http://169.254.169.254/latest/meta-data/", node_id="steal")

    assert "HTTP node 'steal'" in error.message
    assert "host '169.254.169.254'" in error.message
    assert "deny rule '169.254.0.0/16'" in error.message
    assert connections == []


async def test_metadata_name_denied_without_lookup(connections: list[str]) -> None:
    error = await send_denied(DEFAULT, "http://metadata.google.internal/computeMetadata/v1/")

    assert "deny rule 'metadata.google.internal'" in error.message
    assert connections == []


async def test_ipv6_metadata_denied(connections: list[str]) -> None:
    error = await send_denied(DEFAULT, "http://[fd00:ec2::254]/latest/")

    assert "deny rule 'fd00:ec2::254'" in error.message
    assert connections == []


async def test_deny_rule_for_loopback_address(connections: list[str]) -> None:
    policy = NetworkPolicy.from_rules(deny=["127.0.0.2"])

    async with HttpStub() as stub:
        error = await send_denied(policy, f"http://127.0.0.2:{stub.port}/ok")

    assert "deny rule '127.0.0.2'" in error.message
    assert connections == []


async def test_allowed_loopback_request(connections: list[str]) -> None:
    policy = NetworkPolicy.from_rules(allow=["127.0.0.1/32"], deny=["127.0.0.2"])

    async with HttpStub() as stub:
        stub.script("/ok", Reply(json={"ok": True}))
        result = await send(policy, f"{stub.url}/ok")

    assert result["json"] == {"ok": True}
    assert connections == ["127.0.0.1"]


async def test_allow_list_denies_other_addresses(connections: list[str]) -> None:
    policy = NetworkPolicy.from_rules(allow=["127.0.0.1/32"])

    async with HttpStub() as stub:
        error = await send_denied(policy, f"http://loopback-two.test:{stub.port}/ok")

    assert "host 'loopback-two.test' (resolved to 127.0.0.2) matches no rule of the network allow list" in error.message
    assert connections == []


async def test_connection_pinned_to_checked_address(connections: list[str]) -> None:
    async with HttpStub() as stub:
        stub.script("/ok", Reply(text="pinned"))
        result = await send(DEFAULT, f"http://service.test:{stub.port}/ok")
        [request] = stub.requests("/ok")

    assert result["text"] == "pinned"
    assert request.headers["host"] == f"service.test:{stub.port}"
    assert connections == ["127.0.0.1"]


async def test_name_resolving_to_metadata_denied(connections: list[str]) -> None:
    error = await send_denied(DEFAULT, "http://rebind.test/latest/")

    assert "host 'rebind.test' (resolved to 169.254.169.254)" in error.message
    assert connections == []


async def test_redirect_to_metadata_denied(connections: list[str]) -> None:
    async with HttpStub() as stub:
        stub.script("/hop", Reply(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}))
        error = await send_denied(DEFAULT, f"{stub.url}/hop", node_id="follow")
        hops = stub.requests("/hop")

    assert "HTTP node 'follow'" in error.message
    assert "host '169.254.169.254'" in error.message
    assert len(hops) == 1
    assert connections == ["127.0.0.1"]


async def test_redirect_to_denied_name_denied(connections: list[str]) -> None:
    policy = NetworkPolicy.from_rules(deny=["127.0.0.2"])

    async with HttpStub() as stub:
        stub.script("/hop", Reply(status=307, headers={"Location": f"http://loopback-two.test:{stub.port}/x"}))
        error = await send_denied(policy, f"{stub.url}/hop")

    assert "host 'loopback-two.test' (resolved to 127.0.0.2) matches the network deny rule '127.0.0.2'" in error.message
    assert connections == ["127.0.0.1"]


async def test_unresolvable_host_is_retryable(monkeypatch: pytest.MonkeyPatch, connections: list[str]) -> None:
    async def failing_resolve(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(network_policy, "resolve_host", failing_resolve)

    with pytest.raises(ApplicationError) as caught:
        await send(DEFAULT, "http://nowhere.test/")

    assert caught.value.type == "HttpConnectionError"
    assert not caught.value.non_retryable
    assert connections == []

