"""The tunnel pool algorithm of PROTOCOL.md §8, driven by fake attempts and a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from agent_runtime.backoff import BackoffPolicy
from agent_runtime.modules.reverse_tunnel.pool import Outcome, PoolSettings, Slot, TunnelPool

FAST = BackoffPolicy(initial=0.001, cap=0.001, factor=1.0, jitter=0.0, reset_after=1.0)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


class Harness:
    """Each attempt parks until the test ends it; the test sees every running attempt by slot number."""

    def __init__(self, **overrides: object) -> None:
        settings = {"min_idle": 2, "max": 500, "scale_up_step": 10, "max_idle_s": 60.0, "backoff": FAST}
        settings.update(overrides)
        self.clock = FakeClock()
        self.running: dict[int, tuple[Slot, asyncio.Future[Outcome]]] = {}
        self.attempts = 0
        self.reports: list[tuple[int, int]] = []
        self.pool = TunnelPool(
            self._attempt,
            PoolSettings(**settings),  # type: ignore[arg-type]
            clock=self.clock,
            report=lambda idle, active: self.reports.append((idle, active)),
        )

    async def _attempt(self, slot: Slot) -> Outcome:
        self.attempts += 1
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.running[slot.number] = (slot, done)
        try:
            return await done
        finally:
            self.running.pop(slot.number, None)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        for _ in range(20):
            await asyncio.sleep(0)

    def end(self, number: int, outcome: Outcome = Outcome.DONE) -> None:
        self.running[number][1].set_result(outcome)


@pytest.fixture
async def harness() -> object:
    h = Harness()
    task = asyncio.create_task(h.pool.run(), name="pool-under-test")
    await h.settle()
    yield h
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_starts_min_idle(harness: Harness) -> None:
    assert sorted(harness.running) == [1, 2]
    assert harness.pool.total == 2


async def test_scale_up_by_step_when_idle_drops_below_minimum(harness: Harness) -> None:
    harness.running[1][0].activate()
    await harness.settle()
    assert harness.pool.total == 12
    assert harness.pool.active == 1
    harness.running[2][0].activate()  # 11 idle left: no further growth
    await harness.settle()
    assert harness.pool.total == 12


async def test_active_slot_reconnects_and_is_not_retired(harness: Harness) -> None:
    harness.running[1][0].activate()
    await harness.settle()
    harness.end(1)
    await harness.settle()
    assert 1 in harness.running  # next attempt started at once
    assert harness.pool.active == 0


async def test_idle_extras_retire_only_after_max_idle(harness: Harness) -> None:
    harness.running[1][0].activate()
    await harness.settle()
    harness.end(1)  # slot 1 was active just now
    await harness.settle()
    assert harness.pool.total == 12
    # a never-active extra whose idle stream ends is retired (more than 2 idle)
    harness.end(5)
    await harness.settle()
    assert 5 not in harness.running
    assert harness.pool.total == 11
    # slot 1 was active recently: its idle rotation does not retire it ...
    harness.end(1)
    await harness.settle()
    assert 1 in harness.running
    # ... until more than max_idle has passed
    harness.clock.t += 61
    harness.end(1)
    await harness.settle()
    assert 1 not in harness.running
    assert harness.pool.total == 10


async def test_never_below_min_idle(harness: Harness) -> None:
    harness.end(1)
    harness.end(2)
    await harness.settle()
    assert harness.pool.total == 2
    assert sorted(harness.running) == [1, 2]


async def test_max_caps_total() -> None:
    h = Harness(max=5, scale_up_step=10)
    task = asyncio.create_task(h.pool.run(), name="pool-under-test")
    try:
        await h.settle()
        h.running[1][0].activate()
        await h.settle()
        assert h.pool.total == 5
        for n in (2, 3, 4, 5):
            h.running[n][0].activate()
        await h.settle()
        assert h.pool.total == 5
        assert h.pool.active == 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_error_backs_off_then_retries(harness: Harness) -> None:
    before = harness.attempts
    harness.end(1, Outcome.ERROR)
    await harness.settle()
    assert harness.attempts == before + 1
    assert 1 in harness.running


async def test_drain_ends_idle_and_waits_for_active(harness: Harness) -> None:
    harness.running[1][0].activate()
    await harness.settle()
    harness.pool.drain()
    await harness.settle()
    assert list(harness.running) == [1]  # only the active one is left
    harness.end(1)
    await harness.settle()
    assert harness.pool.total == 0


async def test_recycle_idle_reopens_idle_streams_only(harness: Harness) -> None:
    harness.running[1][0].activate()
    await harness.settle()
    before = harness.attempts
    harness.pool.recycle_idle()
    await harness.settle()
    assert 1 in harness.running
    assert harness.running[1][0].active
    assert harness.attempts > before  # idle slots started fresh attempts
    # never-active extras whose stream ended idle retire (§8); the minimum stays
    assert harness.pool.total == 3
    assert harness.pool.idle == 2


async def test_reports_established_idle_and_active(harness: Harness) -> None:
    harness.running[1][0].set_established(True)
    harness.running[2][0].set_established(True)
    assert harness.reports[-1] == (2, 0)
    harness.running[1][0].activate()
    await harness.settle()
    assert harness.reports[-1] == (1, 1)
