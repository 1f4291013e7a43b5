"""Agent token authentication on every agent RPC (PROTOCOL.md §3.4).

`authorization: Bearer <token>` with a case-insensitive scheme; anything else is UNAUTHENTICATED before a
handler runs. Tokens are compared as sha256 digests and never logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn

import grpc

from kas.agents import AgentDirectory, AgentInfo

MISSING_TOKEN = "Request unauthenticated with bearer"  # noqa: S105 - a message, not a password
UNKNOWN_TOKEN = "unauthenticated"  # noqa: S105 - a message, not a password

Metadata = Iterable[tuple[str, Any]] | Any
"""gRPC metadata: (key, value) pairs (grpc.aio.Metadata or a plain sequence)."""


def bearer_token(metadata: Metadata | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def authenticate(directory: AgentDirectory, metadata: Metadata | None) -> tuple[AgentInfo | None, str]:
    token = bearer_token(metadata)
    if token is None:
        return None, MISSING_TOKEN
    agent = directory.authenticate(token)
    return agent, "" if agent is not None else UNKNOWN_TOKEN


async def require_agent(directory: AgentDirectory, context: grpc.aio.ServicerContext[Any, Any]) -> AgentInfo:
    agent, why = authenticate(directory, context.invocation_metadata())
    if agent is None:
        await _abort(context, why)
    return agent


async def _abort(context: grpc.aio.ServicerContext[Any, Any], why: str) -> NoReturn:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
    raise AssertionError("abort returned")  # pragma: no cover


def _rejecting_handler(handler: grpc.RpcMethodHandler[Any, Any], why: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def reject(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject)
    return grpc.unary_unary_rpc_method_handler(reject)


class AgentAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a known agent token before the method's handler runs."""

    def __init__(self, directory: AgentDirectory) -> None:
        self._directory = directory

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        agent, why = authenticate(self._directory, handler_call_details.invocation_metadata)
        return handler if agent is not None else _rejecting_handler(handler, why)
