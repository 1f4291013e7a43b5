"""Floods and limits (issue 13 §4): 1000 concurrent requests to one agent, a 200 MB response, a client
that stops reading.

The agent's API server here is a loopback stand-in (aiohttp) that can send any number of bytes: the real
kube-apiserver cannot produce a 200 MB response without storing 200 MB. kas is the reference kas as a
process; the Runtime, the stand-in and the client run in this process, so its RSS is what the runtime
holds plus a constant (the client and the stand-in read and write fixed-size chunks).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from agent_runtime.kube import load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import Phase, WorkerSpec
from tests.e2e.harness import JOB_TOKEN, KasProcess, make_agents
from tests.reliability.figures import record, scale
from tests.reliability.resources import rss_mib
from tests.support.k8s_cluster import LocalCluster

MiB = 1024 * 1024
CHUNK = b"\0" * (64 * 1024)
BIG_MB = scale("big_response_mb", ci=200, recorded=200)
FLOOD = scale("flood_requests", ci=1000, recorded=1000)
RSS_GROWTH_LIMIT_MIB = 24
"""What a 200 MB response or a stalled reader may add to the process (measured: a few MiB)."""


async def _version(_: web.Request) -> web.Response:
    return web.json_response({"major": "1", "minor": "37", "gitVersion": "v1.37.2"})


async def _small(_: web.Request) -> web.Response:
    return web.json_response({"kind": "ConfigMapList", "apiVersion": "v1", "items": []})


async def _big(request: web.Request) -> web.StreamResponse:
    remaining = int(request.query["bytes"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    while remaining > 0:
        piece = CHUNK[: min(len(CHUNK), remaining)]
        await response.write(piece)
        remaining -= len(piece)
    await response.write_eof()
    return response


@dataclass
class Flood:
    kas: KasProcess
    agent_id: int
    runtime: Runtime
    worker_id: str
    session: aiohttp.ClientSession
    ssl_context: ssl.SSLContext

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.kas.proxy_port}{path}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer ci:{self.agent_id}:{JOB_TOKEN}"}

    async def small(self) -> tuple[int | None, float, str]:
        """GET /small through the tunnel: (status or None, seconds, detail)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(60):
                async with self.session.get(
                    self.url("/small"), headers=self.headers, ssl=self.ssl_context
                ) as response:
                    body = await response.read()
                    return response.status, time.monotonic() - started, body[:120].decode(errors="replace")
        except (TimeoutError, aiohttp.ClientError) as err:
            return None, time.monotonic() - started, type(err).__name__


@pytest.fixture(scope="module")
async def flood(tmp_path_factory: pytest.TempPathFactory, k8s_cluster: LocalCluster) -> AsyncIterator[Flood]:
    del k8s_cluster  # only for the substrate's skip/fail rule; the agent's API server is the stand-in
    work = tmp_path_factory.mktemp("floods")
    app = web.Application()
    app.router.add_get("/version", _version)
    app.router.add_get("/small", _small)
    app.router.add_get("/big", _big)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = _kubeconfig(work / "upstream.kubeconfig", f"http://127.0.0.1:{port}")
    agents = make_agents(1)
    kas = KasProcess(work / "kas", agents)
    await asyncio.to_thread(kas.start)
    kube = await asyncio.to_thread(load_kube_access, str(kubeconfig))
    runtime = Runtime(
        kube, RuntimeSettings(observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY)
    )
    await runtime.start()
    spec = WorkerSpec(id="flood/agent", kas_address=kas.agent_url, token=Secret(agents[0].token))
    runtime.apply(spec)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            context = ssl.create_default_context(cafile=str(kas.ca_file))
            state = Flood(kas, agents[0].id, runtime, spec.id, session, context)
            async with asyncio.timeout(60):
                while (await state.small())[0] != 200:  # noqa: ASYNC110 - retrying a request, bounded
                    await asyncio.sleep(0.2)
            yield state
    finally:
        async with asyncio.timeout(60):
            await runtime.stop(2.0)
        await kube.close()
        await asyncio.to_thread(kas.stop)
        await runner.cleanup()


def _kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "upstream", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "stand-in-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "upstream", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.asynccontextmanager
async def _peak_rss() -> AsyncIterator[list[float]]:
    """Sample RSS every 50 ms while the block runs; the list holds [baseline, peak]."""
    figures = [rss_mib(), rss_mib()]

    async def sample() -> None:
        while True:
            figures[1] = max(figures[1], rss_mib())
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample(), name="rss-sampler")
    try:
        yield figures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        figures[1] = max(figures[1], rss_mib())


async def _read_big(flood: Flood, size: int, stall: float = 0.0, stalled: asyncio.Event | None = None) -> int:
    """GET /big through the tunnel; after the header, stop reading for `stall` seconds; bytes read."""
    async with flood.session.get(
        flood.url(f"/big?bytes={size}"), headers=flood.headers, ssl=flood.ssl_context
    ) as response:
        assert response.status == 200
        if stalled is not None:
            stalled.set()
        await asyncio.sleep(stall)
        received = 0
        async for piece in response.content.iter_chunked(256 * 1024):
            received += len(piece)
        return received


async def test_large_response_streams_in_bounded_memory(flood: Flood) -> None:
    size = BIG_MB * 1000 * 1000
    for _ in range(2):  # warm-up: pools, buffers and allocator arenas reach their working size
        assert await _read_big(flood, 16 * MiB) == 16 * MiB
    started = time.monotonic()
    async with _peak_rss() as rss:
        received = await _read_big(flood, size)
    seconds = time.monotonic() - started
    growth = rss[1] - rss[0]
    record(
        "200 MB response",
        bytes=received,
        seconds=seconds,
        mb_per_s=received / 1e6 / seconds,
        rss_before_mib=rss[0],
        rss_growth_mib=growth,
    )
    assert received == size
    assert growth <= RSS_GROWTH_LIMIT_MIB


async def test_a_client_that_stops_reading_stalls_nobody_else(flood: Flood) -> None:
    stalled = asyncio.Event()
    size = 64 * MiB
    async with _peak_rss() as rss:
        slow = asyncio.create_task(_read_big(flood, size, stall=6.0, stalled=stalled), name="stalled-client")
        await asyncio.wait_for(stalled.wait(), 30)
        await asyncio.sleep(1.0)  # let the pipe behind the stalled client fill up
        others = [await flood.small() for _ in range(20)]
        received = await asyncio.wait_for(slow, 120)
    latencies = [s for _, s, _ in others]
    record(
        "stalled reader",
        other_requests=len(others),
        other_failed=sum(st != 200 for st, _, _ in others),
        other_p50_ms=statistics.median(latencies) * 1000,
        other_max_ms=max(latencies) * 1000,
        stalled_then_read_bytes=received,
        rss_growth_mib=rss[1] - rss[0],
    )
    assert [st for st, _, _ in others] == [200] * len(others), others
    assert received == size
    assert rss[1] - rss[0] <= RSS_GROWTH_LIMIT_MIB


async def test_thousand_concurrent_requests_to_one_agent(flood: Flood) -> None:
    """Above the agent's 200 in-flight requests (TunnelBudget) and 500 tunnels: they queue at kas or
    fail with a Status; none hangs, the process survives, and the agent serves afterwards."""
    peak = 0

    async def watch_tunnels() -> None:
        nonlocal peak
        while True:
            snapshot = flood.runtime.snapshot(flood.worker_id)
            if snapshot is not None:
                peak = max(peak, snapshot.tunnels_active + snapshot.tunnels_idle)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_tunnels(), name="tunnel-peak")
    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(*(flood.small() for _ in range(FLOOD)))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    seconds = time.monotonic() - started
    ok = sum(st == 200 for st, _, _ in outcomes)
    clean = [
        d for st, _, d in outcomes if st is not None and st >= 500 and '"kind":"Status"' in d.replace(" ", "")
    ]
    unclean = [(st, d) for st, _, d in outcomes if st != 200 and not (st is not None and st >= 500)]
    after = await flood.small()
    snapshot = flood.runtime.snapshot(flood.worker_id)
    record(
        "1000 concurrent requests",
        requests=FLOOD,
        ok=ok,
        clean_errors=len(clean),
        unclean=len(unclean),
        seconds=seconds,
        slowest_s=max(s for _, s, _ in outcomes),
        peak_tunnels=peak,
        after=after[0],
    )
    assert not unclean, unclean[:5]
    assert ok + len(clean) == FLOOD
    assert after[0] == 200
    assert snapshot is not None
    assert snapshot.phase is Phase.CONNECTED
