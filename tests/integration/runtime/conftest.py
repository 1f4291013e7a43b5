"""A Worker connected to the loopback fake kas, against the real kube-apiserver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, WorkerSpec
from agent_runtime.transport.channel import ChannelSettings, KasTransport
from agent_runtime.worker import Worker
from tests.integration.runtime.fake_kas import FakeKas


@pytest.fixture
async def kube(admin_kubeconfig: Path) -> AsyncIterator[KubeAccess]:
    access = load_kube_access(str(admin_kubeconfig))
    yield access
    await access.close()


@pytest.fixture
async def kas() -> AsyncIterator[FakeKas]:
    server = FakeKas()
    await server.start()
    yield server
    await server.stop()


WorkerFactory = Callable[..., Worker]


@pytest.fixture
async def start_worker(kas: FakeKas, kube: KubeAccess) -> AsyncIterator[WorkerFactory]:
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    def start(
        token: str = "good-token",  # noqa: S107 - the fake kas's test token
        identity: ServiceAccountRef | None = None,
        transport: KasTransport = "h2",
    ) -> Worker:
        spec = WorkerSpec(id="test/agent", kas_address=kas.address, token=Secret(token), identity=identity)
        channel = ChannelSettings(transport=transport)
        worker = Worker(spec, WorkerEnvironment(kube=kube, policy=PERMISSIVE_POLICY, channel=channel))
        running.append((worker, asyncio.create_task(worker.run(), name="worker-under-test")))
        return worker

    yield start
    for worker, task in running:
        await worker.stop(1.0)
        await asyncio.wait_for(task, 10)


BOTH_TRANSPORTS = pytest.mark.parametrize("transport", ["h2", "grpc"])
"""For tests that also cover the grpc.aio path (GAO_KAS_TRANSPORT=grpc) and its boundary, which converts
grpc's errors, end of stream and compression into the runtime's own."""


async def eventually(predicate: Callable[[], bool], within: float = 15.0) -> None:
    """Poll `predicate` until true; bounded in time."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling snapshots is the point here
            await asyncio.sleep(0.05)
