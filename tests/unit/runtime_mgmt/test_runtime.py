"""Runtime lifecycle with scripted workers: start/stop, readiness, a taken listen address."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import Phase, WorkerSnapshot, WorkerSpec
from tests.unit.runtime_mgmt.conftest import unreachable_kube, wait_until
from tests.unit.runtime_mgmt.workers import Factory


async def _readiness(port: int) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readiness") as r:
        return r.status


async def test_start_apply_ready_stop() -> None:
    factory = Factory()
    runtime = Runtime(
        unreachable_kube(),
        RuntimeSettings(observability_address="127.0.0.1:0", stop_grace=0.2),
        worker_factory=factory,
    )
    await runtime.start()
    port = runtime.observability_port
    assert port
    assert await _readiness(port) == 200  # no workers: nothing to wait for
    runtime.apply(WorkerSpec(id="ns/a", kas_address="grpc://127.0.0.1:1", token=Secret("t" * 50)))
    await wait_until(lambda: "ns/a" in factory.built and factory.latest("ns/a").running.is_set())
    factory.latest("ns/a").publish(WorkerSnapshot(id="ns/a", phase=Phase.CONNECTING))
    assert await _readiness(port) == 503
    factory.latest("ns/a").publish(WorkerSnapshot(id="ns/a", phase=Phase.CONNECTED))
    assert await _readiness(port) == 200
    async with asyncio.timeout(10):
        await runtime.stop()
    assert factory.latest("ns/a").stop_graces == [0.2]
    with pytest.raises(aiohttp.ClientConnectionError):
        await _readiness(port)


async def test_start_fails_when_the_listen_address_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runtime = Runtime(unreachable_kube(), RuntimeSettings(observability_address=f"127.0.0.1:{port}"))
        with pytest.raises(ExceptionGroup) as caught:
            await runtime.start()
        assert caught.group_contains(OSError)
