"""The front listener: one port for plain gRPC (h2c, TLS h2) and gRPC-in-WebSocket (PROTOCOL.md §3.2.3).

Used when `agent.listen.websocket` is on; with it off, kas serves gRPC on the port itself (no splice).

Every accepted connection is spliced into its own loopback TCP connection to the internal grpc.aio
server. Without TLS the first 24 bytes decide: the HTTP/2 client preface means gRPC, anything else must
be an HTTP/1.1 WebSocket upgrade. With TLS, ALPN decides (`h2` = gRPC, otherwise HTTP/1.1).
In WebSocket mode binary message payloads are unframed into the byte stream and the server's bytes are
framed back; message boundaries carry no meaning.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from collections.abc import Callable

from agent_proto import wstunnel
from kas.agent_server.connections import AgentConnection, ConnectionTable
from kas.tasks import TaskSupervisor
from kas.version import server_header

log = logging.getLogger(__name__)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_WS_FRAME_LIMIT = 256 * 1024
"""Server-to-agent bytes are sent as binary messages of at most this size."""


class _Mode(enum.Enum):
    SNIFF = "sniff"
    HTTP1 = "http1"
    CONNECTING = "connecting"
    H2 = "h2"
    WS = "ws"
    CLOSED = "closed"


class _InternalSide(asyncio.Protocol):
    """Our end of the loopback connection to the internal gRPC server."""

    def __init__(self, front: FrontConnection) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.front.from_internal(data)

    def eof_received(self) -> bool:
        self.front.internal_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.internal_closed()

    def pause_writing(self) -> None:
        self.front.pause_reading()

    def resume_writing(self) -> None:
        self.front.resume_reading()


class FrontConnection(asyncio.Protocol):
    """One agent connection on the front port: sniff, then splice (h2) or unframe (WebSocket)."""

    def __init__(self, listener: FrontListener) -> None:
        self._listener = listener
        self._mode = _Mode.SNIFF
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._internal: _InternalSide | None = None
        self._internal_port = 0
        self._decoder: wstunnel.FrameDecoder | None = None
        self._tls = False
        self._remote = "?"
        self._reading_paused = False

    # -- front side ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._listener.connections.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._tls = True
            alpn = ssl_object.selected_alpn_protocol()
            if alpn == "h2":
                self._start_internal("grpcs", b"")
            elif alpn is not None:
                self._mode = _Mode.HTTP1

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode is _Mode.H2:
            assert self._internal is not None
            assert self._internal.transport is not None
            self._internal.transport.write(data)
        elif mode is _Mode.WS:
            self._ws_received(data)
        elif mode is _Mode.SNIFF:
            self._sniff(data)
        elif mode is _Mode.HTTP1:
            self._buf += data
            self._http1()
        elif mode is _Mode.CONNECTING:
            self._buf += data

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._mode = _Mode.CLOSED
        self._listener.connections.discard(self)
        if self._internal is not None and self._internal.transport is not None:
            self._internal.transport.close()

    def pause_writing(self) -> None:
        if self._internal is not None and self._internal.transport is not None:
            self._internal.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._internal is not None and self._internal.transport is not None:
            self._internal.transport.resume_reading()

    def pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused and not self._transport.is_closing():
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._reading_paused and not self._transport.is_closing():
            self._reading_paused = False
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def shutting_down(self) -> None:
        """kas is stopping: connections still negotiating get WebSocket close 1001 or are dropped."""
        if self._mode in (_Mode.SNIFF, _Mode.HTTP1, _Mode.CONNECTING):
            self.close()
        elif self._mode is _Mode.WS and self._internal is None:
            self._ws_close(wstunnel.CloseCode.GOING_AWAY, "Shutting down")

    # -- sniffing and the HTTP/1.1 upgrade ---------------------------------------------------------

    def _sniff(self, data: bytes) -> None:
        self._buf += data
        n = min(len(self._buf), len(H2_PREFACE))
        if self._buf[:n] != H2_PREFACE[:n]:
            self._mode = _Mode.HTTP1
            self._http1()
        elif n == len(H2_PREFACE):
            buffered, self._buf = bytes(self._buf), bytearray()
            self._start_internal("grpcs" if self._tls else "grpc", buffered)

    def _http1(self) -> None:
        assert self._transport is not None
        extra = [("Server", server_header())]
        try:
            head = wstunnel.read_head(self._buf)
            if head is None:
                return
            key = wstunnel.check_upgrade_request(head)
        except wstunnel.HandshakeError as err:
            self._transport.write(wstunnel.build_error_response(400, "Bad Request", f"{err}\n", extra))
            self.close()
            return
        offered = wstunnel.offered_subprotocols(head)
        chosen = wstunnel.SUBPROTOCOL if wstunnel.SUBPROTOCOL in offered else None
        self._transport.write(wstunnel.build_upgrade_response(key, subprotocol=chosen, extra_headers=extra))
        self._mode = _Mode.WS
        self._decoder = wstunnel.FrameDecoder(expect_masked=True)
        if chosen is None:
            # As GitLab's kas: the upgrade completes, then the socket closes with 1002 and this reason.
            self._ws_close(
                wstunnel.CloseCode.PROTOCOL_ERROR, f'Expecting "{wstunnel.SUBPROTOCOL}" subprotocol, got ""'
            )
            return
        leftover, self._buf = bytes(self._buf), bytearray()
        self._start_internal("wss" if self._tls else "ws", b"")
        if leftover:
            self._ws_received(leftover)

    # -- WebSocket mode ------------------------------------------------------------------------------

    def _ws_received(self, data: bytes) -> None:
        assert self._decoder is not None
        assert self._transport is not None
        try:
            events = self._decoder.feed(data)
        except wstunnel.WebSocketProtocolError as err:
            self._ws_close(err.code, str(err))
            return
        for event in events:
            if isinstance(event, wstunnel.Data):
                self._to_internal(event.payload)
            elif isinstance(event, wstunnel.Ping):
                self._transport.write(wstunnel.encode_frame(wstunnel.Opcode.PONG, event.payload, mask=False))
            elif isinstance(event, wstunnel.Close):
                self._ws_close(wstunnel.CloseCode.NORMAL if event.code is not None else None, "")
                return

    def _to_internal(self, payload: bytes) -> None:
        if self._mode is _Mode.CONNECTING:
            self._buf += payload
        elif self._internal is not None and self._internal.transport is not None:
            self._internal.transport.write(payload)

    def _ws_close(self, code: int | None, reason: str) -> None:
        assert self._transport is not None
        if not self._transport.is_closing():
            self._transport.write(wstunnel.encode_close(code, reason, mask=False))
        self._mode = _Mode.CLOSED
        self.close()

    # -- the internal side ---------------------------------------------------------------------------

    def _start_internal(self, transport_kind: str, buffered: bytes) -> None:
        ws = transport_kind in ("ws", "wss")
        self._mode = _Mode.CONNECTING
        self._buf = bytearray(buffered)
        self.pause_reading()
        conn = AgentConnection(remote=self._remote, transport=transport_kind)
        self._listener.supervisor.spawn(f"splice-{conn.id}", self._connect_internal(conn, ws))

    async def _connect_internal(self, conn: AgentConnection, ws: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, internal = await loop.create_connection(
                lambda: _InternalSide(self), "127.0.0.1", self._listener.internal_port
            )
        except OSError as err:
            log.error("cannot reach the internal gRPC server: %s", err)  # noqa: TRY400 - no traceback needed
            self.close()
            return
        self._internal = internal
        self._internal_port = transport.get_extra_info("sockname")[1]
        self._listener.table.add(self._internal_port, conn)
        if self._mode is not _Mode.CONNECTING:  # the agent went away meanwhile
            transport.close()
            return
        self._mode = _Mode.WS if ws else _Mode.H2
        if self._buf:
            transport.write(bytes(self._buf))
            self._buf = bytearray()
        self.resume_reading()

    def from_internal(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if self._mode is _Mode.WS:
            self._transport.write(wstunnel.encode_binary(data, mask=False, max_frame=_WS_FRAME_LIMIT))
        else:
            self._transport.write(data)

    def internal_closed(self) -> None:
        if self._internal_port:
            self._listener.table.remove(self._internal_port)
            self._internal_port = 0
        if self._mode is _Mode.WS:
            self._ws_close(wstunnel.CloseCode.NORMAL, "")
        else:
            self.close()


class FrontListener:
    """Accepts agent connections and splices them to the internal gRPC server at `internal_port`."""

    def __init__(
        self,
        *,
        table: ConnectionTable,
        internal_port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.table = table
        self.internal_port = internal_port
        self.ssl_context = ssl_context
        self.supervisor = TaskSupervisor("agent-front")
        self.connections: set[FrontConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        factory: Callable[[], FrontConnection] = lambda: FrontConnection(self)  # noqa: E731
        self._server = await loop.create_server(factory, host, port, ssl=self.ssl_context, backlog=1024)
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutting_down()

    async def close(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections):
            conn.close()
        await self.supervisor.close(grace=1.0)
        if self._server is not None:
            await self._server.wait_closed()


def agent_ssl_context(certificate_file: str, key_file: str) -> ssl.SSLContext:
    """TLS ≥ 1.2 offering ALPN h2 (gRPC) and http/1.1 (the WebSocket upgrade)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate_file, key_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context
