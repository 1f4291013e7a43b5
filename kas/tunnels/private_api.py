"""The private API: the gateway side of kas-to-kas routing (§11.2).

Any method path is accepted; the routing kas names the agent in `kas-hop-routing-agent-id` and proves
itself with an HS256 JWT. We answer no_tunnel while no tunnel is free (and keep looking), tunnel_ready
once one is reserved, then wait for StartStreaming and relay the call over the tunnel.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from agent_proto.gitlab.agent.kas import kas_pb2
from kas import jwt
from kas.auth import Metadata
from kas.secret import Secret
from kas.tunnel_call import CallError, CallEvent, CallHeader, CallMessage, CallTrailer
from kas.tunnels.registry import (
    KasShuttingDownError,
    LocalTunnelCall,
    TunnelGoneError,
    TunnelRegistry,
    to_values,
)
from kas.tunnels.router import ROUTING_AGENT_ID, split_method

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[bytes, kas_pb2.GatewayKasResponse]
G = kas_pb2.GatewayKasResponse
_DROPPED_META = ("authorization", "user-agent", "content-type", "te", "grpc-")


def _forwarded_meta(metadata: Metadata) -> dict[str, list[str]]:
    meta: dict[str, list[str]] = {}
    for key, value in metadata:
        if key.startswith(("kas-hop-", ":", *_DROPPED_META)):
            continue
        if isinstance(value, str):
            meta.setdefault(key, []).append(value)
    return meta


def _frame(event: CallEvent) -> kas_pb2.GatewayKasResponse:
    if isinstance(event, CallHeader):
        return G(header=G.Header(meta=to_values(event.meta)))
    if isinstance(event, CallMessage):
        return G(message=G.Message(data=event.data))
    if isinstance(event, CallTrailer):
        return G(trailer=G.Trailer(meta=to_values(event.meta)))
    assert isinstance(event, CallError)
    return G(error=G.Error(status=event.status))


class _GatewayHandler(grpc.GenericRpcHandler):
    def __init__(self, gateway: PrivateApiGateway) -> None:
        self._gateway = gateway

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method

        async def handle(_requests: Any, context: Context) -> None:
            await self._gateway.handle(method, context)

        return grpc.stream_stream_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=G.SerializeToString
        )


class PrivateApiGateway:
    def __init__(self, registry: TunnelRegistry, secret: Secret) -> None:
        self._registry = registry
        self._secret = secret

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return _GatewayHandler(self)

    async def handle(self, method: str, context: Context) -> None:
        metadata = context.invocation_metadata() or ()
        await self._authenticate(metadata, context)
        agent_ids = [v for k, v in metadata if k == ROUTING_AGENT_ID]
        if len(agent_ids) != 1 or not isinstance(agent_ids[0], str) or not agent_ids[0].lstrip("-").isdigit():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"expecting exactly one {ROUTING_AGENT_ID}")
        agent_id = int(str(agent_ids[0]))
        try:
            service, name = split_method(method)
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        registry = self._registry
        try:
            tunnel = registry.try_find(agent_id, service, name)
            if tunnel is None:
                await context.write(G(no_tunnel=G.NoTunnel()))
                tunnel = await registry.find(agent_id, service, name)
        except KasShuttingDownError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "kas is shutting down")
        try:
            await context.write(G(tunnel_ready=G.TunnelReady()))
            start: object = await context.read()
        except BaseException:
            registry.put_back(tunnel)
            raise
        if start is grpc.aio.EOF:
            registry.put_back(tunnel)  # the routing kas chose another tunnel
            return
        try:
            call = tunnel.start(method, _forwarded_meta(metadata))
        except TunnelGoneError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the agent's tunnel went away")
        await self._relay(context, call)

    async def _authenticate(self, metadata: Metadata, context: Context) -> None:
        token = next((v for k, v in metadata if k == "authorization" and isinstance(v, str)), "")
        scheme, _, value = token.partition(" ")
        if scheme.lower() != "bearer":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "private API: missing bearer token")
        try:
            jwt.verify(value.strip(), self._secret)
        except jwt.JwtError as err:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"private API: {err}")

    async def _relay(self, context: Context, call: LocalTunnelCall) -> None:
        forward = asyncio.get_running_loop().create_task(
            self._forward(context, call), name=f"gateway-forward-{call.tunnel.id}"
        )
        finished = False
        try:
            while (event := await call.receive()) is not None:
                await context.write(_frame(event))
            finished = True
        finally:
            forward.cancel()
            await asyncio.gather(forward, return_exceptions=True)
            if not finished:
                await call.cancel()

    async def _forward(self, context: Context, call: LocalTunnelCall) -> None:
        while True:
            raw: object = await context.read()
            if not isinstance(raw, bytes):
                break  # grpc.aio.EOF
            await call.send(raw)
        await call.close_send()
