"""A loopback gRPC server playing kas for the runtime's tests (until the reference kas is wired in).

It authenticates `authorization: Bearer <token>`, answers Register, serves one configuration on
GetConfiguration, and parks every Connect stream in a queue so a test can drive it frame by frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import Message

from agent_proto.flavor import ImpersonationConfig, wire_names
from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as config_rpc
from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2 as registrar_rpc
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_proto.gitlab.agent.grpctool import grpctool_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc

WIRE = wire_names("gitlab")
AGENT_ID = 42


class FakeTunnel:
    """One parked Connect stream."""

    def __init__(
        self, context: grpc.aio.ServicerContext[bytes, bytes], descriptor: tunnel_rpc.ConnectRequest
    ) -> None:
        self.context = context
        self.descriptor = descriptor
        self.done: asyncio.Event = asyncio.Event()
        self.cancelled = False
        self.gone = False
        """The agent ended the stream while it waited for a request."""

    async def send(self, frame: tunnel_rpc.ConnectResponse | bytes) -> None:
        await self.context.write(frame if isinstance(frame, bytes) else frame.SerializeToString())

    async def recv(self) -> tunnel_rpc.ConnectRequest | None:
        raw: object = await self.context.read()
        if raw is grpc.aio.EOF:
            return None
        assert isinstance(raw, bytes)
        return tunnel_rpc.ConnectRequest.FromString(raw)

    def finish(self) -> None:
        self.done.set()

    def cancel(self) -> None:
        """End the call with CANCELLED, as kas does when its client goes away."""
        self.cancelled = True
        self.done.set()


@dataclass
class FakeKas:
    token: str = "good-token"
    server: grpc.aio.Server | None = None
    port: int = 0
    tunnels: asyncio.Queue[FakeTunnel] = field(default_factory=asyncio.Queue)
    registers: list[registrar_rpc.RegisterRequest] = field(default_factory=list)
    rpc_count: int = 0
    rejected: int = 0
    config_requests: list[config_rpc.ConfigurationRequest] = field(default_factory=list)
    config_responses: list[bytes] = field(default_factory=list)
    """Raw ConfigurationResponse messages to send instead of the default one (what a newer kas sends)."""
    refusal: tuple[grpc.StatusCode, str] | None = None
    """Every call of the right token ends with this status, as GitLab's kas ends them for an agent that
    GitLab forbids (PERMISSION_DENIED) or deleted (NOT_FOUND, "agent not found")."""

    async def start(self) -> None:
        self.server = grpc.aio.server()
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "Register": grpc.unary_unary_rpc_method_handler(self._register),
            "GetConfiguration": grpc.unary_stream_rpc_method_handler(self._get_configuration),
            "Connect": grpc.stream_stream_rpc_method_handler(self._connect),
        }
        paths = {
            WIRE.register_path: handlers["Register"],
            WIRE.get_configuration_path: handlers["GetConfiguration"],
            WIRE.connect_path: handlers["Connect"],
        }
        self.server.add_generic_rpc_handlers([_Generic(paths)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0.5)

    @property
    def address(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    async def _auth(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        self.rpc_count += 1
        meta = dict(context.invocation_metadata() or ())
        if meta.get("authorization") != f"Bearer {self.token}":
            self.rejected += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
        if self.refusal is not None:
            self.rejected += 1
            await context.abort(*self.refusal)

    async def _register(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await self._auth(context)
        self.registers.append(registrar_rpc.RegisterRequest.FromString(request))
        return registrar_rpc.RegisterResponse().SerializeToString()

    async def _get_configuration(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        await self._auth(context)
        self.config_requests.append(config_rpc.ConfigurationRequest.FromString(request))
        config = agentcfg_pb2.AgentConfiguration(agent_id=AGENT_ID, project_path="group/agents")
        default = config_rpc.ConfigurationResponse(configuration=config, commit_id="c0ffee")
        for response in self.config_responses or [default.SerializeToString()]:
            yield response
        await asyncio.Event().wait()

    async def _connect(
        self, request_iterator: object, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        await self._auth(context)
        raw = await context.read()
        assert isinstance(raw, bytes)
        tunnel = FakeTunnel(context, tunnel_rpc.ConnectRequest.FromString(raw))
        await self.tunnels.put(tunnel)
        try:
            await tunnel.done.wait()
        except asyncio.CancelledError:
            tunnel.gone = True  # the agent ended the stream (e.g. a new token): kas forgets the tunnel
            raise
        if tunnel.cancelled:
            await context.abort(grpc.StatusCode.CANCELLED, "the client went away")


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, paths: dict[str, grpc.RpcMethodHandler[bytes, bytes]]) -> None:
        self._paths = paths

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        return self._paths.get(handler_call_details.method)  # type: ignore[attr-defined,unused-ignore]


@dataclass
class HttpResult:
    status: int
    header: dict[str, list[str]]
    body: bytes
    error: tuple[int, str] | None = None


def _values(h: Mapping[str, Sequence[str]]) -> dict[str, prototool_pb2.Values]:
    return {k: prototool_pb2.Values(value=list(v)) for k, v in h.items()}


def http_request_frames(
    method: str,
    path: str,
    *,
    query: Mapping[str, Sequence[str]] | None = None,
    header: Mapping[str, Sequence[str]] | None = None,
    body: bytes = b"",
    imp: ImpersonationConfig | None = None,
) -> list[Message]:
    req = prototool_pb2.HttpRequest(
        method=method, url_path=path, header=_values(header or {}), query=_values(query or {})
    )
    h = grpctool_pb2.HttpRequest.Header(request=req, content_length=len(body))
    if imp is not None:
        h.extra.CopyFrom(WIRE.pack_header_extra(imp))
    out: list[Message] = [grpctool_pb2.HttpRequest(header=h)]
    if body:
        out.append(grpctool_pb2.HttpRequest(data=grpctool_pb2.HttpRequest.Data(data=body)))
    out.append(grpctool_pb2.HttpRequest(trailer=grpctool_pb2.HttpRequest.Trailer()))
    return out


async def _live_tunnel(kas: FakeKas, info: tunnel_rpc.RequestInfo) -> FakeTunnel:
    """The next parked tunnel that takes `info`, skipping streams the agent ended (as kas does: a
    tunnel whose agent went away is dropped from its registry, and the request goes to another)."""
    async with asyncio.timeout(30):
        while True:
            tunnel = await kas.tunnels.get()
            if tunnel.gone:
                continue
            try:
                await tunnel.send(tunnel_rpc.ConnectResponse(request_info=info))
            except (grpc.RpcError, grpc.aio.UsageError, grpc.aio.InternalError):  # ExecuteBatchError
                continue  # ended between queueing and now
            return tunnel


async def start_request(
    kas: FakeKas, frames: list[Message], method: str = WIRE.make_request_path
) -> FakeTunnel:
    tunnel = await _live_tunnel(kas, tunnel_rpc.RequestInfo(method_name=method))
    for f in frames:
        await tunnel.send(tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=f.SerializeToString())))
    await tunnel.send(tunnel_rpc.ConnectResponse(close_send=tunnel_rpc.CloseSend()))
    return tunnel


async def read_response(tunnel: FakeTunnel) -> HttpResult:
    result = HttpResult(0, {}, b"")
    while (frame := await tunnel.recv()) is not None:
        which = frame.WhichOneof("msg")
        if which == "message":
            r = grpctool_pb2.HttpResponse.FromString(frame.message.data)
            kind = r.WhichOneof("message")
            if kind == "header":
                result.status = r.header.response.status_code
                result.header = {k: list(v.value) for k, v in r.header.response.header.items()}
            elif kind == "data":
                result.body += r.data.data
        elif which == "error":
            result.error = (frame.error.status.code, frame.error.status.message)
    tunnel.finish()
    return result


async def http(kas: FakeKas, method: str, path: str, **kwargs: object) -> HttpResult:
    tunnel = await start_request(kas, http_request_frames(method, path, **kwargs))  # type: ignore[arg-type]
    return await read_response(tunnel)
