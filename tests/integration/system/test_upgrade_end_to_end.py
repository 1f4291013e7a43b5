"""HTTP Upgrade (exec/attach/port-forward shape) end to end: a raw HTTP/1.1 client over TLS with the CI
job's token → kas proxy → tunnel → runtime Worker → a loopback HTTPS server that upgrades (101) and
echoes, or refuses with 400. Bytes flow both ways as upgradeData; both ends can close cleanly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.spec import Phase, WorkerSnapshot
from kas.server import KasServer
from tests.integration.system.conftest import (
    JOB_TOKEN,
    Certs,
    agent_spec,
    ci_headers,
    proxy_ssl,
    started_kas,
    wait_for,
)
from tests.integration.system.upgrade_target import (
    BYE,
    ECHO_PATH,
    FAREWELL,
    GREETING,
    PROXIED_HOST,
    REFUSAL,
    REFUSE_PATH,
    TOKEN,
    UpgradeTarget,
    kube_access_for,
    upgrade_target,
)
from tests.integration.transport.peers import ConnectProxy

pytestmark = pytest.mark.timeout(120)

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def target(certs: Certs) -> AsyncIterator[UpgradeTarget]:
    async with upgrade_target(certs.cert, certs.key) as server:
        yield server


@asynccontextmanager
async def _runtime(kube: KubeAccess) -> AsyncIterator[Runtime]:
    rt = Runtime(kube, RuntimeSettings(observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY))
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(30):
            await rt.stop(2.0)
        await kube.close()


@pytest.fixture
async def loopback_runtime(target: UpgradeTarget, certs: Certs) -> AsyncIterator[Runtime]:
    """A Runtime whose Kubernetes API is the loopback upgrade target."""
    async with _runtime(kube_access_for(target, certs.ca)) as rt:
        yield rt


def _ready(snapshot: WorkerSnapshot) -> bool:
    return snapshot.phase is Phase.CONNECTED and snapshot.tunnels_idle >= 1


async def _open(kas: KasServer, certs: Certs, path: str, protocol: str) -> Stream:
    assert kas.proxy_url is not None
    port = int(kas.proxy_url.rstrip("/").rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=proxy_ssl(certs))
    auth = ci_headers()["Authorization"]
    writer.write(
        (
            f"POST {path}?command=sh&stdin=true&stdout=true HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: {auth}\r\n"
            f"Connection: Upgrade\r\nUpgrade: {protocol}\r\n"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]]]:
    raw = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = raw.rstrip("\r\n").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers.setdefault(key.strip().lower(), []).append(value.strip())
    return int(status_line.split(" ")[1]), headers


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(payload)
    await writer.drain()
    assert await reader.readexactly(len(payload)) == payload


async def _idle_again(runtime: Runtime, worker_id: str) -> None:
    await wait_for(runtime, worker_id, lambda s: s.tunnels_active == 0 and s.tunnels_idle >= 1)


async def _upgrade(reader: asyncio.StreamReader, protocol: str) -> None:
    status, headers = await _head(reader)
    assert status == 101
    assert headers["upgrade"] == [protocol]
    assert any("gitlab-agent/" in v for v in headers.get("via", []))
    assert await reader.readexactly(len(GREETING)) == GREETING


@pytest.mark.parametrize(
    ("protocol", "scheme"),
    [("SPDY/3.1", "grpc"), ("websocket", "grpc"), ("SPDY/3.1", "ws"), ("websocket", "wss")],
)
async def test_upgrade_pipes_bytes_both_ways_and_server_closes_cleanly(
    protocol: str, scheme: str, loopback_runtime: Runtime, target: UpgradeTarget, certs: Certs, tmp_path: Path
) -> None:
    async with started_kas(tmp_path / "kas", certs, agent_tls=scheme == "wss") as kas:
        spec = agent_spec(kas, scheme, certs)
        loopback_runtime.apply(spec)
        await wait_for(loopback_runtime, spec.id, _ready)
        reader, writer = await _open(kas, certs, ECHO_PATH, protocol)
        try:
            async with asyncio.timeout(30):
                await _upgrade(reader, protocol)
                for payload in (b"hello", b"x" * 200_000, bytes(range(256)) * 64):
                    await _echo(reader, writer, payload)
                writer.write(BYE)
                await writer.drain()
                assert await reader.readexactly(len(FAREWELL)) == FAREWELL
                assert await reader.read() == b"", "the server's close reaches the client as EOF"
        finally:
            writer.close()
        [seen] = target.upgrades()
        assert seen.ended_by == "server"
        assert seen.header("Upgrade") == [protocol]
        assert seen.header("Authorization") == [f"Bearer {TOKEN}"], "the worker's own credentials"
        assert JOB_TOKEN not in json.dumps(seen.headers), "the CI job token never reaches the cluster"
        assert any("gRPC/1.0 gitlab-agent/" in v for v in seen.header("Via"))
        await _idle_again(loopback_runtime, spec.id)


async def test_client_close_ends_the_upgraded_connection(
    loopback_runtime: Runtime, target: UpgradeTarget, certs: Certs, tmp_path: Path
) -> None:
    """The client goes away: the upstream connection must end too (no exec session left behind)."""
    async with started_kas(tmp_path / "kas", certs) as kas:
        spec = agent_spec(kas, "grpc", certs)
        loopback_runtime.apply(spec)
        await wait_for(loopback_runtime, spec.id, _ready)
        reader, writer = await _open(kas, certs, ECHO_PATH, "SPDY/3.1")
        async with asyncio.timeout(30):
            await _upgrade(reader, "SPDY/3.1")
            await _echo(reader, writer, b"ping")
            writer.close()
            await writer.wait_closed()
            [seen] = target.upgrades()
            await seen.ended.wait()
        assert seen.ended_by == "client"
        assert seen.echoed == 4
        await _idle_again(loopback_runtime, spec.id)


async def test_large_transfer_in_both_directions_at_once(
    loopback_runtime: Runtime, target: UpgradeTarget, certs: Certs, tmp_path: Path
) -> None:
    """Several MiB written while the echo is read concurrently: flow control holds, nothing is lost."""
    payload = bytes(range(251)) * (4 * 1024 * 1024 // 251)
    async with started_kas(tmp_path / "kas", certs) as kas:
        spec = agent_spec(kas, "ws", certs)
        loopback_runtime.apply(spec)
        await wait_for(loopback_runtime, spec.id, _ready)
        reader, writer = await _open(kas, certs, ECHO_PATH, "websocket")
        try:
            async with asyncio.timeout(60):
                await _upgrade(reader, "websocket")

                async def write_all() -> None:
                    for start in range(0, len(payload), 100_000):
                        writer.write(payload[start : start + 100_000])
                        await writer.drain()

                async with asyncio.TaskGroup() as tg:
                    tg.create_task(write_all(), name="upgrade-test-writer")
                    echoed = tg.create_task(reader.readexactly(len(payload)), name="upgrade-test-reader")
                assert echoed.result() == payload
                writer.write(BYE)
                await writer.drain()
                assert await reader.readexactly(len(FAREWELL)) == FAREWELL
                assert await reader.read() == b""
        finally:
            writer.close()
        await _idle_again(loopback_runtime, spec.id)
        # The worker's metrics saw one 101 exchange and every upgraded byte, each way.
        sample = loopback_runtime.registry.get_sample_value
        agent = {"agent": spec.id}
        assert sample("agentk_tunnel_requests_total", {**agent, "code_class": "1xx"}) == 1
        assert sample("agentk_tunnel_bytes_total", {**agent, "direction": "in"}) == len(payload) + len(BYE)
        out = len(GREETING) + len(payload) + len(FAREWELL)
        assert sample("agentk_tunnel_bytes_total", {**agent, "direction": "out"}) == out


async def test_refused_upgrade_comes_back_as_a_normal_response(
    loopback_runtime: Runtime, target: UpgradeTarget, certs: Certs, tmp_path: Path
) -> None:
    async with started_kas(tmp_path / "kas", certs) as kas:
        spec = agent_spec(kas, "ws", certs)
        loopback_runtime.apply(spec)
        await wait_for(loopback_runtime, spec.id, _ready)
        reader, writer = await _open(kas, certs, REFUSE_PATH, "SPDY/3.1")
        try:
            async with asyncio.timeout(30):
                status, headers = await _head(reader)
                assert status == 400
                body = await reader.readexactly(int(headers["content-length"][0]))
                assert json.loads(body) == REFUSAL
        finally:
            writer.close()
        assert [s.request_line.split(" ")[0] for s in target.requests if REFUSE_PATH in s.request_line] == [
            "POST"
        ]
        await _idle_again(loopback_runtime, spec.id)


async def test_upgrade_goes_through_the_kubeconfig_proxy(
    target: UpgradeTarget, certs: Certs, tmp_path: Path
) -> None:
    """With `proxy-url`, the upgrade's own connection asks the proxy for a tunnel, then speaks TLS in it."""
    proxy = await ConnectProxy(hosts={PROXIED_HOST: "127.0.0.1"}).start()
    try:
        async with (
            _runtime(kube_access_for(target, certs.ca, proxy_port=proxy.port)) as runtime,
            started_kas(tmp_path / "kas", certs) as kas,
        ):
            spec = agent_spec(kas, "grpc", certs)
            runtime.apply(spec)
            await wait_for(runtime, spec.id, _ready)
            reader, writer = await _open(kas, certs, ECHO_PATH, "SPDY/3.1")
            try:
                async with asyncio.timeout(30):
                    await _upgrade(reader, "SPDY/3.1")
                    await _echo(reader, writer, b"through the proxy")
            finally:
                writer.close()
        assert [ECHO_PATH in seen.request_line for seen in target.upgrades()] == [True]
        tunnels = [r.start_line for r in proxy.requests]
        assert ("CONNECT", f"{PROXIED_HOST}:{target.port}", "HTTP/1.1") in tunnels
    finally:
        await proxy.close()
