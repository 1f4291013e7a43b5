"""Opening one connection to kas for the bridge: TCP, optional HTTP CONNECT proxy, TLS, WebSocket upgrade.

Every TCP connection starts with the destination policy (`destination.py`): the host is resolved once,
the addresses the policy refuses are dropped, and the connection goes to a checked address, never to the
name (so a DNS answer cannot change between check and connect). Everything is done on one
asyncio.Protocol (`KasStream`) that buffers bytes during the handshakes and then hands them, and every
later byte, to the pipe. agentk's HTTP client timeouts apply: dial 30 s (DNS included), TLS handshake
10 s, response headers 20 s (PROTOCOL.md §3.2.1). Redirects are never followed. Status messages name
status codes, never the peer's text (a tenant's kas address must not turn the pod into a probe).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import Final, Protocol

from agent_proto import wstunnel
from agent_runtime.spec import ErrorReason, WorkerError
from agent_runtime.transport.address import KasAddress
from agent_runtime.transport.destination import Destination, DestinationGuard, DestinationRefused
from agent_runtime.transport.errors import (
    TransportError,
    connect_detail,
    connect_error,
    handshake_status_error,
    tls_error,
)
from agent_runtime.transport.kas_version import from_server_header
from agent_runtime.transport.proxy import Proxy

_log = logging.getLogger(__name__)

_TCP_KEEPALIVE_S: Final = 30
_ENDPOINT_HINT: Final = "check that kasAddress points to kas's agent endpoint (wss:// for TLS, ws:// without)"


@dataclass(frozen=True)
class DialTimeouts:
    """agentk's HTTP client timeouts for the WebSocket connection."""

    dial: float = 30.0
    """TCP connect, DNS included (to kas or to the proxy)."""
    tls: float = 10.0
    """TLS handshake."""
    response_headers: float = 20.0
    """From sending the upgrade (or CONNECT) request to the complete response head."""


@dataclass(frozen=True)
class DialPlan:
    """How to reach kas; built once per worker."""

    address: KasAddress
    """Where kas is."""
    websocket: bool
    """Do the WebSocket upgrade (ws/wss). False = a raw pipe (grpc/grpcs: grpc speaks HTTP/2 through it)."""
    tls: ssl.SSLContext | None
    """TLS done by the bridge towards kas (wss, grpcs without verification), or None (plaintext, or grpc's
    own TLS inside the pipe)."""
    server_hostname: str | None
    """SNI and verification name (the tlsServerName override or the host)."""
    guard: DestinationGuard
    """The operator's destination policy, applied before every TCP connection."""
    proxy: Proxy | None
    """HTTP CONNECT proxy, or None to dial kas directly."""
    proxy_trusted: bool
    """The proxy is the process's own (HTTPS_PROXY: set by the admin), not the tenant's spec.proxy: it is
    dialed by name without the policy check."""
    proxy_tls: ssl.SSLContext | None
    """TLS towards an https:// proxy."""
    user_agent: str
    """`gitlab-agent/<version>/<commit>`, on the upgrade and CONNECT requests."""
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Extra upgrade request headers (kasHeaders); may hold credentials."""
    timeouts: DialTimeouts = field(default_factory=DialTimeouts)
    """Deadlines of the individual steps."""


class KasSink(Protocol):
    """Receives a KasStream's events once the handshake is over."""

    def kas_data(self, data: bytes) -> None: ...
    def kas_lost(self) -> None: ...
    def kas_pause_writing(self) -> None: ...
    def kas_resume_writing(self) -> None: ...


class KasStream(asyncio.Protocol):
    """The kas side of one bridged connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._wakeup: asyncio.Future[None] | None = None
        self._lost = False
        self._sink: KasSink | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.kas_data(data)
            return
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too: the tunnel has no use for half-closed connections

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._sink is not None:
            self._sink.kas_lost()
        self._wake()

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.kas_pause_writing()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.kas_resume_writing()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def read_head(self) -> wstunnel.HttpHead:
        """The next HTTP response head; ConnectionResetError if the peer closes first."""
        while True:
            head = wstunnel.read_head(self._buffer)
            if head is not None:
                return _checked_response(head)
            if self._lost:
                raise ConnectionResetError("connection closed before the response head")
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    def attach(self, sink: KasSink) -> bytes:
        """From now on deliver to `sink`; returns the bytes that arrived after the handshake."""
        self._sink = sink
        leftover = bytes(self._buffer)
        self._buffer.clear()
        return leftover

    @property
    def lost(self) -> bool:
        """The connection is gone."""
        return self._lost


def _checked_response(head: wstunnel.HttpHead) -> wstunnel.HttpHead:
    """`head` if it is an HTTP/1.x response with a numeric status (what `head.status` needs)."""
    version, status, _ = head.start_line
    if not version.startswith("HTTP/1.") or not (len(status) == 3 and status.isdigit()):
        raise wstunnel.HandshakeError(f"not an HTTP/1.x response: {' '.join(head.start_line)[:80]!r}")
    return head


@dataclass
class Dialed:
    """A connection to kas, ready to carry HTTP/2 bytes."""

    transport: asyncio.Transport
    stream: KasStream
    kas_version: str | None


async def dial(plan: DialPlan) -> Dialed:
    """Connect to kas as `plan` says; TransportError (with a typed WorkerError) on any failure."""
    stream = KasStream()
    proxy = plan.proxy
    shown = proxy.display if proxy else plan.address.host_port
    try:
        async with asyncio.timeout(plan.timeouts.dial):
            transport = await _open_tcp(plan, stream)
    except DestinationRefused as e:
        raise TransportError(e.error) from None
    except (OSError, TimeoutError) as e:
        _log.debug("connecting to %s failed: %s", shown, connect_detail(e))
        raise TransportError(connect_error(e, shown, proxy=proxy is not None)) from None
    try:
        _set_keepalive(transport)
        if proxy is not None:
            if proxy.tls and plan.proxy_tls is not None:
                transport = await _start_tls(
                    transport, stream, plan.proxy_tls, proxy.host, plan, f"proxy {shown}"
                )
            await _connect_through(transport, stream, proxy, plan)
        if plan.tls is not None:
            name = plan.server_hostname or plan.address.host
            transport = await _start_tls(transport, stream, plan.tls, name, plan, plan.address.host_port)
        version = await _upgrade(transport, stream, plan) if plan.websocket else None
    except BaseException:
        transport.abort()
        raise
    return Dialed(transport, stream, version)


async def _open_tcp(plan: DialPlan, stream: KasStream) -> asyncio.Transport:
    """The TCP connection to kas or the proxy, to an address the policy permits (tried in order)."""
    loop = asyncio.get_running_loop()
    deadline = plan.timeouts.dial
    kas = Destination(plan.address.host, plan.address.port, "kas")
    proxy = plan.proxy
    if proxy is not None:
        # The proxy resolves kas itself; every address we can see for kas must be acceptable too.
        await plan.guard.check_all(kas, within=deadline)
        if plan.proxy_trusted:
            transport, _ = await loop.create_connection(lambda: stream, proxy.host, proxy.port)
            return _as_stream(transport)
    target = Destination(proxy.host, proxy.port, "proxy") if proxy is not None else kas
    addresses = await plan.guard.resolve(target, within=deadline)
    failure: OSError | None = None
    for ip in addresses:
        try:
            transport, _ = await loop.create_connection(lambda: stream, str(ip), target.port)
        except OSError as e:
            failure = e
            continue
        return _as_stream(transport)
    assert failure is not None  # resolve() returns at least one address
    raise failure


def _as_stream(transport: asyncio.BaseTransport) -> asyncio.Transport:
    assert isinstance(transport, asyncio.Transport)
    return transport


def _set_keepalive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, _TCP_KEEPALIVE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, _TCP_KEEPALIVE_S)


async def _start_tls(
    transport: asyncio.Transport,
    stream: KasStream,
    ctx: ssl.SSLContext,
    server_hostname: str,
    plan: DialPlan,
    shown: str,
) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        tls_transport = await loop.start_tls(
            transport,
            stream,
            ctx,
            server_hostname=server_hostname,
            ssl_handshake_timeout=plan.timeouts.tls,
        )
    except (ssl.SSLError, TimeoutError, ConnectionError) as e:
        if loop.time() - started >= plan.timeouts.tls:
            # asyncio reports its handshake deadline as ConnectionAbortedError.
            raise TransportError(tls_error(TimeoutError(), shown)) from None
        if isinstance(e, ConnectionError) and not isinstance(e, ssl.SSLError):
            message = f"{shown} closed the connection during the TLS handshake"
            hint = "check that the address points to a TLS endpoint (grpc:// and ws:// are plaintext)"
            raise TransportError(WorkerError(ErrorReason.TLS_ERROR, message, hint)) from None
        raise TransportError(tls_error(e, shown)) from None
    if tls_transport is None:  # pragma: no cover - only when the connection closed mid-handshake
        raise TransportError(WorkerError(ErrorReason.TLS_ERROR, f"{shown} closed during the TLS handshake"))
    stream.transport = tls_transport
    return tls_transport


async def _response_head(stream: KasStream, plan: DialPlan, what: str) -> wstunnel.HttpHead:
    try:
        async with asyncio.timeout(plan.timeouts.response_headers):
            return await stream.read_head()
    except TimeoutError:
        message = f"no response to the {what} within {plan.timeouts.response_headers:g} s"
        raise TransportError(WorkerError(ErrorReason.KAS_UNREACHABLE, message)) from None
    except ConnectionError:
        message = f"the connection closed before the response to the {what}"
        raise TransportError(WorkerError(ErrorReason.WEBSOCKET_HANDSHAKE, message, _ENDPOINT_HINT)) from None
    except wstunnel.HandshakeError as e:
        # The error quotes the peer's bytes: the admin's debug log may have them, the status may not.
        _log.debug("%s: unreadable response: %r", what, str(e)[:200])
        message = f"the response to the {what} is not HTTP/1.1"
        raise TransportError(WorkerError(ErrorReason.WEBSOCKET_HANDSHAKE, message, _ENDPOINT_HINT)) from None


async def _connect_through(
    transport: asyncio.Transport, stream: KasStream, proxy: Proxy, plan: DialPlan
) -> None:
    target = plan.address.host_port
    headers = [("Host", target), ("User-Agent", plan.user_agent)]
    if proxy.authorization:
        headers.append(("Proxy-Authorization", proxy.authorization))
    lines = [f"CONNECT {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        head = await _response_head(stream, plan, f"CONNECT request to proxy {proxy.display}")
    except TransportError as e:
        raise TransportError(WorkerError(ErrorReason.PROXY_REFUSED, e.error.message, e.error.hint)) from None
    if not 200 <= head.status < 300:
        message = f"proxy {proxy.display} answered CONNECT {target} with HTTP {head.status}"
        hint = (
            "the proxy requires credentials: put them in the proxy URL (http://user:password@host:port)"
            if head.status == 407
            else "allow the kas host on the proxy, or exempt it with noProxy / NO_PROXY"
        )
        raise TransportError(WorkerError(ErrorReason.PROXY_REFUSED, message, hint))


async def _upgrade(transport: asyncio.Transport, stream: KasStream, plan: DialPlan) -> str | None:
    key = wstunnel.new_key()
    headers = [("User-Agent", plan.user_agent)]
    if any(name.lower() == "user-agent" for name, _ in plan.headers):
        headers = []  # an explicit kas header wins, as in agentk
    request = wstunnel.build_upgrade_request(
        target=plan.address.target,
        host=plan.address.host_header,
        key=key,
        extra_headers=[*headers, *plan.headers],
    )
    transport.write(request)
    head = await _response_head(stream, plan, "WebSocket upgrade request")
    version = from_server_header(head.get("Server"))
    if head.status != 101:
        _log.debug("WebSocket upgrade answered %d %r", head.status, head.start_line[2][:80])
        raise TransportError(handshake_status_error(head.status, head.get("Location"), plan.address))
    try:
        wstunnel.check_upgrade_response(head, key)
    except wstunnel.HandshakeError as e:
        _log.debug("WebSocket upgrade response refused: %r", str(e)[:200])
        message = "kas's answer to the WebSocket upgrade is not a valid WebSocket handshake"
        raise TransportError(WorkerError(ErrorReason.WEBSOCKET_HANDSHAKE, message, _ENDPOINT_HINT)) from None
    return version
