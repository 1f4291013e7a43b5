"""Hostile kas against one agent's tunnels: request bytes held, frame size, requests served at once.

Each test fails on 8048859: (a) buffered up to 8 frames per tunnel, whatever their size; (b) accepted
frames up to 10 MiB; (c) opened up to `spec.tunnels.max` (500) streams, all of which kas may use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import pytest

from agent_runtime.kube import KubeAccess
from agent_runtime.policy import TunnelBudget
from agent_runtime.spec import ServiceAccountRef
from tests.integration.runtime.fake_kas import FakeKas, HttpResult, http, read_response
from tests.security.budget_support import (
    RecordingMetrics,
    agent,
    data_frame,
    end_request,
    eventually,
    kas,
    kube,
    open_request,
    request_header_frame,
    running_worker,
)

pytestmark = pytest.mark.integration
__all__ = ["agent", "kas", "kube"]  # fixtures

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]
_WATCH = {"watch": "1"}


async def test_unread_request_bodies_stay_within_the_agent_budget(
    kube: KubeAccess, namespace: str, agent: ServiceAccountRef
) -> None:
    """24 requests whose bodies the API server never reads, each pushed by kas (its own process) until it
    is pushed back: the worker grows by at most its budget (2 MiB here) plus a few hundred KiB per stuck
    request (measured: +71 MiB for 96 requests with the default 16 MiB budget). On 8048859 it grew by
    ~310 MiB here and kas was never pushed back: grpc's bandwidth probing let kas run ~25 MiB ahead on
    every stream, and each tunnel queued 8 more frames (of up to 10 MiB)."""
    requests = 24
    attack = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.security.hostile_kas_proc",
        f"--namespace={namespace}",
        f"--requests={requests}",
        f"--frame-bytes={250 * 1024}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert attack.stdin is not None
    assert attack.stdout is not None
    try:
        port = int((await asyncio.wait_for(attack.stdout.readline(), 30)).split()[1])
        budget = TunnelBudget(max_buffered_bytes=2 * MiB)
        async with running_worker(f"grpc://127.0.0.1:{port}", kube, budget, identity=agent) as worker:
            await eventually(lambda: worker.snapshot.tunnels_idle >= 2)
            before = _rss()
            pushed = (await asyncio.wait_for(attack.stdout.readline(), 180)).split()
            grown = _rss() - before
            attack.stdin.close()
            await asyncio.wait_for(attack.wait(), 30)
    finally:
        if attack.returncode is None:
            attack.kill()
            await attack.wait()
    assert grown < 48 * MiB, f"the worker grew by {grown / MiB:.0f} MiB"
    assert pushed[:2] == [b"PUSHED", str(requests).encode()], "kas was not pushed back on every request"


def _rss() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_oversized_frame_ends_that_call_only(
    kas: FakeKas, kube: KubeAccess, namespace: str, agent: ServiceAccountRef
) -> None:
    """A 1 MiB frame (the limit is 256 KiB) ends its Connect call with RESOURCE_EXHAUSTED; a watch of the
    same agent that was open keeps streaming, and new requests succeed."""
    metrics = RecordingMetrics()
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    async with running_worker(kas, kube, TunnelBudget(), identity=agent, metrics=metrics):
        assert (await http(kas, "GET", path)).status == 200
        watch = await open_request(kas, request_header_frame("GET", path, content_length=0, query=_WATCH))
        await end_request(watch)
        hostile = await open_request(kas, request_header_frame("POST", path, content_length=MiB, query={}))
        with contextlib.suppress(Exception):  # grpc raises ExecuteBatchError when the agent ended the call
            await hostile.send(data_frame(MiB))
        await eventually(lambda: metrics.connect_codes["RESOURCE_EXHAUSTED"] == 1)
        hostile.finish()
        after = await http(kas, "GET", path)
        assert after.status == 200
        assert after.error is None
        assert not watch.done.is_set()
        watch.finish()
    assert metrics.connect_codes["RESOURCE_EXHAUSTED"] == 1


async def test_requests_beyond_the_cap_wait_and_all_succeed(
    kas: FakeKas, kube: KubeAccess, namespace: str, agent: ServiceAccountRef
) -> None:
    """Cap 4, ten 2-second watches at once: the agent offers kas at most 4 streams, so at most 4 requests
    are served (and reach the API server) at once; the others wait for a stream and then succeed."""
    cap, path = 4, f"/api/v1/namespaces/{namespace}/configmaps"
    serving = peak = 0

    async def one() -> HttpResult:
        nonlocal serving, peak
        header = request_header_frame(
            "GET", path, content_length=0, query={"watch": "1", "timeoutSeconds": "2"}
        )
        tunnel = await open_request(kas, header, within=60)
        serving += 1
        peak = max(peak, serving)
        try:
            await end_request(tunnel)
            return await read_response(tunnel)
        finally:
            serving -= 1

    async with running_worker(kas, kube, TunnelBudget(max_inflight_requests=cap), identity=agent) as worker:
        await eventually(lambda: worker.snapshot.tunnels_idle >= 2)
        results = await asyncio.gather(*(one() for _ in range(10)))
        assert worker.snapshot.tunnels_active + worker.snapshot.tunnels_idle <= cap
    assert [(r.status, r.error) for r in results] == [(200, None)] * 10
    assert peak <= cap, f"{peak} requests were served at once"
