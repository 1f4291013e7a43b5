"""Hostile kas against one agent's tunnels: request bytes held, frame size, requests served at once.

Each test fails on 8048859: (a) buffered up to 8 frames per tunnel, whatever their size; (b) accepted
frames up to 10 MiB; (c) opened up to `spec.tunnels.max` (500) streams, all of which kas may use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from agent_runtime.kube import KubeAccess
from agent_runtime.policy import TunnelBudget
from tests.integration.runtime.fake_kas import FakeKas, HttpResult, http, read_response
from tests.security.budget_support import (
    RecordingMetrics,
    data_frame,
    drain_responses,
    end_request,
    eventually,
    kas,
    kube,
    open_request,
    push_until_blocked,
    request_header_frame,
    running_worker,
)

pytestmark = pytest.mark.integration
__all__ = ["kas", "kube"]  # fixtures

MiB = 1024 * 1024
_WATCH = {"watch": "1"}


def _watch_with_endless_body(namespace: str) -> bytes:
    """A watch (the API server answers and streams, never reading a body) that declares a 1 GiB body."""
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    return request_header_frame("GET", path, content_length=1 << 30, query={"watch": "true"})


async def test_unread_request_bodies_stay_within_the_agent_budget(
    kas: FakeKas, kube: KubeAccess, namespace: str
) -> None:
    """24 requests whose bodies the API server never reads, each pushed until kas is pushed back: the
    process grows by the budget (2 MiB here) plus a few hundred KiB per tunnel (one frame being read, one
    being written upstream, 64 KiB of HTTP/2 window). On 8048859 it grew by ~540 MiB: grpc's bandwidth
    probing let kas run ~25 MiB ahead on every stream, and each tunnel queued 8 frames of up to 10 MiB."""
    requests, frame = 24, data_frame(250 * 1024)
    async with running_worker(kas, kube, TunnelBudget(max_buffered_bytes=2 * MiB)) as worker:
        await eventually(lambda: worker.snapshot.tunnels_idle >= 2)
        before = _rss()
        tunnels, readers, stuck = [], [], []
        try:
            for _ in range(requests):
                tunnel = await open_request(kas, _watch_with_endless_body(namespace))
                tunnels.append(tunnel)
                readers.append(asyncio.create_task(drain_responses(tunnel), name="hostile-kas-reader"))
            pushed = await asyncio.gather(
                *(push_until_blocked(t, frame, limit=100, stall=1.5) for t in tunnels)
            )
            stuck = [write for _, write in pushed if write is not None]
            grown = _rss() - before
        finally:
            for tunnel in tunnels:
                tunnel.cancel()
            for task in [*stuck, *readers]:
                task.cancel()
            await asyncio.gather(*stuck, *readers, return_exceptions=True)
    assert grown < 128 * MiB, f"the process grew by {grown / MiB:.0f} MiB"
    assert len(stuck) == requests, "kas was not pushed back on every request"


def _rss() -> int:
    """This process's resident memory now (the worker and the kas double share it)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_oversized_frame_ends_that_call_only(kas: FakeKas, kube: KubeAccess, namespace: str) -> None:
    """A 1 MiB frame (the limit is 256 KiB) ends its Connect call with RESOURCE_EXHAUSTED; a watch of the
    same agent that was open keeps streaming, and new requests succeed."""
    metrics = RecordingMetrics()
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    async with running_worker(kas, kube, TunnelBudget(), metrics=metrics):
        assert (await http(kas, "GET", path)).status == 200
        watch = await open_request(kas, request_header_frame("GET", path, content_length=0, query=_WATCH))
        await end_request(watch)
        hostile = await open_request(kas, request_header_frame("POST", path, content_length=MiB, query={}))
        # The agent's response header first: a write racing with grpc's refusal makes grpc.aio report the
        # call as INTERNAL "Internal error from Core" instead (the call ends all the same).
        header = await hostile.recv()
        assert header is not None
        assert header.WhichOneof("msg") == "header"
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
    kas: FakeKas, kube: KubeAccess, namespace: str
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

    async with running_worker(kas, kube, TunnelBudget(max_inflight_requests=cap)) as worker:
        await eventually(lambda: worker.snapshot.tunnels_idle >= 2)
        results = await asyncio.gather(*(one() for _ in range(10)))
        assert worker.snapshot.tunnels_active + worker.snapshot.tunnels_idle <= cap
    assert [(r.status, r.error) for r in results] == [(200, None)] * 10
    assert peak <= cap, f"{peak} requests were served at once"
