"""Tunnel pool edges that mutation testing found untested (docs/testing.md): when a slot backs off, what
drain and cancellation do to running attempts, and what an ended stream does to the reported counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent_runtime.backoff import BackoffPolicy
from agent_runtime.modules.reverse_tunnel.pool import Outcome, PoolSettings, Slot, TunnelPool
from tests.unit.runtime.test_pool import FakeClock, Harness

SLOW = BackoffPolicy(initial=60.0, cap=60.0, factor=1.0, jitter=0.0, reset_after=1.0)


async def _running(harness: Harness) -> AsyncIterator[tuple[Harness, asyncio.Task[None]]]:
    task = asyncio.create_task(harness.pool.run(), name="pool-under-test")
    await harness.settle()
    yield harness, task
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def slow() -> AsyncIterator[tuple[Harness, asyncio.Task[None]]]:
    """A pool whose backoff is a minute: an attempt that starts within the test started without one."""
    async for running in _running(Harness(backoff=SLOW)):
        yield running


async def test_only_an_error_backs_off(slow: tuple[Harness, asyncio.Task[None]]) -> None:
    harness, _ = slow
    before = harness.attempts
    harness.end(1, Outcome.DONE)  # kas ended an idle stream (max connection age): reopen at once
    await harness.settle()
    assert harness.attempts == before + 1
    harness.end(2, Outcome.ERROR)
    await harness.settle()
    assert harness.attempts == before + 1  # slot 2 waits for its backoff
    assert 2 not in harness.running


async def test_recycle_wakes_a_slot_from_its_backoff(slow: tuple[Harness, asyncio.Task[None]]) -> None:
    harness, _ = slow
    harness.end(2, Outcome.ERROR)
    await harness.settle()
    assert 2 not in harness.running
    harness.pool.recycle_idle()  # a new token: retrying now may work
    await harness.settle()
    assert 2 in harness.running


async def test_an_ended_stream_is_no_longer_counted_established(
    slow: tuple[Harness, asyncio.Task[None]],
) -> None:
    harness, _ = slow
    for number in (1, 2):
        harness.running[number][0].set_established(True)
    assert harness.reports[-1] == (2, 0)
    harness.end(1, Outcome.DONE)
    await harness.settle()
    assert harness.reports[-1] == (1, 0)


async def test_cancelling_the_pool_cancels_every_running_attempt(
    slow: tuple[Harness, asyncio.Task[None]],
) -> None:
    harness, task = slow
    harness.running[1][0].activate()
    await harness.settle()
    assert len(harness.running) == 12
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert harness.running == {}  # each attempt ended (and cleaned up) before the pool returned
    assert task.cancelled()


async def test_a_recycle_racing_the_pools_cancellation_still_ends_the_pool(
    slow: tuple[Harness, asyncio.Task[None]],
) -> None:
    """The attempt was cancelled by recycle_idle and the pool itself in the same tick: the slot must not
    take its attempt's cancellation for a recycle and start another attempt."""
    harness, task = slow
    harness.pool.recycle_idle()
    task.cancel()
    async with asyncio.timeout(5):
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert harness.pool.total == 0


async def test_a_drain_during_the_before_attempt_hook_starts_no_attempt() -> None:
    """The hook waits (the AuthGate after a rejected token); a drain meanwhile ends the slot instead."""
    gate = asyncio.Event()
    attempts: list[int] = []

    async def attempt(slot: Slot) -> Outcome:
        attempts.append(slot.number)
        return Outcome.DONE

    settings = PoolSettings(min_idle=1, max=5, scale_up_step=1, max_idle_s=60.0, backoff=SLOW)

    async def hook() -> None:
        await gate.wait()

    pool = TunnelPool(attempt, settings, clock=FakeClock(), report=lambda *_: None, before_attempt=hook)
    task = asyncio.create_task(pool.run(), name="gated-pool")
    await asyncio.sleep(0.01)
    pool.drain()
    gate.set()
    async with asyncio.timeout(5):
        await task
    assert attempts == []


async def test_the_pool_returns_only_after_cancelled_attempts_cleaned_up() -> None:
    """A real attempt awaits in its cleanup (the grpc call's cancellation): run() must not return while
    one is still cleaning up, or the worker closes the channel under it."""
    cleaned: list[int] = []

    async def attempt(slot: Slot) -> Outcome:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)
            cleaned.append(slot.number)
        return Outcome.DONE

    settings = PoolSettings(min_idle=2, max=5, scale_up_step=1, max_idle_s=60.0, backoff=SLOW)
    pool = TunnelPool(attempt, settings, clock=FakeClock(), report=lambda *_: None)
    task = asyncio.create_task(pool.run(), name="slow-cleanup-pool")
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sorted(cleaned) == [1, 2]


@pytest.fixture
async def fast() -> AsyncIterator[tuple[Harness, asyncio.Task[None]]]:
    async for running in _running(Harness()):
        yield running


async def test_the_pool_grows_only_when_fewer_than_min_idle_are_left(
    fast: tuple[Harness, asyncio.Task[None]],
) -> None:
    harness, _ = fast
    harness.running[1][0].activate()
    await harness.settle()
    assert harness.pool.total == 12
    for number in range(2, 11):  # 10 active, exactly min_idle (2) idle: enough
        harness.running[number][0].activate()
    await harness.settle()
    assert (harness.pool.total, harness.pool.idle) == (12, 2)
    harness.running[11][0].activate()  # 1 idle left: short
    await harness.settle()
    assert harness.pool.total == 22


async def test_an_extra_idle_for_exactly_max_idle_is_kept(fast: tuple[Harness, asyncio.Task[None]]) -> None:
    harness, _ = fast
    harness.running[1][0].activate()
    await harness.settle()
    harness.end(1)  # served a request: active just now
    await harness.settle()
    harness.clock.t += 60.0  # max_idle_s exactly: not "more than"
    harness.end(1)
    await harness.settle()
    assert 1 in harness.running
    harness.clock.t += 0.001
    harness.end(1)
    await harness.settle()
    assert 1 not in harness.running
