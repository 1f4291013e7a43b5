"""A kas that stops gracefully (SIGTERM: its streams end with OK) must not leave the agent `Connected`.

Found by tests/reliability (issue 13): after a graceful stop the worker keeps phase Connected with no
tunnel and no error for minutes, so `kubectl get gla` says Connected while nothing can reach the
cluster (after a SIGKILL it reads Degraded/KasUnreachable within seconds). Every call waits for the
channel (wait_for_ready) and ends without an error to report; the worker now hears of every failed
connection to kas (the own HTTP/2 channel's dial reports; with GAO_KAS_TRANSPORT=grpc, the channel's
state, transport/grpc_channel.watch_channel).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import Phase, WorkerSpec
from tests.e2e.harness import KasProcess, make_agents
from tests.integration.system.conftest import connected, kube, wait_for  # noqa: F401 - kube is a fixture
from tests.reliability.figures import record

WITHIN_S = 30.0


@pytest.fixture
async def runtime(kube: KubeAccess) -> AsyncIterator[Runtime]:  # noqa: F811 - kube is the imported fixture
    rt = Runtime(kube, RuntimeSettings(observability_address=None, stop_grace=1.0, policy=PERMISSIVE_POLICY))
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(30):
            await rt.stop(1.0)


async def test_a_gracefully_stopped_kas_is_not_connected(runtime: Runtime, tmp_path: Path) -> None:
    agent = make_agents(1)[0]
    kas = KasProcess(tmp_path / "kas", [agent])
    await asyncio.to_thread(kas.start)
    try:
        spec = WorkerSpec(id="graceful/agent", kas_address=kas.agent_url, token=Secret(agent.token))
        runtime.apply(spec)
        await wait_for(runtime, spec.id, connected)
        await asyncio.to_thread(kas.stop)  # SIGTERM
        snapshot = runtime.snapshot(spec.id)
        async with asyncio.timeout(WITHIN_S + 5):
            for _ in range(int(WITHIN_S * 10)):
                snapshot = runtime.snapshot(spec.id)
                if snapshot is not None and snapshot.phase is not Phase.CONNECTED:
                    break
                await asyncio.sleep(0.1)
    finally:
        await asyncio.to_thread(kas.stop)
    assert snapshot is not None
    record(
        "kas stopped gracefully",
        phase_after_s=f"{snapshot.phase.value} after {WITHIN_S:.0f}s",
        tunnels=f"{snapshot.tunnels_idle} idle/{snapshot.tunnels_active} active",
        last_error=snapshot.last_error,
    )
    assert snapshot.phase is not Phase.CONNECTED
