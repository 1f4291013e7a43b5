"""What the agents of one tenant share (agent_runtime/tenancy.py): tunnel permits, bytes, the registry."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

from agent_runtime.modules.reverse_tunnel.budget import Inbox
from agent_runtime.policy import TenantBudget
from agent_runtime.tenancy import ByteBudget, TenantRegistry, TunnelShare


async def _blocked(waiting: Coroutine[Any, Any, None]) -> bool:
    """True when `waiting` does not finish within a few loop turns."""
    task = asyncio.create_task(waiting, name="maybe-blocked")
    await asyncio.sleep(0.01)
    blocked = not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return blocked


def _open_all(share: TunnelShare, seat: Any, count: int) -> int:
    """Open up to `count` streams of `seat` without waiting; returns how many opened."""
    return sum(1 for _ in range(count) if share.try_open(seat))


# --- tunnels ---------------------------------------------------------------------------------------------
def test_the_tenant_cap_holds_over_all_its_agents() -> None:
    share = TunnelShare(10)
    seats = [share.join(floor=1) for _ in range(4)]
    opened = [_open_all(share, seat, 50) for seat in seats]
    assert share.open == 10
    assert opened == [7, 1, 1, 1]  # the first takes the shared part, the others still have their floor
    assert share.peak_open == 10


def test_an_agent_keeps_its_floor_while_the_others_are_saturated() -> None:
    share = TunnelShare(6)
    busy, quiet = share.join(floor=2), share.join(floor=2)
    assert _open_all(share, busy, 50) == 4
    assert _open_all(share, quiet, 50) == 2
    share.closed(quiet)
    share.closed(quiet)
    assert _open_all(share, busy, 50) == 0  # quiet's floor stays reserved while idle
    assert _open_all(share, quiet, 50) == 2


def test_a_late_agent_gets_its_floor_before_anyone_gets_more() -> None:
    share = TunnelShare(4)
    first = share.join(floor=1)
    assert _open_all(share, first, 50) == 4
    late = share.join(floor=2)
    assert not share.try_open(late)  # nothing free yet: first's extra streams are serving
    share.closed(first)
    assert not share.try_open(first)  # the freed permit went to late's floor, not back to first
    assert share.try_open(late)
    share.closed(first)
    assert share.try_open(late)
    assert not share.try_open(late)
    assert share.open == 4


def test_freed_permits_go_one_at_a_time_to_the_agents_short_of_their_floor() -> None:
    share = TunnelShare(2)
    first = share.join(floor=0)
    assert _open_all(share, first, 5) == 2
    second, third = share.join(floor=2), share.join(floor=2)
    share.closed(first)
    share.closed(first)
    assert (second.granted, third.granted) == (1, 1)  # each can be reached, rather than one twice


def test_floors_beyond_the_cap_are_reserved_oldest_first() -> None:
    share = TunnelShare(5)
    seats = [share.join(floor=2) for _ in range(3)]
    assert [s.granted for s in seats] == [2, 2, 1]
    assert share.granted == 5
    share.leave(seats[0])
    assert [s.granted for s in seats[1:]] == [2, 2]
    assert share.granted == 4


def test_random_opens_and_closes_never_exceed_the_cap_nor_leak_permits() -> None:
    rng = random.Random(19)  # noqa: S311 - a reproducible sequence of operations, not crypto
    share = TunnelShare(12)
    seats = [share.join(floor=rng.randint(0, 3)) for _ in range(6)]
    for _ in range(5000):
        seat = rng.choice(seats)
        if seat.open and rng.random() < 0.5:
            share.closed(seat)
        else:
            share.try_open(seat)
        assert share.open <= share.granted <= share.limit
        assert all(s.open <= s.granted for s in seats)
        assert share.open == sum(s.open for s in seats)  # the running count, checked against the seats
        assert set(share._short) == {s.number for s in seats if s.granted < s.floor}
    for seat in seats:
        while seat.open:
            share.closed(seat)
    assert share.granted == sum(min(s.floor, s.granted) for s in seats)
    for seat in seats:
        share.leave(seat)
    assert share.granted == 0
    assert share.open == 0


async def test_a_waiting_stream_opens_when_another_of_the_tenant_ends() -> None:
    share = TunnelShare(2)
    first, second = share.join(floor=0), share.join(floor=0)
    assert _open_all(share, first, 2) == 2
    waiting = asyncio.create_task(share.wait_open(second), name="waiting-stream")
    assert await _blocked(share.wait_open(second))
    share.closed(first)
    await asyncio.wait_for(waiting, 1)
    assert second.open == 1
    assert share.open == 2


async def test_a_stream_of_the_same_agent_takes_its_own_floor_back() -> None:
    share = TunnelShare(2)
    seat = share.join(floor=2)
    other = share.join(floor=0)
    assert _open_all(share, seat, 5) == 2
    waiting = asyncio.create_task(share.wait_open(seat), name="third-stream")
    await asyncio.sleep(0.01)
    share.closed(seat)  # the permit stays in the floor: only this agent's waiter may use it
    await asyncio.wait_for(waiting, 1)
    assert not share.try_open(other)


async def test_the_stream_context_gives_the_permit_back_on_cancel() -> None:
    share = TunnelShare(1)
    seat = share.join(floor=0)

    async def hold() -> None:
        async with share.stream(seat):
            await asyncio.Event().wait()

    holder = asyncio.create_task(hold(), name="holder")
    await asyncio.sleep(0.01)
    assert share.open == 1
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)
    assert share.open == 0
    assert share.granted == 0


def test_closing_after_leaving_changes_nothing() -> None:
    share = TunnelShare(3)
    seat, other = share.join(floor=1), share.join(floor=1)
    assert share.try_open(seat)
    share.leave(seat)
    share.closed(seat)
    assert share.granted == 1
    assert other.granted == 1


# --- bytes -----------------------------------------------------------------------------------------------
async def test_the_tenant_byte_budget_stops_every_agent_of_the_tenant() -> None:
    tenant = ByteBudget(100)
    first, second = ByteBudget(80, parent=tenant), ByteBudget(80, parent=tenant)
    Inbox(first, limit=1000).put(b"a" * 70, 70)
    assert second.has_room()
    inbox = Inbox(second, limit=1000)
    inbox.put(b"b" * 40, 40)
    assert tenant.used == 110
    assert not first.has_room()
    assert not second.has_room()  # well under its own limit, but its tenant is full
    assert await _blocked(second.wait_room())
    assert await inbox.get() == b"b" * 40
    inbox.clear()
    assert tenant.used == 70
    await asyncio.wait_for(second.wait_room(), 1)
    await asyncio.wait_for(first.wait_room(), 1)
    assert tenant.peak == 110


async def test_an_agent_full_by_itself_waits_for_its_own_room() -> None:
    tenant = ByteBudget(1000)
    agent = ByteBudget(50, parent=tenant)
    agent.charge(60)
    waiting = asyncio.create_task(agent.wait_room(), name="agent-room")
    await asyncio.sleep(0.01)
    assert not waiting.done()
    agent.release(20)
    await asyncio.wait_for(waiting, 1)
    assert tenant.used == 40


# --- registry --------------------------------------------------------------------------------------------
def test_workers_of_one_tenant_share_one_share_dropped_with_the_last() -> None:
    registry = TenantRegistry()
    budget = TenantBudget(max_inflight_requests=7, max_buffered_bytes=99)
    with registry.joined("team-a", budget) as a1, registry.joined("team-a", budget) as a2:
        with registry.joined("team-b", budget) as b:
            assert a1 is a2
            assert b is not a1
            assert registry.get("team-a") is a1
            assert a1.tunnels.limit == 7
            assert a1.buffered.limit == 99
        assert registry.get("team-b") is None
        assert registry.get("team-a") is a1
    assert len(registry) == 0


def test_a_worker_without_a_tenant_is_a_tenant_of_its_own() -> None:
    registry = TenantRegistry()
    with registry.joined(None, TenantBudget()) as one, registry.joined(None, TenantBudget()) as two:
        assert one is not two
        assert len(registry) == 0
