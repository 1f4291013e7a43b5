"""kas SIGKILLed and restarted while requests flow through 10 agents of one Runtime (issue 13 §2).

The reference kas runs as a process (tests/e2e/harness.py KasProcess); the Runtime runs in this process,
so this process's RSS, descriptors and asyncio tasks are the runtime's (plus pytest's, constant). Every
cycle: SIGKILL, restart on the same ports, then every agent must serve a request again; requests an agent
gets after it served its first one must all succeed. Between cycles the traffic pauses, and RSS, open
descriptors and tasks are sampled: they must stay flat (CI: 3 cycles; recorded: RELIABILITY_LONG=1, 20).
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import WorkerSpec
from tests.e2e.harness import JOB_TOKEN, KasAgent, KasProcess, make_agents
from tests.integration.system.conftest import kube  # noqa: F401 - fixture
from tests.reliability.figures import record, scale
from tests.reliability.resources import Usage, sample

AGENTS = 10
CYCLES = scale("kas_cycles", ci=3, recorded=20)
RECOVERY_DEADLINE_S = 90.0
"""Every agent must serve again within this long after kas is back (tunnel backoff tops out at 20 s)."""


@dataclasses.dataclass
class Served:
    agent: int
    started: float
    ended: float
    ok: bool
    detail: str


@dataclasses.dataclass
class Traffic:
    """One request loop per agent through kas's proxy; pausable; every outcome kept."""

    kas: KasProcess
    namespace: str
    session: aiohttp.ClientSession
    ssl_context: ssl.SSLContext
    results: list[Served] = dataclasses.field(default_factory=list)
    running: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    stopped: bool = False

    async def loop(self, agent: KasAgent) -> None:
        url = f"https://127.0.0.1:{self.kas.proxy_port}/api/v1/namespaces/{self.namespace}"
        headers = {"Authorization": f"Bearer ci:{agent.id}:{JOB_TOKEN}"}
        while not self.stopped:
            await self.running.wait()
            started = time.monotonic()
            try:
                async with asyncio.timeout(30):
                    async with self.session.get(url, headers=headers, ssl=self.ssl_context) as response:
                        await response.read()
                        ok, detail = response.status == 200, str(response.status)
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                ok, detail = False, type(err).__name__
            self.results.append(Served(agent.id, started, time.monotonic(), ok, detail))
            await asyncio.sleep(0.05 if ok else 0.2)

    def first_success_after(self, agent: int, after: float) -> float | None:
        times = [r.ended for r in self.results if r.agent == agent and r.ok and r.started >= after]
        return min(times) if times else None


@pytest.fixture
async def runtime(kube: KubeAccess) -> AsyncIterator[Runtime]:  # noqa: F811 - kube is the imported fixture
    rt = Runtime(kube, RuntimeSettings(observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY))
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(60):
            await rt.stop(2.0)


def _sigkill(kas: KasProcess) -> None:
    proc = kas._proc  # the harness only stops kas politely; this scenario needs SIGKILL
    assert proc is not None
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


async def _recovered(traffic: Traffic, agents: list[KasAgent], since: float) -> float:
    """Seconds after `since` until every agent served a request started after it."""
    async with asyncio.timeout(RECOVERY_DEADLINE_S):
        while True:
            firsts = [traffic.first_success_after(a.id, since) for a in agents]
            if all(f is not None for f in firsts):
                return max(f for f in firsts if f is not None) - since
            await asyncio.sleep(0.1)


def _slope(values: list[float]) -> float:
    """Least-squares slope per cycle."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))


async def test_kas_kill_cycles(runtime: Runtime, tmp_path: Path, namespace: str) -> None:
    agents = make_agents(AGENTS)
    kas = KasProcess(tmp_path / "kas", agents)
    await asyncio.to_thread(kas.start)
    try:
        for agent in agents:
            runtime.apply(
                WorkerSpec(id=f"kill/{agent.name}", kas_address=kas.agent_url, token=Secret(agent.token))
            )
        context = ssl.create_default_context(cafile=str(kas.ca_file))
        async with aiohttp.ClientSession() as session:
            traffic = Traffic(kas, namespace, session, context)
            traffic.running.set()
            async with asyncio.TaskGroup() as tg:
                for agent in agents:
                    tg.create_task(traffic.loop(agent), name=f"traffic/{agent.name}")
                try:
                    await _recovered(traffic, agents, since=0.0)
                    usage, recoveries, lost = await _cycles(kas, traffic, agents)
                finally:
                    traffic.stopped = True
                    traffic.running.set()
    finally:
        await asyncio.to_thread(kas.stop)

    first, last = usage[0], usage[-1]
    rss_slope = _slope([u.rss_mib for u in usage])
    record(
        "kas kill cycles",
        agents=AGENTS,
        cycles=CYCLES,
        requests=len(traffic.results),
        lost_after_recovery=lost,
        recovery_max_s=max(recoveries),
        recovery_mean_s=sum(recoveries) / len(recoveries),
        usage_first=str(first),
        usage_last=str(last),
        rss_slope_mib_per_cycle=rss_slope,
        fds_slope=_slope([float(u.fds) for u in usage]),
        tasks_slope=_slope([float(u.tasks) for u in usage]),
    )
    assert lost == 0
    # Flat, not equal: tunnel pools may differ by a scale-up step between two samples.
    assert last.tasks <= first.tasks + 2 * AGENTS, usage
    assert last.fds <= first.fds + 2 * AGENTS, usage
    assert last.rss_mib <= first.rss_mib + 32, usage


async def _cycles(
    kas: KasProcess, traffic: Traffic, agents: list[KasAgent]
) -> tuple[list[Usage], list[float], int]:
    """Kill and restart kas CYCLES times; the usage after each cycle, recovery times, requests lost."""
    usage = [await _quiet_sample(traffic)]
    recoveries: list[float] = []
    lost = 0
    for _ in range(CYCLES):
        killed_at = time.monotonic()
        await asyncio.to_thread(_sigkill, kas)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(kas.start)
        up_at = time.monotonic()
        recoveries.append(await _recovered(traffic, agents, since=up_at))
        await asyncio.sleep(1.0)  # steady traffic after recovery: all of it must succeed
        lost += _lost_after_recovery(traffic, agents, since=up_at)
        usage.append(await _quiet_sample(traffic))
        assert killed_at < up_at
    return usage, recoveries, lost


def _lost_after_recovery(traffic: Traffic, agents: list[KasAgent], since: float) -> int:
    lost = 0
    for agent in agents:
        first = traffic.first_success_after(agent.id, since)
        assert first is not None
        lost += sum(1 for r in traffic.results if r.agent == agent.id and r.started >= first and not r.ok)
    return lost


async def _quiet_sample(traffic: Traffic) -> Usage:
    """Pause the traffic, let in-flight requests end, sample, resume."""
    traffic.running.clear()
    await asyncio.sleep(1.5)
    usage = sample()
    traffic.running.set()
    return usage
