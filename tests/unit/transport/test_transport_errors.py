"""Error classification, configuration errors of open_kas_connection, and the open-files limit helper."""

from __future__ import annotations

import resource
import ssl

import grpc
import grpc.aio
import pytest

from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.rpc_status import RpcError
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, ProxySettings, TlsSettings, WorkerSpec
from agent_runtime.transport import (
    TransportConfigError,
    classify_rpc_error,
    fds_needed,
    open_kas_connection,
    parse_kas_address,
    raise_nofile_limit,
)
from agent_runtime.transport.errors import handshake_status_error, tls_error
from agent_runtime.transport.grpc_aio import rpc_error

TOKEN = "glagent-" + "s" * 50


def test_redirect_to_the_same_path_with_a_slash_hints_the_slash() -> None:
    address = parse_kas_address("wss://gitlab.example.com/gitlab/agent")
    error = handshake_status_error(301, "https://gitlab.example.com/gitlab/agent/", address)
    assert error.reason == ErrorReason.WEBSOCKET_HANDSHAKE
    assert error.message == "kas answered the WebSocket handshake with HTTP 301"
    assert error.hint == "add the trailing slash to the path: wss://gitlab.example.com/gitlab/agent/"


def test_other_redirects_say_redirects_are_not_followed() -> None:
    address = parse_kas_address("wss://old.example.com/")
    error = handshake_status_error(302, "https://new.example.com/", address)
    assert "not followed" in error.hint
    assert "new.example.com" not in f"{error.message} {error.hint}"  # the peer's Location is not echoed


def test_gateway_errors_mean_kas_is_down_behind_a_proxy() -> None:
    error = handshake_status_error(502, None, parse_kas_address("wss://h/"))
    assert error.reason == ErrorReason.KAS_UNREACHABLE


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_code = code
    error.verify_message = message
    return error


@pytest.mark.parametrize(
    ("code", "reason", "hint"),
    [
        (20, ErrorReason.TLS_UNKNOWN_AUTHORITY, "caCert"),
        (19, ErrorReason.TLS_UNKNOWN_AUTHORITY, "caCert"),
        (62, ErrorReason.TLS_ERROR, "tlsServerName"),
        (10, ErrorReason.TLS_ERROR, "renewed"),
    ],
)
def test_tls_verification_failures(code: int, reason: ErrorReason, hint: str) -> None:
    error = tls_error(_verify_error(code, "something"), "kas:443")
    assert error.reason == reason
    assert hint in error.hint


def _rpc_error(code: grpc.StatusCode, details: str) -> RpcError:
    """grpc core's error as the grpc path hands it to the runtime."""
    return rpc_error(grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details))


@pytest.mark.parametrize(
    ("details", "reason"),
    [
        (
            "failed to connect to all addresses; last error: Ssl handshake failed: CERTIFICATE_VERIFY_FAILED",
            ErrorReason.TLS_UNKNOWN_AUTHORITY,
        ),
        ("failed to connect to all addresses; last error: Connection refused", ErrorReason.KAS_UNREACHABLE),
        ("DNS resolution failed for kas.example:443", ErrorReason.KAS_UNREACHABLE),
        ("Socket closed", ErrorReason.KAS_UNREACHABLE),
    ],
)
def test_rpc_errors_read_as_transport_errors(details: str, reason: ErrorReason) -> None:
    error = classify_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, details))
    assert error is not None
    assert error.reason == reason


def test_non_transport_rpc_errors_are_not_classified() -> None:
    assert classify_rpc_error(_rpc_error(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")) is None


def _spec(address: str, **kwargs: object) -> WorkerSpec:
    return WorkerSpec(id="ns/a", kas_address=address, token=Secret(TOKEN), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (_spec("https://kas.example.com"), "unsupported scheme"),
        (_spec("wss://kas.example.com", tls=TlsSettings(ca_pem=b"not a pem")), "no PEM certificate"),
        (
            _spec("grpcs://kas.example.com", tls=TlsSettings(ca_pem=b"-----BEGIN CERTIFICATE-----\nAAA\n")),
            "cannot be loaded",
        ),
        (_spec("wss://kas.example.com", kas_headers=(("Host", "x"),)), "WebSocket handshake"),
        (_spec("grpc://kas.example.com", kas_headers=(("Authorization", "x"),)), "reserved"),
        (_spec("wss://kas.example.com", proxy=ProxySettings(url="socks5://p:1")), "proxy scheme"),
        (_spec("grpc://kas.example.com", proxy=ProxySettings(url="ftp://p:1")), "proxy scheme"),
    ],
)
async def test_unusable_specs_fail_with_a_worker_error(spec: WorkerSpec, words: str) -> None:
    with pytest.raises(TransportConfigError) as info:
        await open_kas_connection(
            spec, user_agent="gitlab-agent/v0/0", policy=PERMISSIVE_POLICY.destinations, environ={}
        )
    worker_error = info.value.as_worker_error()
    assert worker_error.reason == ErrorReason.CONFIGURATION_REJECTED
    assert words in worker_error.message
    assert TOKEN not in str(info.value)


def test_raise_nofile_limit_never_lowers() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_nofile_limit(1) == soft
    raised = raise_nofile_limit(fds_needed(100))
    assert raised >= min(fds_needed(100), hard)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
    assert fds_needed(0) < fds_needed(1000)


@pytest.mark.parametrize(
    "details",
    [
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.5:6379: Connection refused",
        "DNS resolution failed for redis.internal:6379",
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.5:22: Ssl handshake failed",
    ],
)
def test_grpc_details_are_not_echoed(details: str) -> None:
    """grpc's details name internal addresses and tell refused from unresolvable: never in the status."""
    error = classify_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, details))
    assert error is not None
    assert "10.0.0.5" not in error.message
    assert "redis.internal" not in error.message
    assert "refused" not in error.message
    assert "DNS" not in error.message
