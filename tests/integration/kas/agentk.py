"""A scripted agentk for kas tests: real gRPC over loopback with the generated stubs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import status_pb2

from agent_proto.flavor import wire_names
from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as config_rpc
from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2 as registrar_rpc
from agent_proto.gitlab.agent.entity import entity_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc

NAMES = wire_names("gitlab")
MAKE_REQUEST = NAMES.make_request_path


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def meta_values(meta: dict[str, list[str]]) -> dict[str, prototool_pb2.Values]:
    return {k: prototool_pb2.Values(value=v) for k, v in meta.items()}


def descriptor_request() -> tunnel_rpc.ConnectRequest:
    return tunnel_rpc.ConnectRequest(
        descriptor=tunnel_rpc.Descriptor(agent_descriptor=wire_names("gitlab").agent_descriptor())
    )


@dataclass
class Request:
    method: str
    meta: dict[str, list[str]]
    messages: list[bytes] = field(default_factory=list)
    closed: bool = False


class Tunnel:
    """One Connect stream: descriptor sent at open; serve() answers one request."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.queue: asyncio.Queue[tunnel_rpc.ConnectRequest | None] = asyncio.Queue()
        connect = channel.stream_stream(
            NAMES.connect_path,
            request_serializer=tunnel_rpc.ConnectRequest.SerializeToString,
            response_deserializer=tunnel_rpc.ConnectResponse.FromString,
        )
        self.call: Any = connect(self._requests(), metadata=auth(token))
        self.queue.put_nowait(descriptor_request())

    async def _requests(self) -> AsyncIterator[tunnel_rpc.ConnectRequest]:
        while (msg := await self.queue.get()) is not None:
            yield msg

    def send(self, msg: tunnel_rpc.ConnectRequest) -> None:
        self.queue.put_nowait(msg)

    def close_send(self) -> None:
        self.queue.put_nowait(None)

    async def receive_request(self) -> Request | None:
        """Wait for request_info and every message up to close_send; None if the stream ended first."""
        first = await self.call.read()
        if first is grpc.aio.EOF:
            return None
        assert first.WhichOneof("msg") == "request_info", first
        req = Request(
            first.request_info.method_name, {k: list(v.value) for k, v in first.request_info.meta.items()}
        )
        while True:
            msg = await self.call.read()
            if msg is grpc.aio.EOF:
                return req
            kind = msg.WhichOneof("msg")
            if kind == "message":
                req.messages.append(msg.message.data)
            elif kind == "close_send":
                req.closed = True
                return req

    def respond(
        self,
        messages: list[bytes],
        *,
        header: dict[str, list[str]] | None = None,
        trailer: dict[str, list[str]] | None = None,
        error: status_pb2.Status | None = None,
    ) -> None:
        self.send(tunnel_rpc.ConnectRequest(header=tunnel_rpc.Header(meta=meta_values(header or {}))))
        for data in messages:
            self.send(tunnel_rpc.ConnectRequest(message=tunnel_rpc.Message(data=data)))
        self.send(tunnel_rpc.ConnectRequest(trailer=tunnel_rpc.Trailer(meta=meta_values(trailer or {}))))
        if error is not None:
            self.send(tunnel_rpc.ConnectRequest(error=tunnel_rpc.Error(status=error)))
        self.close_send()

    async def status(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self.call.code()
        return code


async def echo_once(tunnel: Tunnel) -> Request | None:
    """Serve one request: answer each request message back, with header and trailer metadata."""
    req = await tunnel.receive_request()
    if req is None:
        return None
    tunnel.respond(list(req.messages), header={"x-h": ["1"]}, trailer={"x-t": ["2"]})
    return req


async def register(channel: grpc.aio.Channel, token: str, pod_id: int, pod_name: str = "agentk-0") -> None:
    meta = entity_pb2.AgentMeta(
        version="v16.5.0", commit_id="abc", pod_namespace="gitlab-agent", pod_name=pod_name
    )
    await register_call(channel)(
        registrar_rpc.RegisterRequest(agent_meta=meta, pod_id=pod_id), metadata=auth(token), timeout=5
    )


def register_call(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        NAMES.register_path,
        request_serializer=registrar_rpc.RegisterRequest.SerializeToString,
        response_deserializer=registrar_rpc.RegisterResponse.FromString,
    )


async def read_config(call: Any, within: float = 5.0) -> config_rpc.ConfigurationResponse:
    response = await asyncio.wait_for(call.read(), within)
    assert isinstance(response, config_rpc.ConfigurationResponse), response
    return response


def get_configuration(channel: grpc.aio.Channel, token: str, commit_id: str = "") -> Any:
    request = config_rpc.ConfigurationRequest(
        commit_id=commit_id, agent_meta=entity_pb2.AgentMeta(version="v16.5.0"), skip_register=True
    )
    stream = channel.unary_stream(
        NAMES.get_configuration_path,
        request_serializer=config_rpc.ConfigurationRequest.SerializeToString,
        response_deserializer=config_rpc.ConfigurationResponse.FromString,
    )
    return stream(request, metadata=auth(token))
