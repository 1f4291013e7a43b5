"""A tenant reads the status to learn about whatever its kas address points at: banners, redirects, ports.

The status (a worker's last error) names HTTP status codes only, never the peer's reason phrase,
`Location` or any other byte it sent, and "refused", "unresolvable" and "no such port" read the same.
Loopback is allowed here (as with --allow-private-kas): the point is what the status says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import pytest
from kubernetes import client as k8s_client

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess
from agent_runtime.policy import DestinationPolicy, TenantPolicy
from agent_runtime.rpc_status import RpcError
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, ProxySettings, WorkerError, WorkerSpec
from agent_runtime.transport import KasConnection, open_kas_connection
from agent_runtime.worker import Worker
from tests.integration.transport.grpc_peer import ECHO, GrpcPeer
from tests.integration.transport.peers import make_tls_files

ADMIN_ALLOWS_LOOPBACK = DestinationPolicy(allow_private=True, allow_plaintext=True)
BANNER = "internal-banner-7f3a"
"""Text only the probed service knows; it must never reach the status."""


@asynccontextmanager
async def _answering(answer: bytes) -> AsyncIterator[int]:
    """A loopback service that answers every connection's first bytes with `answer`, then closes."""

    class _Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            assert isinstance(self.transport, asyncio.Transport)
            self.transport.write(answer)
            self.transport.close()

    server = await asyncio.get_running_loop().create_server(_Answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _last_error(address: str, proxy: ProxySettings | None = None) -> WorkerError:
    spec = WorkerSpec(id="tenant/agent", kas_address=address, token=Secret("t" * 50), proxy=proxy)
    conn = await open_kas_connection(
        spec, user_agent="gitlab-agent/v0/0", policy=ADMIN_ALLOWS_LOOPBACK, environ={}
    )
    try:
        return await _failure(conn)
    finally:
        await conn.close(0)


async def _failure(conn: KasConnection) -> WorkerError:
    call = conn.channel.unary_unary(ECHO)
    with pytest.raises(RpcError) as info:
        await call(b"ping", metadata=conn.call_metadata(), timeout=20)
    error = conn.record_rpc_error(info.value)
    assert error is not None
    return error


def _shown(error: WorkerError) -> str:
    return f"{error.reason} {error.message} {error.hint}"


async def test_a_redirect_shows_its_code_but_not_its_reason_or_location() -> None:
    answer = (
        f"HTTP/1.1 302 {BANNER}\r\nLocation: http://10.0.0.7:8080/{BANNER}?token=x\r\n"
        f"Server: {BANNER}\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    async with _answering(answer) as port:
        error = await _last_error(f"ws://127.0.0.1:{port}/")
    assert error.reason is ErrorReason.WEBSOCKET_HANDSHAKE
    assert error.message == "kas answered the WebSocket handshake with HTTP 302"
    assert BANNER not in _shown(error)
    assert "10.0.0.7" not in _shown(error)


@pytest.mark.parametrize("status", [200, 401, 404, 503])
async def test_other_answers_show_their_code_only(status: int) -> None:
    async with _answering(f"HTTP/1.1 {status} {BANNER}\r\nContent-Length: 0\r\n\r\n".encode()) as port:
        error = await _last_error(f"ws://127.0.0.1:{port}/")
    assert error.message == f"kas answered the WebSocket handshake with HTTP {status}"
    assert BANNER not in _shown(error)


@pytest.mark.parametrize(
    "answer",
    [
        f"SSH-2.0-OpenSSH_9.6 {BANNER}\r\n\r\n".encode(),  # not HTTP at all
        f"HTTP/1.1 200 OK\r\n{BANNER}\r\n\r\n".encode(),  # a malformed header line
    ],
    ids=["ssh-banner", "malformed-header"],
)
async def test_an_unreadable_answer_is_not_quoted(answer: bytes) -> None:
    async with _answering(answer) as port:
        error = await _last_error(f"ws://127.0.0.1:{port}/")
    assert error.reason is ErrorReason.WEBSOCKET_HANDSHAKE
    assert BANNER not in _shown(error)


async def test_a_proxy_refusal_shows_its_code_but_not_its_text() -> None:
    async with _answering(f"HTTP/1.1 403 {BANNER}\r\nContent-Length: 0\r\n\r\n".encode()) as proxy_port:
        error = await _last_error(
            "ws://kas.example.com/", proxy=ProxySettings(url=f"http://127.0.0.1:{proxy_port}")
        )
    assert error.reason is ErrorReason.PROXY_REFUSED
    assert error.message.endswith("answered CONNECT kas.example.com:80 with HTTP 403")
    assert BANNER not in _shown(error)


@pytest.mark.parametrize("scheme", ["ws", "grpc"])
async def test_closed_ports_and_unknown_names_read_the_same(scheme: str) -> None:
    """A port scanner needs refused/timeout/unresolvable told apart: the status says one thing."""
    async with _answering(b"") as closed_port:
        pass  # closed again: connecting is refused
    refused = await _last_error(f"{scheme}://127.0.0.1:{closed_port}")
    unknown = await _last_error(f"{scheme}://no-such-host.invalid:{closed_port}")
    assert refused.reason is unknown.reason is ErrorReason.KAS_UNREACHABLE
    assert refused.message == f"cannot connect to kas at 127.0.0.1:{closed_port}"
    assert unknown.message == f"cannot connect to kas at no-such-host.invalid:{closed_port}"
    assert refused.hint == unknown.hint


async def _worker_error(address: str) -> WorkerError:
    """The status error of a worker dialing `address` once every module has failed (bounded)."""
    configuration = k8s_client.Configuration()
    configuration.host = "https://127.0.0.1:1"  # never reached: no kas, no tunnel requests
    kube = KubeAccess(configuration)
    spec = WorkerSpec(id="tenant/agent", kas_address=address, token=Secret("t" * 50))
    worker = Worker(
        spec, WorkerEnvironment(kube=kube, policy=TenantPolicy(destinations=ADMIN_ALLOWS_LOOPBACK))
    )
    task = asyncio.create_task(worker.run(), name="worker-probing")
    try:
        async with asyncio.timeout(20):
            while worker.snapshot.last_error is None:  # noqa: ASYNC110 - polling a snapshot, bounded
                await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # every module has failed at least once by now
        error = worker.snapshot.last_error
    finally:
        await worker.stop(0.5)
        async with asyncio.timeout(10):
            await task
        await kube.close()
    assert error is not None
    return error


async def test_the_workers_status_says_cannot_connect_not_what_grpc_says() -> None:
    """The worker's own status, not just the connection: grpc's details (socket paths, "refused",
    resolver errors) never replace the transport's one sentence."""
    async with _answering(b"") as closed_port:
        pass
    error = await _worker_error(f"grpc://127.0.0.1:{closed_port}")
    assert error.reason is ErrorReason.KAS_UNREACHABLE
    assert error.message == f"cannot connect to kas at 127.0.0.1:{closed_port}"


async def test_a_grpcs_certificate_failure_is_read_not_quoted(tmp_path: Path) -> None:
    """grpc does the TLS of grpcs inside the bridge's pipe: its failure text names the bridge's socket.
    The status gives the transport's reading (and the caCert hint) instead."""
    tls = make_tls_files(tmp_path)
    credentials = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
    peer = await GrpcPeer(credentials=credentials).start()
    try:
        error = await _worker_error(f"grpcs://127.0.0.1:{peer.port}")
    finally:
        await peer.close()
    assert error.reason is ErrorReason.TLS_UNKNOWN_AUTHORITY
    assert "caCert" in error.hint
    assert "unix:" not in _shown(error)
