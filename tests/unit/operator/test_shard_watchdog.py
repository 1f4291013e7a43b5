"""FenceWatchdog: when the event loop is starved past the deadline with workers still running, its thread
ends the process (here: records the exit) without the loop; a replica whose workers all stopped, or that
keeps renewing, is left alone."""

from __future__ import annotations

import asyncio
import threading
import time

from prometheus_client import CollectorRegistry

from agent_operator.sharding.leases import MEMBER, LeaseView
from agent_operator.sharding.members import FENCE_FRACTION, Members
from agent_operator.sharding.metrics import ShardMetrics
from agent_operator.sharding.watchdog import EXIT_CODE, EXIT_FRACTION, POLL_S, FenceWatchdog

DURATION = 1.0


class Exits:
    """Records the exit instead of exiting, from whichever thread calls it."""

    def __init__(self) -> None:
        self.codes: list[tuple[int, float]] = []
        self.event = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append((code, time.monotonic()))
        self.event.set()


async def test_a_starved_loop_does_not_keep_the_process_past_the_deadline() -> None:
    exits = Exits()
    watchdog = FenceWatchdog(DURATION, exit_process=exits)
    renewed = time.monotonic()
    watchdog.renewed(renewed)
    watchdog.start()
    try:
        time.sleep(DURATION * 1.5)  # noqa: ASYNC251 - the loop blocked on purpose: only the thread acts
        assert exits.codes, "the watchdog did not end the process"
        code, at = exits.codes[0]
        assert code == EXIT_CODE
        assert DURATION * EXIT_FRACTION <= at - renewed <= DURATION * EXIT_FRACTION + POLL_S + 0.1
    finally:
        watchdog.stop()


async def test_stood_down_or_renewed_in_time_the_process_stays() -> None:
    exits = Exits()
    watchdog = FenceWatchdog(DURATION, exit_process=exits)
    watchdog.renewed(time.monotonic())
    watchdog.start()
    try:
        for _ in range(4):  # renewals every half duration: the deadline moves on each time
            await asyncio.sleep(DURATION / 2)
            watchdog.renewed(time.monotonic())
        watchdog.stood_down()  # every worker stopped: nothing left to guard
        await asyncio.sleep(DURATION * 1.5)
        assert not exits.codes
    finally:
        watchdog.stop()


class DownLeases:
    """The API server refuses every renewal after the join."""

    me = "a"
    group = "g"

    async def join(self) -> bool:
        return True

    async def renew(self) -> bool:
        return False

    async def member_version(self, lease: str) -> str | None:
        return None

    async def delete_member(self, lease: str, version: str) -> None:
        return None


async def _fenced_members(on_fence_blocks_for: float) -> Exits:
    """Run Members whose renewals fail from the start, with a fence that blocks the loop that long."""
    exits = Exits()
    fenced = asyncio.Event()

    async def on_fence() -> None:
        time.sleep(on_fence_blocks_for)  # noqa: ASYNC251 - a thousand workers stopping on a starved loop
        fenced.set()

    members = Members(
        DownLeases(),
        DURATION,
        ShardMetrics(CollectorRegistry()),
        on_change=lambda: None,
        on_fence=on_fence,
        watchdog=FenceWatchdog(DURATION, exit_process=exits),
    )
    members.observe(LeaseView("g-member-b", MEMBER, "b", "1", DURATION, ""))
    members.synced()
    task = asyncio.create_task(members.run(), name="members")
    try:
        await asyncio.wait_for(fenced.wait(), DURATION * 3)
        await asyncio.sleep(DURATION)  # long past the deadline
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return exits


async def test_members_whose_fence_cannot_finish_in_time_exit() -> None:
    exits = await _fenced_members(on_fence_blocks_for=DURATION)
    assert [code for code, _ in exits.codes] == [EXIT_CODE]


async def test_members_whose_fence_finishes_in_time_stay() -> None:
    room = DURATION * (EXIT_FRACTION - FENCE_FRACTION)
    exits = await _fenced_members(on_fence_blocks_for=room / 4)
    assert not exits.codes
