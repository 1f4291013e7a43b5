"""Loopback peers for the transport tests and the bridge benchmark.

- `WsTunnelPeer`: a kas-like ws-tunnel endpoint built on agent_proto.wstunnel (server side), piping each
  upgraded connection to a target TCP port (a grpc server, an echo server). It can also misbehave on
  purpose: answer with an HTTP status, or omit the subprotocol.
- `ConnectProxy`: an HTTP CONNECT proxy that resolves names from a table (so tests can use names that
  are not loopback literals) and can refuse or demand credentials.
- `EchoServer`: echoes bytes back, for byte-exact transfer checks.
- `make_tls_files`: a throw-away CA and server certificate, made with the openssl CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent_proto import wstunnel


class _TaskSet:
    """Named tasks owned by a peer, cancelled and awaited on close."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro,  # type: ignore[arg-type]
            name=f"{self._name}-{next(self._ids)}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


class _Relay(asyncio.Protocol):
    """A plain TCP connection that forwards what it reads to a callback (with flow control hooks)."""

    def __init__(self, on_data: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._on_data = on_data
        self._on_lost = on_lost
        self.peer_transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()

    def pause_writing(self) -> None:
        if self.peer_transport is not None:
            self.peer_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer_transport is not None:
            self.peer_transport.resume_reading()


@dataclass
class PeerBehaviour:
    """How the ws-tunnel peer answers upgrades."""

    status: int | None = None
    """Answer every upgrade with this HTTP status instead of 101."""
    location: str | None = None
    """Location header for a 3xx status."""
    subprotocol: str | None = wstunnel.SUBPROTOCOL
    """Subprotocol to select in the 101 response (None = omit the header)."""
    server_header: str = "gitlab-kas/v16.5.0/0123abcd"
    """The Server header of every response."""
    after_upgrade: bytes = b""
    """Raw bytes sent in the same write as the 101 response (e.g. a frame the client must reject)."""


class _WsServerConn(asyncio.Protocol):
    def __init__(self, peer: WsTunnelPeer) -> None:
        self._peer = peer
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._target: _Relay | None = None
        self._decoder = wstunnel.FrameDecoder(expect_masked=True)
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=1 << 20)
        self._peer.connections.append(transport)

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            self._frames(data)
            return
        self._buffer += data
        if self._target is None and b"\r\n\r\n" in self._buffer:
            head = wstunnel.read_head(self._buffer)
            assert head is not None
            self._peer.requests.append(head)
            self._peer.tasks.spawn(self._upgrade(head))

    async def _upgrade(self, head: wstunnel.HttpHead) -> None:
        assert self._transport is not None
        behaviour = self._peer.behaviour
        server = [("Server", behaviour.server_header)]
        if behaviour.status is not None:
            extra = [*server, *([("Location", behaviour.location)] if behaviour.location else [])]
            self._transport.write(wstunnel.build_error_response(behaviour.status, "Nope", "no", extra))
            self._transport.close()
            return
        key = wstunnel.check_upgrade_request(head)
        loop = asyncio.get_running_loop()
        relay = _Relay(self._to_client, self._target_lost)
        await loop.create_connection(lambda: relay, "127.0.0.1", self._peer.target_port)
        relay.peer_transport = self._transport
        self._target = relay
        self._transport.write(
            wstunnel.build_upgrade_response(key, subprotocol=behaviour.subprotocol, extra_headers=server)
            + behaviour.after_upgrade
        )
        self._upgraded = True
        leftover = bytes(self._buffer)
        self._buffer.clear()
        if leftover:
            self._frames(leftover)

    def _frames(self, data: bytes) -> None:
        if self._peer.frozen:
            return
        assert self._transport is not None
        assert self._target is not None
        assert self._target.transport is not None
        try:
            events = self._decoder.feed(data)
        except wstunnel.WebSocketProtocolError as e:
            self._transport.write(wstunnel.encode_close(e.code, str(e), mask=False))
            self._transport.close()
            return
        for event in events:
            if isinstance(event, wstunnel.Data):
                self._target.transport.write(event.payload)
            elif isinstance(event, wstunnel.Ping):
                self._transport.write(wstunnel.encode_frame(wstunnel.Opcode.PONG, event.payload, mask=False))
            elif isinstance(event, wstunnel.Close):
                self._transport.write(wstunnel.encode_close(event.code, "", mask=False))
                self._transport.close()
                self._target.transport.close()

    def _to_client(self, data: bytes) -> None:
        if self._peer.frozen:
            return
        assert self._transport is not None
        self._transport.write(wstunnel.encode_binary(data, mask=False))

    def _target_lost(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(wstunnel.encode_close(1000, "", mask=False))
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._target is not None and self._target.transport is not None:
            self._target.transport.close()

    def pause_writing(self) -> None:
        if self._target is not None and self._target.transport is not None:
            self._target.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._target is not None and self._target.transport is not None:
            self._target.transport.resume_reading()


@dataclass
class WsTunnelPeer:
    """A kas-like ws-tunnel endpoint on 127.0.0.1 (use `start()`/`close()`)."""

    target_port: int
    behaviour: PeerBehaviour = field(default_factory=PeerBehaviour)
    ssl_context: ssl.SSLContext | None = None
    frozen: bool = False
    """Swallow every byte in both directions (a dead peer whose TCP connection stays up)."""
    requests: list[wstunnel.HttpHead] = field(default_factory=list)
    connections: list[asyncio.Transport] = field(default_factory=list)
    tasks: _TaskSet = field(default_factory=lambda: _TaskSet("ws-peer"))
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> WsTunnelPeer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _WsServerConn(self), "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def kick_all(self, code: int = 1001, reason: str = "Shutting down") -> None:
        """Close every connection with a close frame, as kas does on shutdown."""
        for transport in self.connections:
            if not transport.is_closing():
                transport.write(wstunnel.encode_close(code, reason, mask=False))
                transport.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in self.connections:
            transport.abort()
        await self.tasks.close()


class _ProxyConn(asyncio.Protocol):
    def __init__(self, proxy: ConnectProxy) -> None:
        self._proxy = proxy
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._target: _Relay | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._target is not None and self._target.transport is not None:
            self._target.transport.write(data)
            return
        self._buffer += data
        if b"\r\n\r\n" in self._buffer:
            head = wstunnel.read_head(self._buffer)
            assert head is not None
            self._proxy.requests.append(head)
            self._proxy.tasks.spawn(self._connect(head))

    async def _connect(self, head: wstunnel.HttpHead) -> None:
        assert self._transport is not None
        proxy = self._proxy
        if proxy.refuse_with is not None:
            self._transport.write(wstunnel.build_error_response(proxy.refuse_with, "Refused", "no"))
            self._transport.close()
            return
        if proxy.credentials is not None and head.get("Proxy-Authorization") != proxy.credentials:
            self._transport.write(wstunnel.build_error_response(407, "Proxy Authentication Required"))
            self._transport.close()
            return
        host, _, port = head.start_line[1].rpartition(":")
        relay = _Relay(self._from_target, self._transport.close)
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: relay, proxy.hosts.get(host, host), int(port))
        self._target = relay
        self._transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self._buffer and relay.transport is not None:
            relay.transport.write(bytes(self._buffer))
            self._buffer.clear()

    def _from_target(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._target is not None and self._target.transport is not None:
            self._target.transport.close()


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1."""

    hosts: dict[str, str] = field(default_factory=dict)
    """Name → address table used instead of DNS."""
    refuse_with: int | None = None
    """Answer every CONNECT with this status."""
    credentials: str | None = None
    """Required Proxy-Authorization value (407 otherwise)."""
    requests: list[wstunnel.HttpHead] = field(default_factory=list)
    tasks: _TaskSet = field(default_factory=lambda: _TaskSet("connect-proxy"))
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> ConnectProxy:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ProxyConn(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.tasks.close()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=1 << 20)

    def data_received(self, data: bytes) -> None:
        self._transport.write(data)

    def pause_writing(self) -> None:
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._transport.resume_reading()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """An echo server on 127.0.0.1; yields its port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA and a server certificate for kas.test, localhost and 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.set_alpn_protocols(list(alpn))
        return ctx


def make_tls_files(directory: Path) -> TlsFiles:
    """Create the CA and server certificate with the openssl CLI (EC P-256, valid two days)."""
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=DNS:kas.test,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"]
    commands = [
        [
            "openssl",
            "req",
            "-x509",
            *ec,
            "-keyout",
            ca_key,
            "-out",
            ca,
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
            *ca_ext,
        ],
        ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=kas.test"],
        [
            *("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"),
            *("-out", cert, "-days", "2", "-extfile", ext),
        ],
    ]
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True, timeout=30)
    return TlsFiles(ca, cert, key)
