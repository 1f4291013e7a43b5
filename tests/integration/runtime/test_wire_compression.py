"""What the worker compresses on the wire to kas: Register and GetConfiguration requests are gzip (as
agentk's), the tunnel's Connect stream is not (docs/architecture.md: compressing inline on the event loop
capped tunnelled throughput). Observed in the plaintext h2c bytes the worker sends, through a relay, over
both transports (the own HTTP/2 client, and grpc.aio, which gets `gzip=` as grpc's compression)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.secret import Secret
from agent_runtime.spec import WorkerSpec
from agent_runtime.transport.channel import ChannelSettings
from agent_runtime.worker import Worker
from tests.integration.runtime.conftest import eventually
from tests.integration.runtime.fake_kas import FakeKas, http
from tests.support.k8s_cluster import LocalCluster

GZIP_MESSAGE = re.compile(rb"\x01[\x00-\xff]{4}\x1f\x8b\x08", re.DOTALL)
"""A gRPC length-prefixed message with the compressed flag set whose payload starts as gzip does.
(h2c frames DATA payloads as they are; only header blocks are HPACK-coded.)"""
MARKER = b"plain-tunnel-bytes-"


class Relay:
    """Loopback TCP relay to kas that keeps every byte the worker sends."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self.sent = bytearray()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        for reader, writer, keep in ((down_r, up_w, True), (up_r, down_w, False)):
            pump = asyncio.create_task(self._pump(reader, writer, keep), name="relay-pump")
            self._pumps.add(pump)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep: bool) -> None:
        try:
            while chunk := await reader.read(65536):
                if keep:
                    self.sent += chunk
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture(params=["h2", "grpc"])
async def relayed_worker(
    kas: FakeKas, kube: KubeAccess, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Worker, Relay]]:
    # grpc sends a message uncompressed when gzip would not shrink it: a long, repetitive pod name (in
    # the AgentMeta of Register and GetConfiguration) makes the gzip visible.
    monkeypatch.setenv("POD_NAME", "p" * 253)
    relay = Relay(kas.port)
    port = await relay.start()
    spec = WorkerSpec(id="test/relayed", kas_address=f"grpc://127.0.0.1:{port}", token=Secret(kas.token))
    channel = ChannelSettings(transport=request.param)
    worker = Worker(spec, WorkerEnvironment(kube=kube, policy=PERMISSIVE_POLICY, channel=channel))
    task = asyncio.create_task(worker.run(), name="relayed-worker")
    yield worker, relay
    await worker.stop(1.0)
    await asyncio.wait_for(task, 10)
    await relay.close()


async def test_register_and_configuration_are_gzip_and_the_tunnel_is_not(
    kas: FakeKas, relayed_worker: tuple[Worker, Relay], k8s_cluster: LocalCluster, namespace: str
) -> None:
    worker, relay = relayed_worker
    await eventually(lambda: worker.snapshot.registered and worker.snapshot.configuration_received)
    # Every Register and GetConfiguration request so far went compressed, and nothing else did.
    assert len(GZIP_MESSAGE.findall(relay.sent)) == len(kas.registers) + len(kas.config_requests) >= 2

    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "compressible"},
        "data": {"text": (MARKER * 8192).decode()},  # 152 KiB that gzip would shrink to almost nothing
    }
    status, answer = await asyncio.to_thread(
        k8s_cluster.request, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body
    )
    assert status == 201, answer
    gzip_before = len(GZIP_MESSAGE.findall(relay.sent))
    result = await http(kas, "GET", f"/api/v1/namespaces/{namespace}/configmaps/compressible")
    assert result.status == 200
    assert result.body.count(MARKER) == 8192
    # The response crossed the wire as it is (a few markers are split by HTTP/2 frame headers).
    assert relay.sent.count(MARKER) > 8000
    assert len(GZIP_MESSAGE.findall(relay.sent)) == gzip_before
