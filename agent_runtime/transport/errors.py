"""Typed transport failures with fix hints: what gRPC alone reports as "socket closed" or "unavailable"."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Final
from urllib.parse import urlsplit

from agent_runtime.rpc_status import RpcError, StatusCode
from agent_runtime.spec import ErrorReason, WorkerError
from agent_runtime.transport.address import KasAddress

_log = logging.getLogger(__name__)

TRAILING_SLASH_HINT: Final = (
    "check the path of kasAddress; self-managed GitLab serves the agent endpoint at "
    "wss://<gitlab host>/-/kubernetes-agent/ and the trailing slash is required"
)
CA_HINT: Final = "set caCert to the CA that signed kas's certificate"
_TLS_HINT: Final = "check that the address points to a TLS endpoint (grpc:// and ws:// are plaintext)"
_UNREACHABLE_HINT: Final = "check kasAddress and that kas is reachable from the pod"
# OpenSSL verify codes that mean "I do not trust whoever signed this".
_UNKNOWN_AUTHORITY_CODES: Final = frozenset({2, 18, 19, 20, 21})
_HOSTNAME_MISMATCH: Final = 62
_EXPIRED: Final = 10


class TransportError(Exception):
    """A connection attempt to kas failed; `error` is what the worker reports."""

    def __init__(self, error: WorkerError) -> None:
        super().__init__(error.message)
        self.error = error


def connect_error(exc: BaseException, target: str, *, proxy: bool = False) -> WorkerError:
    """A failure to open the TCP connection to `target` (kas, or the proxy if `proxy`).

    Refused, timed out and unresolvable read the same in the status: telling them apart would let a
    tenant scan ports and names from the pod. The dialer logs the detail at debug level for the admin.
    """
    what = f"proxy {target}" if proxy else f"kas at {target}"
    hint = "check the proxy settings" if proxy else "check kasAddress and that kas is reachable from the pod"
    return WorkerError(ErrorReason.KAS_UNREACHABLE, f"cannot connect to {what}", hint)


def connect_detail(exc: BaseException) -> str:
    """What kind of connect failure `exc` is, for debug logs only (never the status)."""
    if isinstance(exc, socket.gaierror):
        return "name not resolved"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


_NAME_HINT: Final = "use the host name the certificate was issued for, or set tlsServerName"
_EXPIRED_HINT: Final = "kas's certificate must be renewed"


def tls_error(exc: BaseException, target: str) -> WorkerError:
    """Classify a failed TLS handshake with `target`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        message = f"TLS certificate of {target} not accepted: {exc.verify_message}"
        if code in _UNKNOWN_AUTHORITY_CODES:
            return WorkerError(ErrorReason.TLS_UNKNOWN_AUTHORITY, message, CA_HINT)
        if code == _HOSTNAME_MISMATCH:
            return WorkerError(ErrorReason.TLS_ERROR, message, _NAME_HINT)
        if code == _EXPIRED:
            return WorkerError(ErrorReason.TLS_ERROR, message, _EXPIRED_HINT)
        return WorkerError(ErrorReason.TLS_ERROR, message)
    if isinstance(exc, TimeoutError):
        return WorkerError(ErrorReason.TLS_ERROR, f"TLS handshake with {target} timed out")
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        return WorkerError(ErrorReason.TLS_ERROR, f"TLS handshake with {target} failed: {reason}", _TLS_HINT)
    return WorkerError(ErrorReason.TLS_ERROR, f"TLS handshake with {target} failed: {type(exc).__name__}")


def handshake_status_error(status: int, location: str | None, address: KasAddress) -> WorkerError:
    """A WebSocket upgrade answered with something other than 101.

    The message names the status code only: the reason phrase, the `Location` and every other byte of the
    answer are the peer's text, and the status must not relay what some service said to the tenant.
    """
    message = f"kas answered the WebSocket handshake with HTTP {status}"
    if 300 <= status < 400:
        hint = "redirects are not followed; put the final address in kasAddress"
        path = address.target.split("?", 1)[0]
        if location and urlsplit(location).path == path + "/":
            # Built from our own address: whether the redirect only adds the slash is all we take from it.
            hint = f"add the trailing slash to the path: {address.scheme}://{address.host_header}{path}/"
        return WorkerError(ErrorReason.WEBSOCKET_HANDSHAKE, message, hint)
    if status == 404:
        return WorkerError(ErrorReason.WEBSOCKET_HANDSHAKE, message, TRAILING_SLASH_HINT)
    if status in (401, 403):
        # kas itself never authenticates the upgrade (the token travels inside gRPC), so this is a
        # proxy or ingress in front of it, not a revoked agent token.
        hint = "a proxy or ingress in front of kas rejected the upgrade; check kasHeaders"
        return WorkerError(ErrorReason.WEBSOCKET_HANDSHAKE, message, hint)
    if status in (502, 503, 504):
        return WorkerError(ErrorReason.KAS_UNREACHABLE, message, "kas behind the proxy is not available")
    return WorkerError(
        ErrorReason.WEBSOCKET_HANDSHAKE, message, "check that kasAddress points to kas's agent endpoint"
    )


UNREACHABLE_MESSAGE: Final = "kas unavailable"
"""The reading of grpc's UNAVAILABLE when it is not about TLS (grpc's text itself is never shown)."""
CHANNEL_LOST_MESSAGE: Final = "the connection to kas is lost; reconnecting"
"""What the worker reports when its channel is in TRANSIENT_FAILURE and the transport knows no more."""
GRPC_CONNECT_FAILED: Final = "failed to connect to all addresses"
"""How grpc core's details start when it could not connect (as opposed to kas answering UNAVAILABLE)."""


def classify_rpc_error(err: RpcError) -> WorkerError | None:
    """A transport-level reading of a failed RPC (grpc/grpcs), or None when it is not transport-level."""
    if err.code() is not StatusCode.UNAVAILABLE:
        return None
    return classify_unavailable(err.details())


def classify_unavailable(details: str) -> WorkerError:
    """The transport's reading of grpc's UNAVAILABLE `details`, which are never shown themselves."""
    lowered = details.lower()
    # grpc core reports a name mismatch as its own "Hostname Verification Check failed", without
    # CERTIFICATE_VERIFY_FAILED, and an expired certificate as CERTIFICATE_VERIFY_FAILED: each needs its
    # own reading (the caCert hint is wrong for both when caCert is already set).
    if "hostname verification" in lowered or (
        "certificate_verify_failed" in lowered and ("hostname" in lowered or "name mismatch" in lowered)
    ):
        return WorkerError(
            ErrorReason.TLS_ERROR, "TLS certificate of kas does not match its name", _NAME_HINT
        )
    if "certificate_verify_failed" in lowered or "certificate verify failed" in lowered:
        if "expired" in lowered:
            return WorkerError(ErrorReason.TLS_ERROR, "TLS certificate of kas has expired", _EXPIRED_HINT)
        return WorkerError(ErrorReason.TLS_UNKNOWN_AUTHORITY, "TLS certificate of kas not trusted", CA_HINT)
    if "ssl" in lowered or "handshake" in lowered or "tls" in lowered:
        _log.debug("TLS failure talking to kas: %s", details[:200])
        return WorkerError(ErrorReason.TLS_ERROR, "TLS handshake with kas failed", _TLS_HINT)
    # grpc's details name addresses and tell refused from unresolvable: logs only (see connect_error).
    _log.debug("kas unavailable: %s", details[:200])
    return WorkerError(ErrorReason.KAS_UNREACHABLE, UNREACHABLE_MESSAGE, _UNREACHABLE_HINT)
