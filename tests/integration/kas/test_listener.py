"""The agent listener: WebSocket ws-tunnel next to plain gRPC on one port, and the routing give-up."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from agent_proto import wstunnel
from kas.server import KasServer
from kas.tunnel_call import CallMessage, NoTunnelError
from kas.version import server_header
from tests.integration.kas.agentk import MAKE_REQUEST, Tunnel, echo_once, register
from tests.integration.kas.conftest import AGENT
from tests.integration.kas.ws_client import handshake, ws_bridge


async def test_websocket_tunnel_round_trip(kas: KasServer) -> None:
    async with (
        ws_bridge(kas.agent_host, kas.agent_port) as bridged,
        grpc.aio.insecure_channel(bridged) as channel,
    ):
        await register(channel, AGENT.token, pod_id=5)
        tunnel = Tunnel(channel, AGENT.token)
        served = asyncio.create_task(echo_once(tunnel), name="agent")
        call = await kas.router.open_call(AGENT.id, MAKE_REQUEST, {}, timeout=5)
        payload = bytes(range(256)) * 1024
        await call.send(payload)
        await call.close_send()
        events = []
        while (event := await call.receive()) is not None:
            events.append(event)
        assert CallMessage(payload) in events
        await served


async def test_handshake_server_header_and_wrong_subprotocol(kas: KasServer) -> None:
    reader, writer, head = await handshake(kas.agent_host, kas.agent_port)
    assert head.status == 101
    assert head.get("Server") == server_header()
    assert head.get("Sec-WebSocket-Protocol") == "ws-tunnel"
    writer.close()
    reader, writer, head = await handshake(kas.agent_host, kas.agent_port, subprotocol="chat")
    assert head.status == 101
    decoder = wstunnel.FrameDecoder(expect_masked=False)
    events = decoder.feed(await asyncio.wait_for(reader.read(1024), 5))
    assert events == [wstunnel.Close(1002, 'Expecting "ws-tunnel" subprotocol, got ""')]
    writer.close()


async def test_plain_http_request_is_refused(kas: KasServer) -> None:
    reader, writer = await asyncio.open_connection(kas.agent_host, kas.agent_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 5)
    assert response.startswith(b"HTTP/1.1 400")
    writer.close()


async def test_no_tunnel_gives_up_after_the_configured_timeout(kas: KasServer) -> None:
    began = asyncio.get_running_loop().time()
    with pytest.raises(NoTunnelError):
        await kas.router.open_call(AGENT.id, MAKE_REQUEST, {}, timeout=0.3)
    assert asyncio.get_running_loop().time() - began < 3
    assert kas.registry.counts() == (0, 0, 0)  # the waiter is gone


async def test_shutdown_ends_idle_tunnels_ok_and_fails_waiters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from google.rpc import code_pb2

    from kas.testing import running_kas
    from kas.tunnel_call import CallError

    async with running_kas(tmp_path, [AGENT]) as server:
        channel = grpc.aio.insecure_channel(server.agent_address)
        tunnel = Tunnel(channel, AGENT.token)
        for _ in range(200):
            if server.registry.counts()[0]:
                break
            await asyncio.sleep(0.01)
        waiting = asyncio.create_task(
            server.router.open_call(999, MAKE_REQUEST, {}, timeout=10), name="waiter"
        )
        await asyncio.sleep(0.1)
        await server.stop(grace=1.0)
        assert await tunnel.status() == grpc.StatusCode.OK
        call = await waiting
        event = await call.receive()
        assert isinstance(event, CallError)
        assert event.status.code == code_pb2.UNAVAILABLE
        assert event.status.message == "kas is shutting down"
        await channel.close()
