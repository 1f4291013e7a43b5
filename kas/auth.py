"""Agent token authentication and the per-token rate limit on every agent RPC (PROTOCOL.md §3.4, §3.6).

`authorization: Bearer <token>` with a case-insensitive scheme; anything else is UNAUTHENTICATED before a
handler runs. Tokens are compared as sha256 digests and never logged. A known token over its limit of
new RPCs per minute gets RESOURCE_EXHAUSTED (kas.rate_limit); unknown tokens are not counted, so they
cannot fill the limiter's store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn

import grpc

from kas.agents import AgentDirectory, AgentInfo
from kas.rate_limit import RATE_LIMITED_MESSAGE, TokenRateLimiter

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


def _rejecting_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    why: str,
    code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED,
) -> grpc.RpcMethodHandler[Any, Any]:
    async def reject(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, why)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(reject)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(reject)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(reject)
    return grpc.unary_unary_rpc_method_handler(reject)


class AgentAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without a known agent token, or over the token's rate limit, before the method's
    handler runs. `on_limited` is called for every call refused by the limit (a metric)."""

    def __init__(
        self,
        directory: AgentDirectory,
        limiter: TokenRateLimiter | None = None,
        on_limited: Callable[[], None] | None = None,
    ) -> None:
        self._directory = directory
        self._limiter = limiter
        self._on_limited = on_limited

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        metadata = handler_call_details.invocation_metadata
        token = bearer_token(metadata)
        if token is None:
            return _rejecting_handler(handler, MISSING_TOKEN)
        if self._directory.authenticate(token) is None:
            return _rejecting_handler(handler, UNKNOWN_TOKEN)
        if self._limiter is not None and not await self._limiter.allow(token):
            if self._on_limited is not None:
                self._on_limited()
            return _rejecting_handler(handler, RATE_LIMITED_MESSAGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        return handler
