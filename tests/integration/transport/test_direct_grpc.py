"""With the grpc.aio transport (GAO_KAS_TRANSPORT=grpc), grpc:// and grpcs:// without a proxy dial kas's
checked addresses themselves, not through the relay.

Against real grpc servers on loopback: the relay (the worker's bridge) sees no connection, TLS still
verifies kas's name (not the dialed IP), and a kas that moves to another address is followed once the
name resolves there. The resolver is the one stand-in: a loop whose getaddrinfo answers for `kas.test`
(no DNS server here), while every other name resolves as usual.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.rpc_status import RpcError
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, TlsSettings, WorkerSpec
from agent_runtime.transport import KasConnection, open_kas_connection
from agent_runtime.transport import direct as direct_module
from tests.integration.transport.grpc_peer import ECHO, GrpcPeer
from tests.integration.transport.peers import TlsFiles, make_tls_files

TOKEN = "glagent-" + "d" * 50
GRPC_TRANSPORT = {"GAO_KAS_TRANSPORT": "grpc"}
"""The own HTTP/2 client (the default) always dials through the dialer; these tests are grpc.aio's."""


def _spec(address: str, **kwargs: Any) -> WorkerSpec:
    return WorkerSpec(id="ns/direct", kas_address=address, token=Secret(TOKEN), **kwargs)


async def _connect(spec: WorkerSpec) -> KasConnection:
    return await open_kas_connection(
        spec,
        user_agent="gitlab-agent/v16.5.0/test",
        policy=PERMISSIVE_POLICY.destinations,
        environ=GRPC_TRANSPORT,
    )


async def _echo(conn: KasConnection, deadline: float = 10) -> bytes:
    call = conn.channel.unary_unary(ECHO)
    result: bytes = await call(b"ping", metadata=conn.call_metadata(), timeout=deadline)
    return result


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def grpc_peer() -> AsyncIterator[GrpcPeer]:
    peer = await GrpcPeer().start()
    yield peer
    await peer.close()


@pytest.fixture
async def grpcs_peer(tls_files: TlsFiles) -> AsyncIterator[GrpcPeer]:
    credentials = grpc.ssl_server_credentials([(tls_files.key.read_bytes(), tls_files.cert.read_bytes())])
    peer = await GrpcPeer(credentials=credentials).start()
    yield peer
    await peer.close()


async def test_grpc_reaches_kas_without_the_relay(grpc_peer: GrpcPeer) -> None:
    # By name: localhost resolves (IPv4 and maybe ::1 first); the peer listens on 127.0.0.1 only.
    conn = await _connect(_spec(f"grpc://localhost:{grpc_peer.port}", kas_headers=(("X-Team", "red"),)))
    try:
        assert await _echo(conn) == b"ping"
        assert await _echo(conn) == b"ping"
        assert conn.direct
        assert conn.bridge.handshakes == 0, "the relay dialed kas"
        assert conn.bridge.open_connections == 0
    finally:
        await conn.close(0)
    assert grpc_peer.metadata[0]["x-team"] == "red"
    assert len(set(grpc_peer.peers)) == 1, "two calls, one HTTP/2 connection"
    assert grpc_peer.peers[0].startswith("ipv4:127.0.0.1:")


async def test_grpcs_verifies_kas_name_not_the_dialed_ip(grpcs_peer: GrpcPeer, tls_files: TlsFiles) -> None:
    ca = tls_files.ca.read_bytes()
    good = await _connect(_spec(f"grpcs://localhost:{grpcs_peer.port}", tls=TlsSettings(ca_pem=ca)))
    try:
        assert await _echo(good) == b"ping"
        assert good.direct
        assert good.bridge.handshakes == 0
    finally:
        await good.close(0)
    # The certificate names 127.0.0.1, the address dialed: only checking the IP would accept it.
    wrong = await _connect(
        _spec(f"grpcs://localhost:{grpcs_peer.port}", tls=TlsSettings(ca_pem=ca, server_name="wrong.test"))
    )
    try:
        with pytest.raises(RpcError) as info:
            await _echo(wrong, deadline=5)
        error = wrong.record_rpc_error(info.value)
    finally:
        await wrong.close(0)
    assert wrong.direct
    assert error is not None
    assert error.reason is ErrorReason.TLS_ERROR
    assert "tlsServerName" in error.hint
    assert len(grpcs_peer.metadata) == 1, "a call reached kas over a certificate for another name"


def _kas_test_resolver(loop: asyncio.AbstractEventLoop, answer: list[str]) -> Callable[..., Any]:
    """getaddrinfo that answers `kas.test` with `answer[0]` and passes every other name on."""
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> Any:
        if host != "kas.test":
            return await real(host, port, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answer[0], int(port)))]

    return getaddrinfo


async def test_a_failing_channel_follows_kas_to_its_new_address(
    grpc_peer: GrpcPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    answer = ["127.0.0.1"]
    monkeypatch.setattr(loop, "getaddrinfo", _kas_test_resolver(loop, answer))
    monkeypatch.setattr(direct_module, "RERESOLVE_INTERVAL_S", 0.0)
    moved = await GrpcPeer(host="127.0.0.2", port=grpc_peer.port).start()
    conn = await _connect(_spec(f"grpc://kas.test:{grpc_peer.port}"))
    try:
        assert await _echo(conn) == b"ping"
        assert await conn.reroute() is None, "same addresses: the channel is kept"
        await grpc_peer.close()
        answer[0] = "127.0.0.2"
        first = conn.grpc_channel
        with pytest.raises(RpcError):
            await _echo(conn, deadline=2)  # the old address refuses
        old = await conn.reroute()
        assert old is first
        assert conn.grpc_channel is not first
        assert old is not None
        await old.close(0)
        assert await _echo(conn) == b"ping"
        assert conn.bridge.handshakes == 0
    finally:
        await conn.close(0)
        await moved.close()
    assert len(moved.metadata) == 1
    assert moved.peers[0].startswith("ipv4:127.0.0.")
