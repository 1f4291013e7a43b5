"""Tenant A points its kas address at tenant B's bridge, to have B's bridge dial B's kas with B's headers.

Even with --allow-private-kas and --allow-plaintext-kas (so loopback and ws:// are fine for A), there must
be nothing of B's to point at: B's bridge is a Unix socket in a private directory, not a TCP port.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_runtime.policy import DestinationPolicy
from agent_runtime.rpc_status import RpcError
from agent_runtime.secret import Secret
from agent_runtime.spec import WorkerSpec
from agent_runtime.transport import KasConnection, open_kas_connection
from tests.integration.transport.grpc_peer import ECHO, GrpcPeer
from tests.integration.transport.peers import WsTunnelPeer

ADMIN_ALLOWS_LOOPBACK = DestinationPolicy(allow_private=True, allow_plaintext=True)
B_SECRET_HEADER = ("X-Tenant-B-Credential", "b-" + "s" * 30)


def _listening_tcp_ports() -> set[int]:
    """TCP ports this process listens on (from /proc: the sockets among our own file descriptors)."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in ours:  # 0A = LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def _directory_mode(socket_path: str) -> int | None:
    """Permission bits of the directory holding `socket_path`, None once it is gone."""
    try:
        return stat.S_IMODE(os.stat(os.path.dirname(socket_path)).st_mode)
    except FileNotFoundError:
        return None


@pytest.fixture
async def grpc_peer() -> AsyncIterator[GrpcPeer]:
    peer = await GrpcPeer().start()
    yield peer
    await peer.close()


@pytest.fixture
async def kas_of_b(grpc_peer: GrpcPeer) -> AsyncIterator[WsTunnelPeer]:
    peer = await WsTunnelPeer(target_port=grpc_peer.port).start()
    yield peer
    await peer.close()


async def _connect(address: str, *, headers: tuple[tuple[str, str], ...] = ()) -> KasConnection:
    spec = WorkerSpec(id=address, kas_address=address, token=Secret("t" * 50), kas_headers=headers)
    # The bridge serves the grpc.aio transport only (the own HTTP/2 client, the default, listens on nothing).
    return await open_kas_connection(
        spec,
        user_agent="gitlab-agent/v0/0",
        policy=ADMIN_ALLOWS_LOOPBACK,
        environ={"GAO_KAS_TRANSPORT": "grpc"},
    )


async def _echo(conn: KasConnection, deadline: float) -> None:
    call = conn.channel.unary_unary(ECHO)
    await call(b"ping", metadata=conn.call_metadata(), timeout=deadline)


async def test_another_workers_bridge_cannot_be_used_as_kas(kas_of_b: WsTunnelPeer) -> None:
    before = _listening_tcp_ports()
    b = await _connect(f"ws://127.0.0.1:{kas_of_b.port}/", headers=(B_SECRET_HEADER,))
    try:
        await _echo(b, deadline=10)  # B is connected: its bridge exists and has dialed kas once
        assert len(kas_of_b.requests) == 1
        new_ports = _listening_tcp_ports() - before
        # Whatever B listens on that is reachable by address, A tries it as its kas.
        for port in sorted(new_ports):
            a = await _connect(f"ws://127.0.0.1:{port}/")
            try:
                with pytest.raises(RpcError):
                    await _echo(a, deadline=2)
            finally:
                await a.close(0)
        assert len(kas_of_b.requests) == 1, "B's kas saw a handshake (with B's headers) that A caused"
        assert new_ports == set(), "a worker's bridge listens on a TCP port another tenant can name"
        assert stat.S_ISSOCK(os.stat(b.bridge.path).st_mode)
        assert _directory_mode(b.bridge.path) == 0o700
    finally:
        await b.close(0)
    assert _directory_mode(b.bridge.path) is None, "the private directory goes with the bridge"
