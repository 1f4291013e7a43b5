"""The Runtime with real workers: reference kas over loopback gRPC, the real kube-apiserver, /metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent_runtime.constants import TUNNEL_ESTABLISHED_AFTER_S
from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, Phase, WorkerSpec
from kas.server import KasServer
from kas.testing import TestAgent, running_kas
from tests.integration.runtime_mgmt.conftest import eventually
from tests.support.ports import free_port
from tests.support.tcp import established_on

AGENT = TestAgent(id=4242, name="rt-agent", project_path="group/rt", token="rt-agent-token-" + "r" * 40)


@pytest.fixture
async def kas(tmp_path: Path) -> AsyncIterator[KasServer]:
    async with running_kas(tmp_path / "kas", [AGENT]) as server:
        yield server


@pytest.fixture
async def runtime(kube: KubeAccess) -> AsyncIterator[Runtime]:
    rt = Runtime(
        kube, RuntimeSettings(observability_address="127.0.0.1:0", stop_grace=1.0, policy=PERMISSIVE_POLICY)
    )
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(30):
            await rt.stop(1.0)


async def _status(runtime: Runtime, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{runtime.observability_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_workers_connect_and_a_broken_one_stays_isolated(runtime: Runtime, kas: KasServer) -> None:
    good = WorkerSpec(id="ns/good", kas_address=f"grpc://{kas.agent_address}", token=Secret(AGENT.token))
    broken = WorkerSpec(id="ns/broken", kas_address=f"grpc://127.0.0.1:{free_port()}", token=Secret("x" * 50))
    runtime.apply(broken)
    runtime.apply(good)
    await eventually(lambda: (s := runtime.snapshot("ns/good")) is not None and s.phase is Phase.CONNECTED)
    await eventually(
        lambda: (
            (s := runtime.snapshot("ns/broken")) is not None
            and s.last_error is not None
            and s.last_error.reason is ErrorReason.KAS_UNREACHABLE
        )
    )
    assert (await _status(runtime, "/readiness"))[0] == 503  # not every agent is connected
    _, metrics = await _status(runtime, "/metrics")
    assert 'agentk_connected{agent="ns/good"} 1.0' in metrics
    assert 'agentk_connected{agent="ns/broken"} 0.0' in metrics

    await runtime.remove("ns/broken")
    assert runtime.snapshot("ns/broken") is None
    assert (await _status(runtime, "/readiness"))[0] == 200
    _, metrics = await _status(runtime, "/metrics")
    assert 'agent="ns/broken"' not in metrics
    assert AGENT.token not in metrics


async def _pod_ids(kas: KasServer) -> set[int]:
    """The pod ids (AgentMeta connection ids) AGENT registered with kas: one per worker (§6.2)."""
    return {info.connection_id for info in await kas.tracker.connected(AGENT.id)}


async def test_token_rotation_reconnects_in_place(runtime: Runtime, kas: KasServer) -> None:
    """A new token is used by the same worker: it registers again under the pod id it had, where a
    restarted worker would draw a new one (kas keeps both registrations for their TTL)."""
    spec = WorkerSpec(id="ns/rotating", kas_address=f"grpc://{kas.agent_address}", token=Secret(AGENT.token))
    runtime.apply(spec)
    await eventually(lambda: (s := runtime.snapshot(spec.id)) is not None and s.registered)
    first = await _pod_ids(kas)
    assert len(first) == 1, first
    runtime.apply(dataclasses.replace(spec, token=Secret("revoked-" + "z" * 50)))
    await eventually(
        lambda: (
            (s := runtime.snapshot(spec.id)) is not None
            and s.last_error is not None
            and s.last_error.reason is ErrorReason.UNAUTHENTICATED
        ),
        within=30,
    )
    runtime.apply(spec)
    await eventually(
        lambda: (s := runtime.snapshot(spec.id)) is not None and s.phase is Phase.CONNECTED and s.registered,
        within=30,
    )
    assert await _pod_ids(kas) == first


async def test_each_worker_is_its_own_pod_and_reports_its_idle_tunnels(
    runtime: Runtime, kas: KasServer
) -> None:
    """Two workers of one agent in one process: kas sees two pods (pod_id is per worker, §6.2, so kas keeps
    both connections apart), and /metrics shows each one's idle tunnels (agentk_tunnels_idle)."""
    specs = [
        WorkerSpec(id=f"ns/twin-{n}", kas_address=f"grpc://{kas.agent_address}", token=Secret(AGENT.token))
        for n in (1, 2)
    ]
    for spec in specs:
        runtime.apply(spec)

    def serving(worker_id: str) -> bool:
        s = runtime.snapshot(worker_id)
        return s is not None and s.registered and s.tunnels_idle == 2

    for spec in specs:
        await eventually(functools.partial(serving, spec.id))
    assert len(await _pod_ids(kas)) == 2
    _, metrics = await _status(runtime, "/metrics")
    for spec in specs:
        assert f'agentk_tunnels_idle{{agent="{spec.id}"}} 2.0' in metrics


async def test_an_unreachable_kas_never_looks_connected(runtime: Runtime) -> None:
    """Calls wait for the channel (wait_for_ready): a call still waiting for it is no proof of anything."""
    spec = WorkerSpec(id="ns/nowhere", kas_address=f"grpc://127.0.0.1:{free_port()}", token=Secret("x" * 50))
    runtime.apply(spec)
    await eventually(
        lambda: (
            (s := runtime.snapshot("ns/nowhere")) is not None
            and s.last_error is not None
            and s.last_error.reason is ErrorReason.KAS_UNREACHABLE
        )
    )
    await asyncio.sleep(3 * TUNNEL_ESTABLISHED_AFTER_S)  # past the "alive this long" probes
    snapshot = runtime.snapshot("ns/nowhere")
    assert snapshot is not None
    assert snapshot.phase is Phase.CONNECTING, snapshot
    assert snapshot.connected_since is None


@pytest.mark.parametrize("connected_first", [True, False], ids=["connected", "just-applied"])
async def test_a_removed_worker_leaves_no_connection_at_kas(
    runtime: Runtime, kas: KasServer, connected_first: bool
) -> None:
    """A worker released to another replica (or deleted) closes its channel: kas must not keep seeing
    a connection of an agent that runs elsewhere, whether the worker had connected or was applied a
    moment before (a replica that pauses right after start-up)."""
    port = int(kas.agent_address.rsplit(":", 1)[1])
    before = established_on(port)
    spec = WorkerSpec(id="ns/released", kas_address=f"grpc://{kas.agent_address}", token=Secret(AGENT.token))
    runtime.apply(spec)
    if connected_first:
        await eventually(lambda: (s := runtime.snapshot(spec.id)) is not None and s.phase is Phase.CONNECTED)
        assert established_on(port) > before
    else:
        await asyncio.sleep(0.05)
    await runtime.remove(spec.id, 0.5)
    await eventually(lambda: established_on(port) == before)
