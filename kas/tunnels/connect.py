"""ReverseTunnel.Connect on kas: register the agent's stream as a tunnel, relay one call over it (§6.3.3)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from agent_proto.ordering import OrderingValidator, StreamOrderError
from kas.agent_server.connections import AgentConnection, ConnectionTable
from kas.agents import AgentDirectory
from kas.auth import require_agent
from kas.tunnel_call import CallError, call_event
from kas.tunnels.registry import LocalTunnelCall, Tunnel, TunnelRegistry, TunnelState, status

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[bytes, tunnel_rpc.ConnectResponse]


class BadFrameError(Exception):
    """The agent sent an undecodable or out-of-order frame: INVALID_ARGUMENT on this tunnel only."""


class AgentGoneError(Exception):
    """The agent's side of a claimed tunnel ended before it sent any part of the answer."""


class ReverseTunnelServer:
    def __init__(
        self, directory: AgentDirectory, registry: TunnelRegistry, connections: ConnectionTable
    ) -> None:
        self._directory = directory
        self._registry = registry
        self._connections = connections

    async def connect(self, _requests: Any, context: Context) -> None:
        agent = await require_agent(self._directory, context)
        peer = context.peer()
        conn = self._connections.attach(peer)
        try:
            await self._connect(context, agent.id, conn)
        finally:
            self._connections.detach(peer, conn)

    async def _connect(self, context: Context, agent_id: int, conn: AgentConnection) -> None:
        validator = OrderingValidator(tunnel_rpc.ConnectRequest, "msg")
        try:
            first = await _read(context)
            if first is None:
                return
            member = validator.accept(first)
        except (BadFrameError, StreamOrderError) as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if member != "descriptor":  # pragma: no cover - the ordering allows only descriptor first
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid oneof value type: {member}")
        services = {
            s.name: frozenset(m.name for m in s.methods) for s in first.descriptor.agent_descriptor.services
        }
        tunnel = Tunnel(agent_id, services, context.write, conn.id)
        await self._serve(context, tunnel, validator, conn)

    async def _serve(
        self, context: Context, tunnel: Tunnel, validator: OrderingValidator, conn: AgentConnection
    ) -> None:
        registry = self._registry
        conn.watchers.add(tunnel.changed)
        registry.add(tunnel)
        reader = asyncio.create_task(
            self._read_loop(context, tunnel, validator), name=f"tunnel-{tunnel.id}-read"
        )
        reader.add_done_callback(lambda _: tunnel.changed.set())
        try:
            while tunnel.state is not TunnelState.CLAIMED:
                tunnel.changed.clear()
                if reader.done() or tunnel.state is TunnelState.GONE:
                    break
                if (conn.aged.is_set() or registry.shutting_down) and registry.retire(tunnel):
                    return  # idle at the age context or shutdown: end with OK
                await tunnel.changed.wait()
            call = tunnel.call
            if call is None:  # the agent ended (or broke) the stream while idle
                registry.remove(tunnel)
                await self._finish_idle(context, reader)
                return
            # The caller writes its frames itself (LocalTunnelCall); this handler keeps the stream open
            # until the agent has answered, the caller went away, or a write failed.
            while not (reader.done() or call.cancelled.is_set() or call.write_failed):
                tunnel.changed.clear()
                await tunnel.changed.wait()
            await self._finish_call(context, call, reader)
        finally:
            conn.watchers.discard(tunnel.changed)
            if not reader.done():
                reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if tunnel.call is not None:
                tunnel.call.agent_gone("agent disconnected")
            registry.remove(tunnel)

    async def _finish_idle(self, context: Context, reader: asyncio.Task[None]) -> None:
        exc = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(exc, BadFrameError | StreamOrderError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _finish_call(self, context: Context, call: LocalTunnelCall, reader: asyncio.Task[None]) -> None:
        if call.cancelled.is_set() and not reader.done():
            return  # the caller went away: end the stream, agentk drops its local call
        if call.write_failed and not reader.done():
            call.agent_gone("agent disconnected")
            return
        exc = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(exc, BadFrameError | StreamOrderError):
            call.inbound.close(CallError(_status(grpc.StatusCode.INVALID_ARGUMENT, f"agent: {exc}")))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if exc is not None:
            call.agent_gone("agent disconnected")
            return
        call.inbound.close()

    async def _read_loop(self, context: Context, tunnel: Tunnel, validator: OrderingValidator) -> None:
        responded = False
        while True:
            msg = await _read(context)
            if msg is None:
                if tunnel.state is TunnelState.CLAIMED and not responded:
                    # A cancelled stream can surface as a clean EOF: an agent that goes away before any
                    # answer is a disconnect (UNAVAILABLE to the caller), not a protocol violation.
                    raise AgentGoneError("the agent ended the tunnel before answering")
                if tunnel.state is TunnelState.CLAIMED:
                    validator.end()
                return
            member = validator.accept(msg)
            responded = responded or member != "descriptor"
            # Frames before request_info wait for the call (the ordering allows descriptor->header).
            await tunnel.settled.wait()
            if tunnel.call is None:
                return
            event = call_event(member, msg)
            if event is not None:  # the ordering allows nothing else once the call carries frames
                await tunnel.call.inbound.put(event)


def _status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    return status(code.value[0], message)


async def _read(context: Context) -> tunnel_rpc.ConnectRequest | None:
    raw: object = await context.read()
    if not isinstance(raw, bytes):
        return None  # grpc.aio.EOF
    msg = tunnel_rpc.ConnectRequest()
    try:
        msg.ParseFromString(raw)
    except DecodeError as err:
        raise BadFrameError(f"malformed ConnectRequest: {err}") from err
    return msg
