"""AuthGate: after kas rejected the credentials every module waits out one backoff delay (no storm of
rejected calls), a new token opens it at once, and acceptance starts the backoff over."""

from __future__ import annotations

import asyncio

import pytest

from agent_runtime.auth_gate import AuthGate
from agent_runtime.backoff import BackoffPolicy

POLICY = BackoffPolicy(initial=10.0, cap=40.0, factor=2.0, jitter=0.0, reset_after=1000.0)


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_a_rejection_closes_the_gate_for_one_delay(clock: ManualClock) -> None:
    gate = AuthGate(POLICY, clock=clock)
    assert gate.is_open
    gate.report_rejected()
    assert not gate.is_open
    clock.t = 9.999
    assert not gate.is_open
    clock.t = 10.0
    assert gate.is_open


def test_rejections_while_closed_do_not_extend_it_and_later_ones_back_off_more(clock: ManualClock) -> None:
    gate = AuthGate(POLICY, clock=clock)
    gate.report_rejected()
    clock.t = 5.0
    gate.report_rejected()  # another module's call, rejected in the same window
    clock.t = 10.0
    assert gate.is_open
    gate.report_rejected()  # the next attempt: twice the delay
    clock.t = 29.999
    assert not gate.is_open
    clock.t = 30.0
    assert gate.is_open


def test_acceptance_starts_the_backoff_over(clock: ManualClock) -> None:
    gate = AuthGate(POLICY, clock=clock)
    gate.report_rejected()
    clock.t = 10.0
    gate.report_accepted()
    gate.report_rejected()
    clock.t = 20.0
    assert gate.is_open  # 10 s again, not 20


async def test_a_new_token_opens_the_gate_and_wakes_the_waiters(clock: ManualClock) -> None:
    gate = AuthGate(POLICY, clock=clock)
    gate.report_rejected()
    waiters = [asyncio.create_task(gate.wait_open(), name=f"waiter-{n}") for n in range(3)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    gate.reopen()
    async with asyncio.timeout(1):
        await asyncio.gather(*waiters)
    assert gate.is_open
    gate.report_rejected()  # the backoff started over too
    clock.t = 10.0
    assert gate.is_open


async def test_waiters_wait_for_the_clock_not_just_for_a_timer(clock: ManualClock) -> None:
    """wait_open checks the gate again after each timer: a timer firing early is no reason to call kas."""
    gate = AuthGate(
        BackoffPolicy(initial=0.05, cap=0.05, factor=1.0, jitter=0.0, reset_after=1.0), clock=clock
    )
    gate.report_rejected()
    waiter = asyncio.create_task(gate.wait_open(), name="waiter")
    await asyncio.sleep(0.2)  # several 0.05 s timers, but the clock still says closed
    assert not waiter.done()
    clock.t = 0.05
    async with asyncio.timeout(1):
        await waiter


async def test_a_waiter_returns_when_the_delay_ends() -> None:
    gate = AuthGate(BackoffPolicy(initial=0.1, cap=0.1, factor=1.0, jitter=0.0, reset_after=1.0))
    gate.report_rejected()
    assert not gate.is_open
    async with asyncio.timeout(2):
        await gate.wait_open()
    assert gate.is_open
