"""kas's API listener: the gRPC port GitLab Rails calls (GitLab's `api`, 8153; PROTOCOL.md §11.2, §17.7).

Every call carries `authorization: Bearer <JWT>` as Rails signs it: HS256 (HS384/HS512 accepted) with
the kas shared secret, audience `gitlab-kas`; the issuer (Rails' host) is not checked, as in GitLab's
kas. Anything else is UNAUTHENTICATED before a handler runs. Served here:
`gitlab.agent.notifications.rpc.Notifications/GitPushEvent`, which publishes the push to every replica
(kas.git_push); a publish that fails is UNAVAILABLE, so Rails' job can retry.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
from redis.exceptions import RedisError

from agent_proto.gitlab.agent.notifications.rpc import rpc_pb2 as notifications_rpc
from kas import jwt
from kas.agent_server.grpc_server import counted
from kas.auth import bearer_token
from kas.git_push import GitPushBus, InvalidEventError, check_event
from kas.metrics import KasMetrics
from kas.push_client import GIT_PUSH_EVENT_PATH
from kas.secret import Secret

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES: Final = 64 * 1024
"""A GitPushEventRequest is a project id and path; anything bigger is refused by gRPC itself."""

Context = grpc.aio.ServicerContext[
    notifications_rpc.GitPushEventRequest, notifications_rpc.GitPushEventResponse
]


def _reject(why: str) -> grpc.RpcMethodHandler[Any, Any]:
    async def reject(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    return grpc.unary_unary_rpc_method_handler(reject)


class RailsJwtInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with a valid Rails JWT (the reason never quotes the token)."""

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return _reject("Request unauthenticated with bearer")
        try:
            jwt.verify(token, self._secret, audience=jwt.AUDIENCE, issuer=None)
        except jwt.JwtError as err:
            return _reject(f"invalid token: {err}")
        return await continuation(handler_call_details)


class NotificationsServer:
    def __init__(self, bus: GitPushBus, metrics: KasMetrics) -> None:
        self._bus = bus
        self._metrics = metrics

    async def git_push_event(
        self, request: notifications_rpc.GitPushEventRequest, context: Context
    ) -> notifications_rpc.GitPushEventResponse:
        if not request.HasField("event"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "event is required")
        try:
            check_event(request.event)
        except InvalidEventError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        try:
            await self._bus.publish(request.event)
        except (RedisError, OSError) as err:
            log.error("Failed to publish received git push event: %s", err)  # noqa: TRY400 - Redis down: the reason is enough, no traceback per push
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"Failed to publish received git push event: {err}"
            )
        self._metrics.git_push_events.inc()
        return notifications_rpc.GitPushEventResponse()


class _Routes(grpc.GenericRpcHandler):
    def __init__(self, routes: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._routes = routes

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._routes.get(handler_call_details.method)


def build_api_server(secret: Secret, bus: GitPushBus, metrics: KasMetrics) -> grpc.aio.Server:
    """The gRPC server (not yet bound or started)."""
    notifications = NotificationsServer(bus, metrics)
    routes: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        GIT_PUSH_EVENT_PATH: grpc.unary_unary_rpc_method_handler(
            counted(metrics, GIT_PUSH_EVENT_PATH, notifications.git_push_event, announce_version=False),
            request_deserializer=notifications_rpc.GitPushEventRequest.FromString,
            response_serializer=notifications_rpc.GitPushEventResponse.SerializeToString,
        ),
    }
    server = grpc.aio.server(
        interceptors=[RailsJwtInterceptor(secret)],
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    server.add_generic_rpc_handlers((_Routes(routes),))
    return server
