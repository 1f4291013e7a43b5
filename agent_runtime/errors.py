"""Turn gRPC failures from kas into typed, user-facing WorkerErrors with a fix hint.

Messages are built from the status code and kas's details only; kas never echoes the token, and we never
put request metadata into them.
"""

from __future__ import annotations

from agent_runtime.rpc_status import StatusCode
from agent_runtime.spec import ErrorReason, WorkerError
from agent_runtime.transport.errors import GRPC_CONNECT_FAILED, classify_unavailable

FATAL_REASONS = frozenset(
    {
        ErrorReason.UNAUTHENTICATED,
        ErrorReason.PERMISSION_DENIED,
        ErrorReason.AGENT_NOT_FOUND,
        ErrorReason.TLS_UNKNOWN_AUTHORITY,
        ErrorReason.TLS_ERROR,
        ErrorReason.WEBSOCKET_HANDSHAKE,
        ErrorReason.PROXY_REFUSED,
    }
)
"""Failures that retrying cannot fix: the worker shows Failed (it still retries, with backoff)."""

CREDENTIAL_REASONS = frozenset(
    {ErrorReason.UNAUTHENTICATED, ErrorReason.PERMISSION_DENIED, ErrorReason.AGENT_NOT_FOUND}
)
"""kas rejected the agent's credentials: close the worker's AuthGate."""

_HINTS: dict[ErrorReason, str] = {
    ErrorReason.UNAUTHENTICATED: (
        "the agent token is invalid or revoked: create a new token for the agent in GitLab and update "
        "the token Secret"
    ),
    ErrorReason.PERMISSION_DENIED: "kas refused the agent (forbidden): check its registration in GitLab",
    ErrorReason.AGENT_NOT_FOUND: "the agent no longer exists in GitLab: register it again, use the new token",
    ErrorReason.RATE_LIMITED: "kas limits new connections per agent token; the worker backs off and retries",
    ErrorReason.CONFIGURATION_REJECTED: (
        "kas rejected the agent's configuration file: fix .gitlab/agents/<agent name>/config.yaml"
    ),
    ErrorReason.KAS_UNREACHABLE: "check kasAddress, DNS, network policies and the proxy settings",
    ErrorReason.PROTOCOL_ERROR: "kas and this agent disagree on the protocol: check version compatibility",
}


def hint_for(reason: ErrorReason) -> str:
    """The standard hint for a reason ("" when there is none)."""
    return _HINTS.get(reason, "")


def classify_rpc_error(rpc: str, code: StatusCode, details: str | None) -> WorkerError:
    """A WorkerError for RPC `rpc` (e.g. "Register") ending with `code` and kas's `details`."""
    text = (details or "").strip() or code.name
    reason = {
        StatusCode.UNAUTHENTICATED: ErrorReason.UNAUTHENTICATED,
        StatusCode.PERMISSION_DENIED: ErrorReason.PERMISSION_DENIED,
        StatusCode.RESOURCE_EXHAUSTED: ErrorReason.RATE_LIMITED,
        StatusCode.UNAVAILABLE: ErrorReason.KAS_UNREACHABLE,
        StatusCode.DEADLINE_EXCEEDED: ErrorReason.KAS_UNREACHABLE,
        StatusCode.INVALID_ARGUMENT: ErrorReason.PROTOCOL_ERROR,
        StatusCode.UNIMPLEMENTED: ErrorReason.PROTOCOL_ERROR,
    }.get(code, ErrorReason.INTERNAL)
    if code is StatusCode.NOT_FOUND:
        # kas says "agent not found" for a deleted agent; GetConfiguration also uses NOT_FOUND for a
        # missing branch of the configuration project (PROTOCOL.md §3.4, §6.1).
        reason = (
            ErrorReason.AGENT_NOT_FOUND if "agent" in text.lower() else ErrorReason.CONFIGURATION_REJECTED
        )
    if code is StatusCode.FAILED_PRECONDITION and rpc == "GetConfiguration":
        reason = ErrorReason.CONFIGURATION_REJECTED
    if code is StatusCode.UNAVAILABLE and text.startswith(GRPC_CONNECT_FAILED):
        # grpc core could not connect: its text names the worker's bridge socket, not kas; the transport
        # reads it (e.g. grpcs certificate failures) without repeating it.
        return classify_unavailable(text)
    return WorkerError(reason=reason, message=f"{rpc}: {code.name}: {text}", hint=hint_for(reason))


def is_cancel(code: StatusCode) -> bool:
    """Cancel/deadline ends: agentk reconnects at once instead of backing off (PROTOCOL.md §6.3.3)."""
    return code in (StatusCode.CANCELLED, StatusCode.DEADLINE_EXCEEDED)
