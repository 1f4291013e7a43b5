"""open_kas_connection over loopback sockets: gRPC through the WebSocket bridge, TLS, proxies, failures."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from aiohttp import WSMsgType, web

from agent_proto.wstunnel import Opcode, encode_frame
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.rpc_status import EOF, RpcError, StatusCode
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, ProxySettings, TlsSettings, WorkerError, WorkerSpec
from agent_runtime.transport import ChannelSettings, DialTimeouts, KasConnection, open_kas_connection
from tests.integration.transport.grpc_peer import DOWNLOAD, ECHO, GrpcPeer, download_request
from tests.integration.transport.peers import (
    ConnectProxy,
    PeerBehaviour,
    TlsFiles,
    WsTunnelPeer,
    echo_server,
    make_tls_files,
)

TOKEN = "glagent-" + "x" * 50
USER_AGENT = "gitlab-agent/v16.5.0/test"
NO_PROXY_ENV: dict[str, str] = {}
GRPC_TRANSPORT: dict[str, str] = {"GAO_KAS_TRANSPORT": "grpc"}
"""For the tests of the bridge itself, which only the grpc.aio transport uses."""


def _spec(address: str, **kwargs: object) -> WorkerSpec:
    return WorkerSpec(id="ns/agent", kas_address=address, token=Secret(TOKEN), **kwargs)  # type: ignore[arg-type]


async def _connect(
    spec: WorkerSpec, environ: dict[str, str] | None = None, settings: ChannelSettings | None = None
) -> KasConnection:
    # Loopback peers, plaintext and skip-verify: everything the operator's default policy refuses.
    return await open_kas_connection(
        spec,
        user_agent=USER_AGENT,
        policy=PERMISSIVE_POLICY.destinations,
        environ=environ or NO_PROXY_ENV,
        settings=settings,
    )


async def _echo(conn: KasConnection, payload: bytes = b"ping", deadline: float = 10) -> bytes:
    call = conn.channel.unary_unary(ECHO)
    result: bytes = await call(payload, metadata=conn.call_metadata(), timeout=deadline)
    return result


async def _failure(conn: KasConnection) -> WorkerError:
    with pytest.raises(RpcError) as info:
        await _echo(conn, deadline=10)
    assert info.value.code() == StatusCode.UNAVAILABLE
    conn.record_rpc_error(info.value)
    error = conn.last_error()
    assert error is not None
    assert TOKEN not in f"{error}"
    return error


@pytest.fixture
async def grpc_peer() -> AsyncIterator[GrpcPeer]:
    peer = await GrpcPeer().start()
    yield peer
    await peer.close()


@pytest.fixture
async def ws_peer(grpc_peer: GrpcPeer) -> AsyncIterator[WsTunnelPeer]:
    peer = await WsTunnelPeer(target_port=grpc_peer.port).start()
    yield peer
    await peer.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


async def test_grpc_through_the_bridge(grpc_peer: GrpcPeer, ws_peer: WsTunnelPeer) -> None:
    spec = _spec(f"ws://127.0.0.1:{ws_peer.port}/ext/kas?x=1", kas_headers=(("X-Team", "blue"),))
    conn = await _connect(spec)
    try:
        assert await _echo(conn, b"hello") == b"hello"
        assert await _echo(conn, b"again") == b"again"
        assert conn.kas_version == "v16.5.0"
        assert conn.last_error() is None
        assert conn.bridge.handshakes == 1  # one HTTP/2 connection for both calls
    finally:
        await conn.close(grace=1)
    (request,) = ws_peer.requests
    assert request.start_line[:2] == ("GET", "/ext/kas?x=1")
    assert request.get("User-Agent") == USER_AGENT
    assert request.get("X-Team") == "blue"
    assert request.get("Sec-WebSocket-Protocol") == "ws-tunnel"
    assert request.get("Origin") is None
    assert request.get("Sec-WebSocket-Extensions") is None
    metadata = grpc_peer.metadata[0]
    assert metadata["authorization"] == f"Bearer {TOKEN}"
    assert metadata["user-agent"].startswith(USER_AGENT)
    assert "x-team" not in metadata  # ws/wss: kas headers go on the handshake only
    assert conn.bridge.open_connections == 0


async def test_token_rotation_applies_to_new_calls(grpc_peer: GrpcPeer, ws_peer: WsTunnelPeer) -> None:
    conn = await _connect(_spec(f"ws://127.0.0.1:{ws_peer.port}/"))
    try:
        await _echo(conn)
        conn.set_token(Secret("rotated-" + "y" * 50))
        await _echo(conn)
    finally:
        await conn.close(grace=1)
    assert [m["authorization"] for m in grpc_peer.metadata] == [
        f"Bearer {TOKEN}",
        "Bearer rotated-" + "y" * 50,
    ]
    assert TOKEN not in repr(conn)


async def test_grpc_direct_sends_kas_headers_as_metadata(grpc_peer: GrpcPeer) -> None:
    conn = await _connect(_spec(f"grpc://127.0.0.1:{grpc_peer.port}", kas_headers=(("X-Team", "blue"),)))
    try:
        assert await _echo(conn) == b"ping"
    finally:
        await conn.close(grace=1)
    assert grpc_peer.metadata[0]["x-team"] == "blue"
    assert grpc_peer.metadata[0]["authorization"] == f"Bearer {TOKEN}"


async def test_large_stream_through_the_bridge(ws_peer: WsTunnelPeer) -> None:
    # 1 MiB messages: above the default receive limit (sized to the tunnel's chunks), not the point here.
    settings = ChannelSettings(max_receive_message_length=2 << 20)
    conn = await _connect(_spec(f"ws://127.0.0.1:{ws_peer.port}/"), settings=settings)
    total = 20 * 1024 * 1024
    received = 0
    try:
        async with asyncio.timeout(120):
            call = conn.channel.unary_stream(DOWNLOAD)(download_request(total), metadata=conn.call_metadata())
            while (chunk := await call.read()) is not EOF:
                assert isinstance(chunk, bytes)
                assert chunk == bytes([received // (1 << 20) % 251]) * len(chunk)
                received += len(chunk)
    finally:
        await conn.close(grace=1)
    assert received == total


async def test_bytes_survive_backpressure_both_ways() -> None:
    """20 MB each way through bridge + peer + echo, read slowly: nothing lost, nothing reordered."""
    payload = os.urandom(20 * 1024 * 1024)
    async with echo_server() as echo_port:
        peer = await WsTunnelPeer(target_port=echo_port).start()
        conn = await _connect(_spec(f"ws://127.0.0.1:{peer.port}/"), environ=GRPC_TRANSPORT)
        try:
            async with asyncio.timeout(120):
                reader, writer = await asyncio.open_unix_connection(conn.bridge.path)

                async def send() -> None:
                    for i in range(0, len(payload), 256 * 1024):
                        writer.write(payload[i : i + 256 * 1024])
                        await writer.drain()

                async def receive() -> bytes:
                    digest = hashlib.sha256()
                    got = 0
                    while got < len(payload):
                        chunk = await reader.read(64 * 1024)
                        assert chunk, "connection closed early"
                        digest.update(chunk)
                        got += len(chunk)
                        if got < 4 * 1024 * 1024:
                            await asyncio.sleep(0.002)  # a slow consumer at first: buffers fill up
                    return digest.digest()

                async with asyncio.TaskGroup() as group:
                    group.create_task(send(), name="test-send")
                    received = group.create_task(receive(), name="test-receive")
                assert received.result() == hashlib.sha256(payload).digest()
                writer.close()
        finally:
            await conn.close(grace=1)
            await peer.close()


@pytest.mark.parametrize(
    ("behaviour", "path", "reason", "message", "hint"),
    [
        (
            PeerBehaviour(status=301, location="/ext/kas/"),
            "/ext/kas",
            ErrorReason.WEBSOCKET_HANDSHAKE,
            "kas answered the WebSocket handshake with HTTP 301",
            "add the trailing slash to the path: ws://127.0.0.1:{port}/ext/kas/",
        ),
        (
            PeerBehaviour(status=404),
            "/wrong/",
            ErrorReason.WEBSOCKET_HANDSHAKE,
            "with HTTP 404",
            "/-/kubernetes-agent/ and the trailing slash is required",
        ),
        (
            PeerBehaviour(status=401),
            "/",
            ErrorReason.WEBSOCKET_HANDSHAKE,
            "with HTTP 401",
            "proxy or ingress",
        ),
        (
            PeerBehaviour(subprotocol=None),
            "/",
            ErrorReason.WEBSOCKET_HANDSHAKE,
            "not a valid WebSocket handshake",
            "agent endpoint",
        ),
    ],
)
async def test_handshake_failures_are_typed(
    ws_peer: WsTunnelPeer, behaviour: PeerBehaviour, path: str, reason: ErrorReason, message: str, hint: str
) -> None:
    ws_peer.behaviour = behaviour
    conn = await _connect(_spec(f"ws://127.0.0.1:{ws_peer.port}{path}"))
    try:
        error = await _failure(conn)
    finally:
        await conn.close(grace=0)
    assert error.reason == reason
    assert message in error.message
    assert hint.format(port=ws_peer.port) in error.hint
    assert conn.kas_version is None  # learnt only from a completed handshake, never from a refusal


async def test_a_text_frame_from_kas_is_a_protocol_error(ws_peer: WsTunnelPeer) -> None:
    # Sent in the same write as the 101 response: the bridge must decode bytes that came with the head.
    ws_peer.behaviour = PeerBehaviour(after_upgrade=encode_frame(Opcode.TEXT, b"hello", mask=False))
    conn = await _connect(_spec(f"ws://127.0.0.1:{ws_peer.port}/"))
    try:
        error = await _failure(conn)
    finally:
        await conn.close(grace=0)
    assert error.reason == ErrorReason.PROTOCOL_ERROR
    assert "text messages are not allowed" in error.message


async def test_connection_refused_is_kas_unreachable() -> None:
    async with echo_server() as port:
        pass  # the port is now closed
    conn = await _connect(_spec(f"ws://127.0.0.1:{port}/"))
    try:
        error = await _failure(conn)
    finally:
        await conn.close(grace=0)
    assert error.reason == ErrorReason.KAS_UNREACHABLE
    assert error.message == f"cannot connect to kas at 127.0.0.1:{port}"  # not "refused": no port scans


async def test_kas_closing_the_websocket_makes_grpc_reconnect(
    grpc_peer: GrpcPeer, ws_peer: WsTunnelPeer
) -> None:
    conn = await _connect(_spec(f"ws://127.0.0.1:{ws_peer.port}/"))
    try:
        await _echo(conn)
        ws_peer.kick_all()
        async with asyncio.timeout(30):
            while conn.open_connections:  # noqa: ASYNC110 - polling a plain counter, bounded
                await asyncio.sleep(0.01)
        call = conn.channel.unary_unary(ECHO)
        assert await call(b"back", metadata=conn.call_metadata(), timeout=30, wait_for_ready=True) == b"back"
        assert conn.bridge.handshakes == 2
    finally:
        await conn.close(grace=1)


async def test_keepalive_detects_a_silent_peer(ws_peer: WsTunnelPeer) -> None:
    """A kas that stops answering (TCP still up) is declared dead by the keepalive ping's ack deadline."""
    settings = ChannelSettings(keepalive_time_ms=1000, keepalive_timeout_ms=1000)
    conn = await _connect(_spec(f"ws://127.0.0.1:{ws_peer.port}/"), settings=settings)
    try:
        await _echo(conn)
        ws_peer.frozen = True
        with pytest.raises(RpcError) as info:
            await _echo(conn, deadline=30)
        assert info.value.code() == StatusCode.UNAVAILABLE  # not DEADLINE_EXCEEDED
    finally:
        await conn.close(grace=0)


# --- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture
async def wss_peer(grpc_peer: GrpcPeer, tls_files: TlsFiles) -> AsyncIterator[WsTunnelPeer]:
    peer = await WsTunnelPeer(target_port=grpc_peer.port, ssl_context=tls_files.server_context()).start()
    yield peer
    await peer.close()


async def test_wss_unknown_authority(wss_peer: WsTunnelPeer) -> None:
    conn = await _connect(_spec(f"wss://127.0.0.1:{wss_peer.port}/"))
    try:
        error = await _failure(conn)
    finally:
        await conn.close(grace=0)
    assert error.reason == ErrorReason.TLS_UNKNOWN_AUTHORITY
    assert "caCert" in error.hint


@pytest.mark.parametrize(
    "tls",
    [
        pytest.param("ca", id="extra-ca"),
        pytest.param("ca+name", id="extra-ca-and-server-name"),
        pytest.param("insecure", id="skip-verify"),
    ],
)
async def test_wss_works_with_tls_settings(wss_peer: WsTunnelPeer, tls_files: TlsFiles, tls: str) -> None:
    settings = {
        "ca": TlsSettings(ca_pem=tls_files.ca.read_bytes()),
        "ca+name": TlsSettings(ca_pem=tls_files.ca.read_bytes(), server_name="kas.test"),
        "insecure": TlsSettings(insecure_skip_verify=True),
    }[tls]
    conn = await _connect(_spec(f"wss://127.0.0.1:{wss_peer.port}/", tls=settings))
    try:
        assert await _echo(conn) == b"ping"
    finally:
        await conn.close(grace=1)


async def test_wss_wrong_server_name(wss_peer: WsTunnelPeer, tls_files: TlsFiles) -> None:
    tls = TlsSettings(ca_pem=tls_files.ca.read_bytes(), server_name="other.test")
    conn = await _connect(_spec(f"wss://127.0.0.1:{wss_peer.port}/", tls=tls))
    try:
        error = await _failure(conn)
    finally:
        await conn.close(grace=0)
    assert error.reason == ErrorReason.TLS_ERROR
    assert "tlsServerName" in error.hint


async def test_wss_address_on_a_plaintext_endpoint_times_out_in_tls(ws_peer: WsTunnelPeer) -> None:
    # The peer waits for an HTTP head that never comes; the TLS handshake deadline ends the attempt.
    settings = ChannelSettings(dial=DialTimeouts(tls=0.5))
    conn = await _connect(_spec(f"wss://127.0.0.1:{ws_peer.port}/"), settings=settings)
    try:
        error = await _failure(conn)
    finally:
        await conn.close(grace=0)
    assert error.reason == ErrorReason.TLS_ERROR
    assert "timed out" in error.message


@pytest.fixture
async def grpcs_peer(tls_files: TlsFiles) -> AsyncIterator[GrpcPeer]:
    credentials = grpc.ssl_server_credentials([(tls_files.key.read_bytes(), tls_files.cert.read_bytes())])
    peer = await GrpcPeer(credentials=credentials).start()
    yield peer
    await peer.close()


@pytest.mark.parametrize("transport", ["h2", "grpc"])
@pytest.mark.parametrize("tls", ["ca", "ca+name", "insecure"])
async def test_grpcs_with_tls_settings(
    grpcs_peer: GrpcPeer, tls_files: TlsFiles, tls: str, transport: str
) -> None:
    settings = {
        "ca": TlsSettings(ca_pem=tls_files.ca.read_bytes()),
        "ca+name": TlsSettings(ca_pem=tls_files.ca.read_bytes(), server_name="kas.test"),
        "insecure": TlsSettings(insecure_skip_verify=True),
    }[tls]
    spec = _spec(f"grpcs://127.0.0.1:{grpcs_peer.port}", tls=settings, kas_headers=(("X-Team", "red"),))
    conn = await _connect(spec, environ={**NO_PROXY_ENV, "GAO_KAS_TRANSPORT": transport})
    try:
        assert await _echo(conn) == b"ping"
    finally:
        await conn.close(grace=1)
    if transport == "h2":  # the own HTTP/2 client's dialer does every TLS itself, verified or not
        assert conn.bridge.handshakes == 1
        assert not conn.direct
        return
    # grpc.aio dials verified grpcs itself; only skip-verify needs the bridge (it does the TLS).
    assert conn.bridge.handshakes == (1 if tls == "insecure" else 0)
    assert conn.direct is (tls != "insecure")
    assert grpcs_peer.metadata[0]["x-team"] == "red"


async def test_grpcs_unknown_authority(grpcs_peer: GrpcPeer) -> None:
    conn = await _connect(_spec(f"grpcs://127.0.0.1:{grpcs_peer.port}"))
    try:
        error = await _failure(conn)
    finally:
        await conn.close(grace=0)
    assert error.reason in (ErrorReason.TLS_UNKNOWN_AUTHORITY, ErrorReason.TLS_ERROR)


# --- HTTP CONNECT proxy ------------------------------------------------------------------------------


async def test_wss_through_connect_proxy(
    grpc_peer: GrpcPeer, wss_peer: WsTunnelPeer, tls_files: TlsFiles
) -> None:
    proxy = await ConnectProxy(hosts={"kas.test": "127.0.0.1"}, credentials="Basic dTpwQHNz").start()
    spec = _spec(
        f"wss://kas.test:{wss_peer.port}/",
        tls=TlsSettings(ca_pem=tls_files.ca.read_bytes()),
        proxy=ProxySettings(url=f"http://u:p%40ss@127.0.0.1:{proxy.port}"),
    )
    conn = await _connect(spec)
    try:
        assert await _echo(conn) == b"ping"
    finally:
        await conn.close(grace=1)
        await proxy.close()
    (request,) = proxy.requests
    assert request.start_line[:2] == ("CONNECT", f"kas.test:{wss_peer.port}")
    assert wss_peer.requests[0].get("Host") == f"kas.test:{wss_peer.port}"


async def test_proxy_from_environment_and_no_proxy(ws_peer: WsTunnelPeer) -> None:
    proxy = await ConnectProxy(hosts={"kas.test": "127.0.0.1"}).start()
    address = f"ws://kas.test:{ws_peer.port}/"
    try:
        conn = await _connect(_spec(address), environ={"HTTP_PROXY": f"127.0.0.1:{proxy.port}"})
        try:
            assert await _echo(conn) == b"ping"
        finally:
            await conn.close(grace=1)
        assert len(proxy.requests) == 1
        env = {"HTTP_PROXY": f"127.0.0.1:{proxy.port}", "NO_PROXY": "kas.test"}
        bypass = await _connect(_spec(address), environ=env)
        try:
            error = await _failure(bypass)  # kas.test is not in DNS: only the proxy knew it
        finally:
            await bypass.close(grace=0)
        assert error.reason == ErrorReason.KAS_UNREACHABLE
        assert error.message == f"cannot connect to kas at kas.test:{ws_peer.port}"  # not "resolve"
        assert len(proxy.requests) == 1
    finally:
        await proxy.close()


@pytest.mark.parametrize(("status", "words"), [(403, "allow the kas host"), (407, "requires credentials")])
async def test_proxy_refusal_is_typed(ws_peer: WsTunnelPeer, status: int, words: str) -> None:
    proxy = await ConnectProxy(refuse_with=status if status != 407 else None, credentials="x").start()
    spec = _spec(f"ws://kas.test:{ws_peer.port}/", proxy=ProxySettings(url=f"http://127.0.0.1:{proxy.port}"))
    conn = await _connect(spec)
    try:
        error = await _failure(conn)
    finally:
        await conn.close(grace=0)
        await proxy.close()
    assert error.reason == ErrorReason.PROXY_REFUSED
    assert error.message.endswith(f"answered CONNECT kas.test:{ws_peer.port} with HTTP {status}")
    assert words in error.hint


# --- an independent WebSocket server (aiohttp) -------------------------------------------------------


_GRPC_PORT = web.AppKey("grpc_port", int)


async def _aiohttp_tunnel(request: web.Request) -> web.WebSocketResponse:
    """A ws-tunnel endpoint written with aiohttp: WebSocket messages ⇄ the grpc server's TCP port."""
    ws = web.WebSocketResponse(protocols=("ws-tunnel",), max_msg_size=10 * 1024 * 1024, compress=False)
    ws.headers["Server"] = "gitlab-kas/v17.1.0/feedbeef"
    await ws.prepare(request)
    reader, writer = await asyncio.open_connection("127.0.0.1", request.app[_GRPC_PORT])

    async def upstream() -> None:
        async for message in ws:
            assert message.type == WSMsgType.BINARY
            writer.write(message.data)
            await writer.drain()
        writer.close()

    async def downstream() -> None:
        while data := await reader.read(65536):
            await ws.send_bytes(data)
        await ws.close()

    async with asyncio.TaskGroup() as group:
        group.create_task(upstream(), name="aiohttp-tunnel-up")
        group.create_task(downstream(), name="aiohttp-tunnel-down")
    return ws


async def test_interop_with_aiohttp_websocket_server(grpc_peer: GrpcPeer) -> None:
    app = web.Application()
    app[_GRPC_PORT] = grpc_peer.port
    app.router.add_get("/-/kubernetes-agent/", _aiohttp_tunnel)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        conn = await _connect(_spec(f"ws://127.0.0.1:{port}/-/kubernetes-agent/"))
        try:
            assert await _echo(conn, b"x" * 100_000) == b"x" * 100_000
            assert conn.kas_version == "v17.1.0"
        finally:
            await conn.close(grace=1)
    finally:
        await runner.cleanup()


def test_tls_files_are_pem(tls_files: TlsFiles) -> None:
    assert Path(tls_files.ca).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
