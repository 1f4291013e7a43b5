"""Kas address parsing, kas header validation and proxy selection."""

from __future__ import annotations

import pytest

from agent_runtime.spec import ErrorReason, ProxySettings
from agent_runtime.transport.address import KasAddressError, Scheme, parse_kas_address
from agent_runtime.transport.headers import KasHeaderError, handshake_headers, metadata_headers
from agent_runtime.transport.proxy import ProxyConfigError, bypasses_proxy, parse_proxy_url, proxy_for


@pytest.mark.parametrize(
    ("raw", "scheme", "host", "port", "target"),
    [
        ("grpc://kas.example.com", Scheme.GRPC, "kas.example.com", 80, ""),
        ("grpcs://kas.example.com", Scheme.GRPCS, "kas.example.com", 443, ""),
        ("grpcs://kas.example.com:8443/", Scheme.GRPCS, "kas.example.com", 8443, ""),
        ("wss://kas.gitlab.com", Scheme.WSS, "kas.gitlab.com", 443, "/"),
        ("ws://kas:8150", Scheme.WS, "kas", 8150, "/"),
        (
            "wss://gitlab.example.com/-/kubernetes-agent/",
            Scheme.WSS,
            "gitlab.example.com",
            443,
            "/-/kubernetes-agent/",
        ),
        ("wss://h/ext/kas?x=1", Scheme.WSS, "h", 443, "/ext/kas?x=1"),
        ("WSS://H.example.com", Scheme.WSS, "h.example.com", 443, "/"),
        ("ws://[::1]:8150/", Scheme.WS, "::1", 8150, "/"),
        ("  grpc://10.0.0.1:1234  ", Scheme.GRPC, "10.0.0.1", 1234, ""),
    ],
)
def test_valid_addresses(raw: str, scheme: Scheme, host: str, port: int, target: str) -> None:
    address = parse_kas_address(raw)
    assert (address.scheme, address.host, address.port, address.target) == (scheme, host, port, target)


def test_derived_forms() -> None:
    ws = parse_kas_address("ws://[::1]:8150/x")
    assert ws.host_port == "[::1]:8150"
    assert ws.host_header == "[::1]:8150"
    assert ws.websocket
    assert not ws.tls
    wss = parse_kas_address("wss://kas.gitlab.com:443")
    assert wss.host_header == "kas.gitlab.com"
    assert str(wss) == "wss://kas.gitlab.com/"
    grpcs = parse_kas_address("grpcs://kas.example.com")
    assert grpcs.grpc_target == "dns:///kas.example.com:443"
    assert grpcs.tls


def _error(raw: str) -> KasAddressError:
    with pytest.raises(KasAddressError) as info:
        parse_kas_address(raw)
    return info.value


def test_unsupported_scheme_uses_agentks_words() -> None:
    error = _error("ftp://kas.example.com")
    assert "unsupported scheme 'ftp' in GitLab Kubernetes Agent Server address" in error.message
    assert "grpc://, grpcs://, ws:// or wss://" in error.hint


def test_https_suggests_wss() -> None:
    error = _error("https://gitlab.example.com/-/kubernetes-agent/")
    assert "use wss:// instead of https://" in error.hint


def test_missing_scheme_suggests_one() -> None:
    error = _error("kas.gitlab.com")
    assert "no scheme" in error.message
    assert "wss://kas.gitlab.com" in error.hint


@pytest.mark.parametrize(
    "raw", ["wss://gitlab.example.com/-/kubernetes-agent", "ws://h/gitlab/-/kubernetes-agent"]
)
def test_omnibus_path_without_trailing_slash(raw: str) -> None:
    error = _error(raw)
    assert "trailing slash" in error.message
    assert "301" in error.message
    assert error.hint == f"use {raw}/"
    worker_error = error.as_worker_error()
    assert worker_error.reason == ErrorReason.CONFIGURATION_REJECTED
    assert worker_error.hint == error.hint


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "empty"),
        ("wss://", "no host"),
        ("wss://h:99999", "invalid port"),
        ("wss://h:0", "port 0"),
        ("wss://h:abc", "invalid port"),
        ("wss://user:hunter2@h/", "credentials"),
        ("wss://h/#frag", "fragment"),
        ("grpcs://h/-/kubernetes-agent/", "no path"),
        ("wss://bad_host!/", "invalid host"),
        ("wss://h/a b", "whitespace"),
    ],
)
def test_invalid_addresses(raw: str, words: str) -> None:
    error = _error(raw)
    assert words in str(error)
    assert "hunter2" not in str(error)


def test_handshake_headers_trim_and_refuse_owned_names() -> None:
    assert handshake_headers([(" X-Team ", " a ")]) == (("X-Team", "a"),)
    for name in ("Host", "Sec-WebSocket-Protocol", "Origin", "connection"):
        with pytest.raises(KasHeaderError, match="set by the WebSocket handshake"):
            handshake_headers([(name, "v")])
    with pytest.raises(KasHeaderError, match="empty value"):
        handshake_headers([("X", " ")])


def test_header_errors_never_show_values() -> None:
    with pytest.raises(KasHeaderError) as info:
        handshake_headers([("X-Token", "secret\r\nvalue")])
    assert "secret" not in str(info.value)
    with pytest.raises(KasHeaderError) as info2:
        metadata_headers([("X-Token", "sécret")])
    assert "sécret" not in str(info2.value)


def test_metadata_headers() -> None:
    assert metadata_headers([("X-Team", "a")]) == (("x-team", "a"),)
    for name in ("Authorization", "grpc-timeout", "x-data-bin", "te", "bad key"):
        with pytest.raises(KasHeaderError):
            metadata_headers([(name, "v")])


def test_proxy_from_environment() -> None:
    env = {"HTTPS_PROXY": "http://user:p%40ss@proxy.internal:3128", "HTTP_PROXY": "proxy2:8080"}
    wss = parse_kas_address("wss://kas.gitlab.com")
    proxy = proxy_for(wss, None, env)
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.tls) == ("proxy.internal", 3128, False)
    assert proxy.authorization == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert "p@ss" not in repr(proxy)
    ws = parse_kas_address("ws://kas.example.com")
    plain = proxy_for(ws, None, env)
    assert plain is not None
    assert plain.display == "proxy2:8080"
    for grpc_address in ("grpc://kas.example.com", "grpcs://kas.example.com"):  # as grpc-go: https's proxy
        through = proxy_for(parse_kas_address(grpc_address), None, env)
        assert through is not None
        assert through.display == "proxy.internal:3128"
    assert proxy_for(wss, None, {**env, "NO_PROXY": ".gitlab.com"}) is None
    assert proxy_for(parse_kas_address("wss://127.0.0.1:8150"), None, env) is None


def test_explicit_proxy_replaces_environment() -> None:
    wss = parse_kas_address("wss://kas.gitlab.com")
    explicit = ProxySettings(url="https://proxy.corp:8443", no_proxy="")
    proxy = proxy_for(wss, explicit, {"HTTPS_PROXY": "http://other:1"})
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.tls) == ("proxy.corp", 8443, True)
    assert proxy_for(wss, ProxySettings(url="http://p:1", no_proxy="kas.gitlab.com"), {}) is None


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("kas.gitlab.com", 443, "*", True),
        ("kas.gitlab.com", 443, "gitlab.com", True),
        ("kas.gitlab.com", 443, ".gitlab.com", True),
        ("kas.gitlab.com", 443, "*.gitlab.com", True),
        ("notgitlab.com", 443, "gitlab.com", False),
        ("kas.gitlab.com", 443, "kas.gitlab.com:8443", False),
        ("kas.gitlab.com", 8443, "kas.gitlab.com:8443", True),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "10.1.2.4", False),
        ("localhost", 80, "", True),
        ("::1", 80, "", True),
        ("example.org", 80, " , ", False),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypasses_proxy(host, port, no_proxy) is bypass


def test_bad_proxy_url_does_not_echo_it() -> None:
    with pytest.raises(ProxyConfigError) as info:
        parse_proxy_url("socks5://user:hunter2@p:1080")
    assert "hunter2" not in str(info.value)
