"""Network faults between a worker and kas (issue 13 §1), injected by tests/support/fault_proxy.py.

The runtime's keepalive is shortened (ChannelSettings through RuntimeSettings.channel: a ping after 3 s
of silence, dead after 1 s without its ack: one keepalive period is 4 s), kas lets it ping that often. A
dead path must be noticed by the keepalive and the connection replaced within 2 periods; requests in
flight end with a clean error (a Kubernetes Status) or a cut stream, never hang; requests afterwards
succeed. kas's own keepalive (1 s here, with its fixed 20 s ack timeout) is what clears kas's side of a
black-holed connection.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.transport import ChannelSettings
from tests.integration.system.conftest import Certs, certs, kube  # noqa: F401 - fixtures
from tests.reliability.chain import Chain, fault_chain, watch_end
from tests.reliability.figures import record

KEEPALIVE = ChannelSettings(keepalive_time_ms=3000, keepalive_timeout_ms=1000)
PERIOD_S = (KEEPALIVE.keepalive_time_ms + KEEPALIVE.keepalive_timeout_ms) / 1000
KAS = {"agent": {"keepalive_time": 1.0, "keepalive_min_ping_interval": 1.0}}
AFTER_RECOVERY = 20
"""Requests sent once both sides recovered: every one must succeed."""


@pytest.fixture
async def runtime(kube: KubeAccess) -> AsyncIterator[Runtime]:  # noqa: F811 - kube is the imported fixture
    settings = RuntimeSettings(
        observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY, channel=KEEPALIVE
    )
    rt = Runtime(kube, settings)
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(30):
            await rt.stop(2.0)


async def _until(check: Callable[[], bool], within: float) -> float:
    """Seconds until `check()` holds; fails after `within`."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling plain counters, bounded by the timeout
            await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _all_succeed(chain: Chain, count: int) -> int:
    """Send `count` requests one after another; returns how many failed (must be 0)."""
    outcomes = [await chain.get() for _ in range(count)]
    return sum(1 for o in outcomes if not o.ok)


async def test_latency_and_jitter(runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str) -> None:  # noqa: F811
    """20 ms ± 20 ms on every chunk each way: every request succeeds, only slower."""
    async with fault_chain(runtime, certs, tmp_path / "kas", namespace, kas_overrides=KAS) as chain:
        base = [await chain.get() for _ in range(20)]
        chain.proxy.latency, chain.proxy.jitter = 0.02, 0.02
        delayed = [await chain.get() for _ in range(20)]
        watch = await chain.open_watch()
        watch.close()
    assert all(o.ok for o in base + delayed), [o.detail for o in base + delayed if not o.ok]
    p50 = statistics.median(o.ended - o.started for o in base)
    p50_delayed = statistics.median(o.ended - o.started for o in delayed)
    assert p50_delayed > p50  # the delay was really on the path
    record("latency+jitter", requests=40, failed=0, p50_ms=p50 * 1000, p50_delayed_ms=p50_delayed * 1000)


async def test_black_hole(runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str) -> None:  # noqa: F811
    """Bytes dropped both ways, no FIN, no RST: the worker's keepalive notices and redials."""
    async with fault_chain(runtime, certs, tmp_path / "kas", namespace, kas_overrides=KAS) as chain:
        watch = await chain.open_watch()
        before = chain.proxy.accepted
        chain.proxy.black_hole()
        into_the_hole = asyncio.create_task(chain.get(), name="request-into-the-black-hole")
        replaced = await _until(lambda: chain.proxy.accepted > before, within=60)
        await chain.wait_connected()
        ended = await watch_end(watch, within=60)
        in_flight = await into_the_hole
        failed = await _all_succeed(chain, AFTER_RECOVERY)
        dropped = chain.proxy.dropped_bytes
    assert replaced <= 2 * PERIOD_S, f"a new connection only after {replaced:.1f}s"
    assert ended != "hung"
    assert in_flight.ok or in_flight.clean_error, in_flight
    assert failed == 0
    record(
        "black hole",
        keepalive_period_s=PERIOD_S,
        replaced_after_s=replaced,
        watch_ended=ended,
        request_in_flight=in_flight.detail[:60],
        request_in_flight_ended_after_s=in_flight.ended - in_flight.started,
        after_recovery_failed=f"{failed}/{AFTER_RECOVERY}",
        bytes_dropped=dropped,
    )


@pytest.mark.parametrize("scheme", ["grpc", "ws"])
async def test_reset_mid_stream(
    runtime: Runtime,
    certs: Certs,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    namespace: str,
    scheme: str,
) -> None:
    """An RST both ways while a watch streams and requests flow: they end cleanly, the agent redials."""
    async with fault_chain(
        runtime, certs, tmp_path / "kas", namespace, scheme=scheme, kas_overrides=KAS
    ) as chain:
        watch = await chain.open_watch()
        before = chain.proxy.accepted
        flowing = [asyncio.create_task(chain.get(), name=f"request-{i}") for i in range(10)]
        await asyncio.sleep(0)
        reset = chain.proxy.reset()
        ended = await watch_end(watch, within=30)
        replaced = await _until(lambda: chain.proxy.accepted > before, within=60)
        outcomes = await asyncio.gather(*flowing)
        await chain.wait_connected()
        failed = await _all_succeed(chain, AFTER_RECOVERY)
    assert reset >= 1
    assert ended != "hung"
    unclean = [o for o in outcomes if not (o.ok or o.clean_error)]
    assert not unclean, unclean
    assert failed == 0
    record(
        f"reset mid-stream ({scheme})",
        connections_reset=reset,
        replaced_after_s=replaced,
        watch_ended=ended,
        in_flight_ok=sum(o.ok for o in outcomes),
        in_flight_clean_errors=sum(o.clean_error for o in outcomes),
        after_recovery_failed=f"{failed}/{AFTER_RECOVERY}",
    )


@pytest.mark.parametrize("scheme", ["grpc", "ws"])
async def test_half_open(
    runtime: Runtime,
    certs: Certs,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    namespace: str,
    scheme: str,
) -> None:
    """kas's side is gone (reset), the worker's side stays open and silent: only the keepalive can tell."""
    async with fault_chain(
        runtime, certs, tmp_path / "kas", namespace, scheme=scheme, kas_overrides=KAS
    ) as chain:
        watch = await chain.open_watch()
        before = chain.proxy.accepted
        chain.proxy.half_open()
        ended = await watch_end(watch, within=30)
        replaced = await _until(lambda: chain.proxy.accepted > before, within=60)
        # Sent while the agent has no tunnel at kas: it waits for one (tunnel_find_timeout) and succeeds.
        waiting = await chain.get()
        await chain.wait_connected()
        failed = await _all_succeed(chain, AFTER_RECOVERY)
    assert replaced <= 2 * PERIOD_S, f"a new connection only after {replaced:.1f}s"
    assert ended != "hung"
    assert waiting.ok or waiting.clean_error, waiting
    assert failed == 0
    record(
        f"half-open ({scheme})",
        keepalive_period_s=PERIOD_S,
        replaced_after_s=replaced,
        watch_ended=ended,
        request_meanwhile=waiting.status,
        after_recovery_failed=f"{failed}/{AFTER_RECOVERY}",
    )
