"""The runtime's own HTTP/2 client (agent_runtime.transport.h2) against a real grpc.aio server on loopback
(and a bare h2 server for kas's pings).

Each scenario is one a call meets at kas: messages both ways past the 64 KiB windows, a trailers-only
refusal, an oversized message, a cancel, kas's connection rotation (GOAWAY, streams keep running), kas
going away and coming back (calls wait for it, as with grpc's wait-for-ready); unary and server-streaming
calls (GetConfiguration, Register) with gzip both ways, deadlines and response metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
import pytest

from agent_runtime.policy import DestinationPolicy
from agent_runtime.rpc_status import EOF, RpcError, StatusCode
from agent_runtime.transport.address import parse_kas_address
from agent_runtime.transport.destination import DestinationGuard
from agent_runtime.transport.dialer import DialPlan
from agent_runtime.transport.h2 import H2Channel, H2Target
from agent_runtime.transport.h2.call import H2Call

pytestmark = pytest.mark.asyncio

CHAT = "/test.Chat/Chat"
ASK = "/test.Chat/Ask"
MANY = "/test.Chat/Many"
_LIMIT = 256 * 1024


class ChatPeer:
    """A grpc.aio server whose Chat call does what the first message says."""

    def __init__(self, options: list[tuple[str, int]] | None = None, port: int = 0) -> None:
        self._options = options or []
        self.port = port
        self.metadata: list[dict[str, str]] = []
        self.cancelled = asyncio.Event()
        self._server: grpc.aio.Server | None = None

    async def start(self) -> ChatPeer:
        server = grpc.aio.server(options=self._options)
        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "Chat": grpc.stream_stream_rpc_method_handler(self._chat),
            "Ask": grpc.unary_unary_rpc_method_handler(self._ask),
            "Many": grpc.unary_stream_rpc_method_handler(self._many),
        }
        generic = grpc.method_handlers_generic_handler("test.Chat", handlers)
        server.add_generic_rpc_handlers((generic,))
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server
        return self

    async def _chat(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        self.metadata.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        command = await anext(aiter(requests))
        if command == b"refuse":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated: bad token")
        elif command.startswith(b"big:"):
            yield b"x" * int(command[4:])
        elif command == b"wait":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:  # grpc cancels the handler when the client cancels
                self.cancelled.set()
                raise
        else:
            async for message in requests:
                yield message

    async def _ask(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        context.set_compression(grpc.Compression.Gzip)  # as kas answers a gzip request
        await context.send_initial_metadata((("x-kas", "v1"),))
        if request == b"wait":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return request

    async def _many(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield request

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)


def _channel(port: int) -> H2Channel:
    address = parse_kas_address(f"grpc://127.0.0.1:{port}")
    policy = DestinationPolicy(allow_private=True, allow_plaintext=True)
    plan = DialPlan(
        address=address,
        websocket=False,
        tls=None,
        server_hostname=None,
        guard=DestinationGuard(policy),
        proxy=None,
        proxy_trusted=True,
        proxy_tls=None,
        user_agent="gitlab-agent/test",
    )
    target = H2Target(plan, "http", address.host_header, "gitlab-agent/test", _LIMIT)
    return H2Channel(target, name="test")


@pytest.fixture
async def chat() -> AsyncIterator[tuple[ChatPeer, H2Channel]]:
    """A ChatPeer and a channel to it, both closed afterwards."""
    peer = await ChatPeer().start()
    channel = _channel(peer.port)
    try:
        yield peer, channel
    finally:
        await channel.close(1)
        await peer.stop()


async def _read_all(call: H2Call) -> list[bytes]:
    messages = []
    while (message := await call.read()) is not EOF:
        messages.append(message)
    return messages


async def test_messages_both_ways_past_the_windows_then_ok(chat: tuple[ChatPeer, H2Channel]) -> None:
    peer, channel = chat
    call = channel.stream_stream(CHAT)(metadata=[("authorization", "Bearer t0ken")])
    sent = [b"echo", b"a" * 10, b"b" * 200_000, b"c" * 70_000, b""]
    for message in sent:
        await call.write(message)
    await call.done_writing()
    assert await _read_all(call) == sent[1:]
    assert call.done()
    assert peer.metadata[0]["authorization"] == "Bearer t0ken"
    assert peer.metadata[0]["user-agent"].startswith("gitlab-agent/test")


async def test_trailers_only_refusal_raises_the_status(chat: tuple[ChatPeer, H2Channel]) -> None:
    _, channel = chat
    call = channel.stream_stream(CHAT)()
    await call.write(b"refuse")
    with pytest.raises(RpcError) as raised:
        await call.read()
    assert raised.value.code() is StatusCode.UNAUTHENTICATED
    assert raised.value.details() == "unauthenticated: bad token"
    assert call.done()
    with pytest.raises(RpcError):
        await call.write(b"more")


async def test_oversized_message_ends_that_call_only(chat: tuple[ChatPeer, H2Channel]) -> None:
    _, channel = chat
    big = channel.stream_stream(CHAT)()
    await big.write(f"big:{_LIMIT + 1}".encode())
    with pytest.raises(RpcError) as raised:
        await big.read()
    assert raised.value.code() is StatusCode.RESOURCE_EXHAUSTED
    fine = channel.stream_stream(CHAT)()
    await fine.write(f"big:{_LIMIT}".encode())
    assert await _read_all(fine) == [b"x" * _LIMIT]
    assert channel.connections == 1


async def test_cancel_reaches_kas(chat: tuple[ChatPeer, H2Channel]) -> None:
    peer, channel = chat
    call = channel.stream_stream(CHAT)()
    await call.write(b"wait")
    await asyncio.sleep(0.2)
    assert call.cancel()
    async with asyncio.timeout(5):
        await peer.cancelled.wait()
    with pytest.raises(RpcError) as raised:
        await call.read()
    assert raised.value.code() is StatusCode.CANCELLED
    assert not call.cancel()


async def test_goaway_keeps_open_calls_and_moves_new_ones() -> None:
    rotating = [("grpc.max_connection_age_ms", 500), ("grpc.max_connection_age_grace_ms", 60_000)]
    peer = await ChatPeer(rotating).start()
    channel = _channel(peer.port)
    try:
        old = channel.stream_stream(CHAT)()
        await old.write(b"echo")
        await old.write(b"before")
        assert await old.read() == b"before"
        await asyncio.sleep(1.5)  # kas's connection age passed: GOAWAY
        new = channel.stream_stream(CHAT)()
        await new.write(b"echo")
        await new.write(b"new")
        assert await new.read() == b"new"
        assert channel.connections == 2
        await old.write(b"after")  # the old connection still carries its call
        assert await old.read() == b"after"
        for call in (old, new):
            await call.done_writing()
            assert await call.read() is EOF
        async with asyncio.timeout(5):
            while channel.connections > 1:  # noqa: ASYNC110 - polling observed state, bounded
                await asyncio.sleep(0.05)
    finally:
        await channel.close(1)
        await peer.stop()


class PingingPeer:
    """A bare HTTP/2 server (h2) that answers a call's first message with a PING and one message in the
    same send, as GitLab's kas pings after data it receives, and notes which frames come back together."""

    def __init__(self) -> None:
        self.port = 0
        self.reads: list[set[str]] = []
        """The kinds of the events of each read after the PING went out."""
        self.answered = asyncio.Event()
        """Set when the second ping, sent after the first one's answer, is answered."""
        self._server: asyncio.Server | None = None

    async def start(self) -> PingingPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        pinged = False
        while data := await reader.read(65_536):
            events = conn.receive_data(data)
            if pinged:
                self.reads.append({type(e).__name__ for e in events})
            for event in events:
                if isinstance(event, h2.events.DataReceived) and not pinged:
                    headers = [(":status", "200"), ("content-type", "application/grpc")]
                    conn.send_headers(event.stream_id, headers)
                    conn.ping(b"bdp-ping")
                    conn.send_data(event.stream_id, b"\0\0\0\0\x05hello")
                    pinged = True
                elif isinstance(event, h2.events.PingAckReceived) and event.ping_data == b"bdp-ping":
                    conn.ping(b"lonesome")  # nothing else will go with its answer
                elif isinstance(event, h2.events.PingAckReceived):
                    self.answered.set()
            writer.write(conn.data_to_send())
        writer.close()


async def test_a_ping_answer_goes_with_the_next_write_or_alone() -> None:
    """kas's PING and a message arrive together; the agent's answer to the message leaves in the same
    send as the PING's acknowledgement (link.ACKNOWLEDGEMENT_HOLD_S); a second ping, with nothing to
    write, is answered on its own a moment later."""
    peer = await PingingPeer().start()
    channel = _channel(peer.port)
    try:
        call = channel.stream_stream(CHAT)()
        await call.write(b"first")
        assert await call.read() == b"hello"
        for _ in range(3):  # a few turns of the loop, as a tunnel hands the request to its handler
            await asyncio.sleep(0)
        await call.write(b"answer")
        async with asyncio.timeout(5):
            await peer.answered.wait()
        assert {"PingAckReceived", "DataReceived"} <= peer.reads[0]
        call.cancel()
    finally:
        await channel.close(1)
        await peer.stop()


async def test_headers_http2_refuses_fail_that_call_only(chat: tuple[ChatPeer, H2Channel]) -> None:
    _, channel = chat
    refused = channel.stream_stream(CHAT)(metadata=(("te", "gzip"),))  # h2 allows only "te: trailers"
    with pytest.raises(RpcError) as raised:
        await refused.write(b"echo")
    assert raised.value.code() == StatusCode.INTERNAL
    assert "not valid HTTP/2" in (raised.value.details() or "")
    call = channel.stream_stream(CHAT)()
    await call.write(b"echo")
    await call.write(b"after")
    assert await call.read() == b"after"


@pytest.mark.parametrize("gzip", [True, False])
async def test_unary_and_server_streaming_calls(chat: tuple[ChatPeer, H2Channel], gzip: bool) -> None:
    _, channel = chat
    payload = b"configuration " * 10_000  # 140 KB: past the windows, and gzip shrinks it
    call = channel.unary_unary(ASK)(payload, gzip=gzip, timeout=10)
    assert await call == payload
    assert ("x-kas", "v1") in await call.initial_metadata()
    assert call.done()
    many = channel.unary_stream(MANY)(b"m", gzip=gzip, wait_for_ready=True)
    assert await _read_all(many) == [b"m", b"m", b"m"]


async def test_a_unary_deadline_ends_the_call_at_kas_too(chat: tuple[ChatPeer, H2Channel]) -> None:
    peer, channel = chat
    call = channel.unary_unary(ASK)(b"wait", timeout=0.5)
    with pytest.raises(RpcError) as raised:
        await call
    assert raised.value.code() == StatusCode.DEADLINE_EXCEEDED
    async with asyncio.timeout(10):
        await peer.cancelled.wait()


async def test_a_call_not_waiting_for_kas_fails_when_kas_cannot_be_reached() -> None:
    peer = await ChatPeer().start()
    port = peer.port
    await peer.stop()
    channel = _channel(port)
    try:
        async with asyncio.timeout(5):
            with pytest.raises(RpcError) as raised:
                await channel.unary_unary(ASK)(b"ping", timeout=30)
        assert raised.value.code() == StatusCode.UNAVAILABLE
    finally:
        await channel.close(0)


async def test_calls_fail_unavailable_when_kas_goes_and_waiting_ones_wait_for_it_to_return() -> None:
    peer = await ChatPeer().start()
    port = peer.port
    channel = _channel(port)
    try:
        call = channel.stream_stream(CHAT)()
        await call.write(b"echo")
        await call.write(b"accepted")
        assert await call.read() == b"accepted"  # kas has the stream: it cannot be opened again elsewhere
        await peer.stop()
        with pytest.raises(RpcError) as raised:
            await call.read()
        # grpc's server resets its calls as it stops (CANCELLED), or the connection ends first.
        assert raised.value.code() in (StatusCode.UNAVAILABLE, StatusCode.CANCELLED)
        waiting = channel.stream_stream(CHAT)(wait_for_ready=True)
        opened = asyncio.create_task(waiting.write(b"echo"), name="test-open")
        await asyncio.sleep(0.5)
        assert not opened.done()  # kas is away: the call waits
        hasty = channel.stream_stream(CHAT)()  # without wait_for_ready: fails while the dial fails
        with pytest.raises(RpcError) as raised:
            await hasty.write(b"echo")
        assert raised.value.code() == StatusCode.UNAVAILABLE
        peer = await ChatPeer(port=port).start()
        async with asyncio.timeout(10):  # the connect backoff's first steps: 1 s, 1.6 s
            await opened
        await waiting.write(b"back")
        assert await waiting.read() == b"back"
    finally:
        await channel.close(1)
        await peer.stop()
