"""The tunnel's HTTP/2 client against a scripted HTTP/2 server on loopback (the `h2` library's server side),
for what a gRPC server rarely does on cue: refuse a stream (RST_STREAM REFUSED_STREAM), go away below a
stream it never processed (GOAWAY with a lower last-stream-id), or break the protocol. A refused stream is
opened again with what was sent on it; a broken connection fails its calls UNAVAILABLE and the next call
dials a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes

from agent_runtime.rpc_status import EOF, RpcError, StatusCode
from agent_runtime.transport.h2 import H2Channel
from tests.integration.transport.test_h2_channel import _channel

pytestmark = pytest.mark.asyncio

Script = Callable[["_ServerConnection", int, int], bool]
"""(connection, connection number, stream id) -> True when the stream is handled (refused, ...)."""


class _ServerConnection(asyncio.Protocol):
    """One accepted connection: echoes each message of a stream back, unless the script takes it."""

    def __init__(self, server: ScriptedServer, number: int) -> None:
        self._server = server
        self.number = number
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2.initiate_connection()
        transport.write(self.h2.data_to_send())

    def _closed(self) -> bool:
        """We sent GOAWAY: h2 takes no more input or output on this connection."""
        return self.h2.state_machine.state is h2.connection.ConnectionState.CLOSED

    def data_received(self, data: bytes) -> None:
        if self._closed():
            return  # we sent GOAWAY (or broke the protocol): the client moves on
        for event in self.h2.receive_data(data):
            if self._closed():
                break
            if event_stream_closed(self.h2, event):
                continue
            if isinstance(event, h2.events.RequestReceived):
                self._server.streams.append((self.number, event.stream_id))
                if not self._server.script(self, self.number, event.stream_id):
                    self.h2.send_headers(
                        event.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                    )
            elif isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.h2.send_data(event.stream_id, event.data)  # the framed messages, as they came
            elif isinstance(event, h2.events.StreamEnded):
                self.h2.send_headers(event.stream_id, [(b"grpc-status", b"0")], end_stream=True)
        assert self.transport is not None
        self.transport.write(self.h2.data_to_send())


def event_stream_closed(conn: h2.connection.H2Connection, event: h2.events.Event) -> bool:
    """The event belongs to a stream the script already ended (reset): nothing to answer."""
    stream_id = getattr(event, "stream_id", 0)
    stream = conn.streams.get(stream_id) if stream_id else None
    return bool(stream_id) and (stream is None or stream.closed)


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and runs `script` for every new stream."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.streams: list[tuple[int, int]] = []
        """(connection number, stream id) of every stream opened, in order."""
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ScriptedServer:
        def accept() -> _ServerConnection:
            self.connections += 1
            return _ServerConnection(self, self.connections)

        self._server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


Serve = Callable[[Script], Awaitable[tuple[ScriptedServer, H2Channel]]]


@pytest.fixture
async def served() -> AsyncIterator[Serve]:
    opened: list[tuple[ScriptedServer, H2Channel]] = []

    async def start(script: Script) -> tuple[ScriptedServer, H2Channel]:
        server = await ScriptedServer(script).start()
        opened.append((server, _channel(server.port)))
        return opened[-1]

    yield start
    for server, channel in opened:
        await channel.close(0)
        await server.close()


async def _echo_once(channel: H2Channel) -> bytes:
    call = channel.stream_stream("/test.Chat/Chat")()
    await call.write(b"hello")
    await call.done_writing()
    async with asyncio.timeout(10):
        first = await call.read()
        assert await call.read() is EOF
    assert isinstance(first, bytes)
    return first


async def test_a_refused_stream_is_opened_again_with_what_was_sent(served: Serve) -> None:
    def refuse_first(conn: _ServerConnection, number: int, stream_id: int) -> bool:
        if stream_id == 1:
            conn.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return True
        return False

    server, channel = await served(refuse_first)
    assert await _echo_once(channel) == b"hello"
    assert server.streams == [(1, 1), (1, 3)]  # again on the same connection, which stays usable


async def test_goaway_below_a_stream_moves_it_to_a_new_connection(served: Serve) -> None:
    def go_away_on_first(conn: _ServerConnection, number: int, stream_id: int) -> bool:
        if number == 1:
            conn.h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=0)
            return True
        return False

    server, channel = await served(go_away_on_first)
    assert await _echo_once(channel) == b"hello"
    assert server.streams == [(1, 1), (2, 1)]


async def test_a_protocol_error_fails_the_calls_and_the_next_call_redials(
    served: Serve,
) -> None:
    def garbage_on_first(conn: _ServerConnection, number: int, stream_id: int) -> bool:
        if number == 1:
            assert conn.transport is not None
            conn.transport.write(
                b"\x00\x00\x04\x08\x00\x00\x00\x00\x00"
            )  # WINDOW_UPDATE of length 4, 0 increment
            return True
        return False

    server, channel = await served(garbage_on_first)
    call = channel.stream_stream("/test.Chat/Chat")()
    await call.write(b"hello")
    with pytest.raises(RpcError) as raised:
        async with asyncio.timeout(10):
            await call.read()
    assert raised.value.code() is StatusCode.UNAVAILABLE
    assert "HTTP/2 protocol" in (raised.value.details() or "")
    assert await _echo_once(channel) == b"hello"
    assert server.connections == 2
