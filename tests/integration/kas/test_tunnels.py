"""Tunnel round trips through KasRouter.open_call over real gRPC (PROTOCOL.md §6.3, §11.1)."""

from __future__ import annotations

import asyncio

import grpc

from kas.server import KasServer
from kas.tunnel_call import CallError, CallEvent, CallHeader, CallMessage, CallTrailer, TunnelCall
from tests.integration.kas.agentk import MAKE_REQUEST, Tunnel, echo_once
from tests.integration.kas.conftest import AGENT


async def _drain(call: TunnelCall) -> list[CallEvent]:
    events: list[CallEvent] = []
    while (event := await call.receive()) is not None:
        events.append(event)
    return events


async def _wait_ready(kas: KasServer, n: int = 1) -> None:
    for _ in range(200):
        if kas.registry.counts()[0] >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("tunnel never became ready")


async def test_round_trip(kas: KasServer, channel: grpc.aio.Channel) -> None:
    tunnel = Tunnel(channel, AGENT.token)
    await _wait_ready(kas)
    served = asyncio.create_task(echo_once(tunnel), name="agent")
    call = await kas.router.open_call(AGENT.id, MAKE_REQUEST, {"x-req": ["a"]}, timeout=5)
    await call.send(b"one")
    await call.send(b"two")
    await call.close_send()
    events = await _drain(call)
    req = await served
    assert req is not None
    assert req.method == MAKE_REQUEST
    assert req.meta == {"x-req": ["a"]}
    assert req.messages == [b"one", b"two"]
    assert req.closed
    assert events == [
        CallHeader({"x-h": ["1"]}),
        CallMessage(b"one"),
        CallMessage(b"two"),
        CallTrailer({"x-t": ["2"]}),
    ]
    assert await tunnel.status() == grpc.StatusCode.OK


async def test_queued_request_is_served_when_a_tunnel_arrives(
    kas: KasServer, channel: grpc.aio.Channel
) -> None:
    opening = asyncio.create_task(kas.router.open_call(AGENT.id, MAKE_REQUEST, {}, timeout=5), name="open")
    await asyncio.sleep(0.2)
    assert not opening.done()
    assert kas.registry.counts()[2] == 1
    tunnel = Tunnel(channel, AGENT.token)
    served = asyncio.create_task(echo_once(tunnel), name="agent")
    call = await opening
    await call.send(b"late")
    await call.close_send()
    events = await _drain(call)
    assert CallMessage(b"late") in events
    assert (await served) is not None


async def test_agent_error_is_relayed(kas: KasServer, channel: grpc.aio.Channel) -> None:
    from google.rpc import status_pb2

    tunnel = Tunnel(channel, AGENT.token)
    await _wait_ready(kas)
    call = await kas.router.open_call(AGENT.id, MAKE_REQUEST, {}, timeout=5)
    await call.close_send()
    await tunnel.receive_request()
    tunnel.respond([], error=status_pb2.Status(code=14, message="gRPC -> HTTP: dial failed"))
    events = await _drain(call)
    assert isinstance(events[-1], CallError)
    assert events[-1].status.code == 14


async def test_agent_disconnecting_mid_request(kas: KasServer) -> None:
    ch = grpc.aio.insecure_channel(kas.agent_address)
    tunnel = Tunnel(ch, AGENT.token)
    await _wait_ready(kas)
    call = await kas.router.open_call(AGENT.id, MAKE_REQUEST, {}, timeout=5)
    await call.send(b"x")
    await tunnel.receive_request() if False else None
    await ch.close(grace=None)
    events = await asyncio.wait_for(_drain(call), 5)
    assert events
    assert isinstance(events[-1], CallError)
    assert events[-1].status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    # kas forgets the tunnel when its own side of the stream ends, which can come a moment after the
    # caller saw the error: grpc cancels the Connect handler on its own schedule, which took over 5 s
    # twice under CI load (2 cores, the rest of the suite beside it).
    for _ in range(2000):
        if kas.registry.counts() == (0, 0, 0):
            break
        await asyncio.sleep(0.01)
    assert kas.registry.counts() == (0, 0, 0)
