"""The per-tunnel inbox and the per-agent byte budget (reverse_tunnel/budget.py), without gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from agent_runtime.modules.reverse_tunnel.budget import ByteBudget, Inbox


async def _blocked(waiting: Coroutine[Any, Any, None]) -> bool:
    """True when `waiting` does not finish within a few loop turns."""
    task = asyncio.create_task(waiting, name="maybe-blocked")
    await asyncio.sleep(0.01)
    blocked = not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return blocked


async def test_inbox_full_in_bytes_stops_reading_until_the_handler_asks_again() -> None:
    budget = ByteBudget(1 << 20)
    inbox = Inbox(budget, limit=100)
    inbox.put(b"a" * 60, 60)
    assert inbox.has_room()
    inbox.put(b"b" * 60, 60)
    assert not inbox.has_room()
    assert await _blocked(inbox.wait_room())
    assert await inbox.get() == b"a" * 60
    assert budget.used == 120  # the handler is still sending "a" upstream
    assert not inbox.has_room()
    assert await inbox.get() == b"b" * 60  # done with "a"
    assert budget.used == 60
    await asyncio.wait_for(inbox.wait_room(), 1)


async def test_agent_budget_is_shared_by_every_tunnel() -> None:
    budget = ByteBudget(100)
    first, second = Inbox(budget, limit=1000), Inbox(budget, limit=1000)
    first.put(b"x" * 70, 70)
    first.put(None, 0)
    second.put(b"y" * 40, 40)
    assert budget.used == 110
    assert not first.has_room()
    assert not second.has_room()
    assert await _blocked(second.wait_room())
    waiting = asyncio.create_task(second.wait_room(), name="wait-room")
    await asyncio.sleep(0)
    assert await first.get() == b"x" * 70
    assert await first.get() is None
    await asyncio.wait_for(waiting, 1)
    assert budget.used == 40
    assert budget.peak == 110


async def test_clear_gives_everything_back_and_the_end_stays() -> None:
    budget = ByteBudget(100)
    inbox = Inbox(budget)
    inbox.put(b"w" * 30, 30)
    inbox.put(b"x" * 50, 50)
    inbox.put(None, 0)
    assert await inbox.get() == b"w" * 30
    inbox.clear()
    assert budget.used == 0
    assert inbox.queued_bytes == 0
    assert await asyncio.wait_for(inbox.get(), 1) is None
    assert await asyncio.wait_for(inbox.get(), 1) is None


async def test_end_marker_repeats() -> None:
    inbox = Inbox(ByteBudget(100))
    inbox.put(b"m", 10)
    inbox.put(None, 0)
    assert await inbox.get() == b"m"
    assert await inbox.get() is None
    assert await inbox.get() is None
