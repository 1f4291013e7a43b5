"""The destination policy without sockets: address classes, allow-list patterns, spec-level refusals."""

from __future__ import annotations

import ipaddress

import pytest

from agent_runtime.policy import DestinationPolicy
from agent_runtime.spec import ErrorReason
from agent_runtime.transport import parse_kas_address
from agent_runtime.transport.destination import (
    AllowList,
    Destination,
    DestinationGuard,
    DestinationRefused,
    DestinationRefusedError,
    ip_category,
)

STRICT = DestinationPolicy()


@pytest.mark.parametrize(
    ("ip", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("fc00::1", "private"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.254", "shared (CGNAT)"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, never bound
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "private"),  # reserved for future use: never a kas
        ("192.0.2.1", "private"),  # documentation range
    ],
)
def test_non_public_addresses_are_classified(ip: str, category: str) -> None:
    assert ip_category(ipaddress.ip_address(ip)) == category


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "172.65.251.78", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_public(ip: str) -> None:
    assert ip_category(ipaddress.ip_address(ip)) is None


def test_allow_list_patterns() -> None:
    allow = AllowList.parse(["kas.example.com", "*.gitlab.example", "10.0.0.0/8", "192.0.2.7", "fd00::/8"])
    assert allow.names_host("KAS.example.com.")
    assert not allow.names_host("evil-kas.example.com")
    assert allow.names_host("a.b.gitlab.example")
    assert not allow.names_host("gitlab.example")  # *.domain is below the domain only
    assert not allow.names_host("gitlab.example.evil.com")
    assert allow.covers(ipaddress.ip_address("10.200.0.1"))
    assert allow.covers(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert allow.covers(ipaddress.ip_address("192.0.2.7"))
    assert not allow.covers(ipaddress.ip_address("192.0.2.8"))
    assert allow.covers(ipaddress.ip_address("fd12::1"))
    assert not allow.covers(ipaddress.ip_address("11.0.0.1"))
    assert AllowList.parse([]).empty


def _kas(host: str) -> Destination:
    return Destination(host, 443, "kas")


@pytest.mark.parametrize(
    ("policy", "host", "ip", "refused"),
    [
        (STRICT, "kas.example.com", "8.8.8.8", None),
        (STRICT, "kas.example.com", "10.0.0.1", "a private address"),
        (STRICT, "kas.example.com", "169.254.169.254", "a link-local address"),
        (DestinationPolicy(allow_private=True), "kas.example.com", "127.0.0.1", None),
        # An allowed CIDR admits its addresses whatever the name, and nothing else does.
        (DestinationPolicy(allowed_hosts=("10.0.0.0/8",)), "kas.internal", "10.0.0.1", None),
        (DestinationPolicy(allowed_hosts=("10.0.0.0/8",)), "kas.internal", "8.8.8.8", "outside"),
        # An allowed name still may not resolve to a private address unless private is allowed.
        (DestinationPolicy(allowed_hosts=("kas.internal",)), "kas.internal", "8.8.8.8", None),
        (DestinationPolicy(allowed_hosts=("kas.internal",)), "kas.internal", "10.0.0.1", "private"),
        (
            DestinationPolicy(allowed_hosts=("kas.internal",), allow_private=True),
            "kas.internal",
            "10.0.0.1",
            None,
        ),
        (DestinationPolicy(allowed_hosts=("kas.internal",)), "other.example", "8.8.8.8", "outside"),
    ],
)
def test_resolved_addresses(policy: DestinationPolicy, host: str, ip: str, refused: str | None) -> None:
    reason = DestinationGuard(policy).permitted(_kas(host), ipaddress.ip_address(ip))
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused in reason


def _refusal(
    policy: DestinationPolicy, address: str, *, skip_verify: bool = False
) -> DestinationRefusedError:
    with pytest.raises(DestinationRefusedError) as info:
        DestinationGuard(policy).check_connection(
            parse_kas_address(address), insecure_skip_verify=skip_verify
        )
    assert info.value.as_worker_error().reason is ErrorReason.DESTINATION_REFUSED
    return info.value


@pytest.mark.parametrize(
    ("address", "skip_verify", "words", "flag"),
    [
        ("ws://kas.example.com/", False, "ws:// (plaintext)", "--allow-plaintext-kas"),
        ("grpc://kas.example.com", False, "grpc:// (plaintext)", "--allow-plaintext-kas"),
        ("wss://kas.example.com/", True, "insecureSkipTLSVerify", "--allow-insecure-skip-tls-verify"),
        ("wss://127.0.0.1:8150/", False, "127.0.0.1:8150 is a loopback address", "--allow-private-kas"),
        ("grpcs://[::1]:8150", False, "[::1]:8150 is a loopback address", "--allow-private-kas"),
        ("wss://169.254.169.254/", False, "link-local", "--allow-private-kas"),
        ("wss://[::ffff:169.254.169.254]/", False, "link-local", "--allow-private-kas"),
        ("wss://100.64.1.1/", False, "CGNAT", "--allow-private-kas"),
    ],
)
def test_strict_policy_refuses_without_dns(address: str, skip_verify: bool, words: str, flag: str) -> None:
    error = _refusal(STRICT, address, skip_verify=skip_verify)
    assert words in error.message
    assert flag in error.hint


def test_allow_list_refuses_other_names_before_dns() -> None:
    policy = DestinationPolicy(allowed_hosts=("kas.example.com",))
    error = _refusal(policy, "wss://kas.evil.example/")
    assert "not in the operator's allowed kas hosts" in error.message
    assert "--allowed-kas-hosts" in error.hint
    DestinationGuard(policy).check_connection(
        parse_kas_address("wss://kas.example.com/"), insecure_skip_verify=False
    )


def test_permissive_flags_let_everything_through_the_static_check() -> None:
    policy = DestinationPolicy(allow_private=True, allow_plaintext=True, allow_insecure_skip_verify=True)
    guard = DestinationGuard(policy)
    for address in ("ws://127.0.0.1:1/", "grpc://[::1]:1", "wss://169.254.169.254/"):
        guard.check_connection(parse_kas_address(address), insecure_skip_verify=True)


def test_skip_verify_is_irrelevant_without_tls() -> None:
    policy = DestinationPolicy(allow_plaintext=True)
    DestinationGuard(policy).check_connection(
        parse_kas_address("ws://kas.example.com/"), insecure_skip_verify=True
    )


async def test_a_name_resolving_to_loopback_is_refused_after_resolution() -> None:
    guard = DestinationGuard(STRICT)
    guard.check_static(_kas("localhost"))  # a name: nothing to decide before DNS
    with pytest.raises(DestinationRefused) as info:
        await guard.resolve(_kas("localhost"), within=10)
    assert info.value.error.reason is ErrorReason.DESTINATION_REFUSED
    assert info.value.error.message.startswith("kas address localhost:443 resolves to a loopback address")
    permissive = DestinationGuard(DestinationPolicy(allow_private=True))
    assert all(ip.is_loopback for ip in await permissive.resolve(_kas("localhost"), within=10))
