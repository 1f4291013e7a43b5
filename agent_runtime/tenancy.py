"""What the agents of one tenant share in the process: a cap on open tunnels and on buffered bytes.

Per-agent budgets (agent_runtime.policy.TunnelBudget) do not stop a tenant with many agents: each agent
at its cap costs ~0.7 MiB per stuck request, and a namespace may run dozens of agents. So every worker
joins its tenant's `TenantShare` (the operator's tenant is the GitLabAgent's namespace,
`WorkerSpec.tenant`), and its tunnels draw from it (policy.TenantBudget, docs/security.md):

- Tunnels: the tenant's agents hold at most `max_inflight_requests` Connect streams (idle or serving) in
  all. Each agent first gets its floor (`min_idle`, the streams kas needs to reach it at all) reserved,
  one stream per agent in turn (so with at least as many permits as agents, each agent has one); the
  rest of the cap is shared first come, first served, and a stream above the floor gives its permit
  back when it ends. Freed permits go to agents still short of their floor before anyone gets one
  more, so an agent of a busy tenant gets its floor as soon as the other agents' requests end, and
  never loses it to them afterwards.
- Bytes: each agent's ByteBudget has the tenant's ByteBudget as its parent; a tunnel reads from kas only
  while both have room.

A worker without a tenant (the single-agent CLI) is a tenant of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator

from agent_runtime.policy import TenantBudget


class ByteBudget:
    """Bytes read from kas and not yet taken by a handler, across tunnels (one agent's, or one tenant's)."""

    def __init__(self, limit: int, parent: ByteBudget | None = None) -> None:
        self.limit = limit
        """Reading pauses while `used` is at or above this."""
        self.parent = parent
        """A budget every byte is charged to as well (the tenant's, for an agent's); None = none."""
        self.used = 0
        """Bytes held now."""
        self.peak = 0
        """The most ever held at once (for tests and diagnostics)."""
        self._room = asyncio.Event()
        self._room.set()

    def charge(self, size: int) -> None:
        """`size` more bytes are held (the frame was read already: this may go past the limit)."""
        self.used += size
        self.peak = max(self.peak, self.used)
        if self.used >= self.limit:
            self._room.clear()
        if self.parent is not None:
            self.parent.charge(size)

    def release(self, size: int) -> None:
        """`size` bytes were handed on or dropped."""
        self.used -= size
        if self.used < self.limit:
            self._room.set()
        if self.parent is not None:
            self.parent.release(size)

    def has_room(self) -> bool:
        """This budget and its parents hold less than their limits."""
        return self.used < self.limit and (self.parent is None or self.parent.has_room())

    async def wait_room(self) -> None:
        """Return once this budget and its parents hold less than their limits."""
        while not self.has_room():
            if self.used >= self.limit:
                await self._room.wait()
            elif self.parent is not None:
                await self.parent.wait_room()


class TunnelSeat:
    """One agent's place in its tenant's `TunnelShare`."""

    def __init__(self, number: int, floor: int) -> None:
        self.number = number
        """Join order: of two agents short of their floor, the older gets a free permit first."""
        self.floor = floor
        """Permits kept even while not in use (the agent's min_idle)."""
        self.granted = 0
        """Permits this agent holds: at least `open`, and its floor once the tenant had room for it."""
        self.open = 0
        """Streams of this agent open now (idle or serving)."""


class TunnelShare:
    """The cap on open tunnels over all the agents of one tenant."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """Streams the tenant's agents may hold open at once, in all."""
        self.peak_open = 0
        """The most streams ever open at once (for tests and diagnostics)."""
        self._seats: dict[int, TunnelSeat] = {}
        self._short: dict[int, TunnelSeat] = {}
        """Seats holding fewer permits than their floor (few: only while the tenant is at its limit or
        right after a join), so that granting floors never walks every agent of the tenant."""
        self._numbers = itertools.count()
        self._granted = 0
        self._open = 0
        self._changed = asyncio.Event()

    @property
    def open(self) -> int:
        """Streams of the tenant's agents open now."""
        return self._open

    @property
    def granted(self) -> int:
        """Permits held now (open streams plus reserved floors); never above `limit`."""
        return self._granted

    def join(self, floor: int) -> TunnelSeat:
        """A new agent with `floor` reserved streams (as much of it as fits now; the rest when freed)."""
        seat = TunnelSeat(next(self._numbers), max(0, floor))
        self._seats[seat.number] = seat
        if seat.floor:
            self._short[seat.number] = seat
        self._grant_floors()
        self._notify()
        return seat

    def leave(self, seat: TunnelSeat) -> None:
        """The agent stopped: its permits go back (its streams are closed by then)."""
        if self._seats.pop(seat.number, None) is None:
            return
        self._short.pop(seat.number, None)
        self._granted -= seat.granted
        self._open -= seat.open
        seat.granted = seat.open = 0
        self._grant_floors()
        self._notify()

    def try_open(self, seat: TunnelSeat) -> bool:
        """Take a permit for one more stream of `seat` if the tenant has one now."""
        if seat.open < seat.granted:
            seat.open += 1
        elif self._granted < self.limit:  # nobody is short of a floor, or _grant_floors would have used it
            seat.granted += 1
            self._granted += 1
            seat.open += 1
            if seat.granted >= seat.floor:
                self._short.pop(seat.number, None)
        else:
            return False
        self._open += 1
        self.peak_open = max(self.peak_open, self._open)
        return True

    async def wait_open(self, seat: TunnelSeat) -> None:
        """Take a permit for one more stream of `seat`, waiting for one to be freed."""
        while not self.try_open(seat):
            await self._changed.wait()

    def closed(self, seat: TunnelSeat) -> None:
        """A stream of `seat` ended: a permit above its floor goes back to the tenant."""
        if seat.number not in self._seats:
            return  # it left already, giving everything back
        seat.open -= 1
        self._open -= 1
        if seat.granted > max(seat.floor, seat.open):
            seat.granted -= 1
            self._granted -= 1
            self._grant_floors()
        self._notify()  # a permit is free: the tenant's, or one of this seat's floor for its next stream

    @contextlib.asynccontextmanager
    async def stream(self, seat: TunnelSeat) -> AsyncIterator[None]:
        """Hold a permit for one stream of `seat` while inside (waiting for one first)."""
        await self.wait_open(seat)
        try:
            yield
        finally:
            self.closed(seat)

    def _grant_floors(self) -> None:
        """Reserve free permits for agents short of their floor, one at a time to the agent holding the
        fewest (the oldest of those): every agent gets its first stream before any gets its second."""
        while self._granted < self.limit and self._short:  # at most `limit` rounds
            neediest = min(self._short.values(), key=lambda seat: (seat.granted, seat.number))
            neediest.granted += 1
            self._granted += 1
            if neediest.granted >= neediest.floor:
                del self._short[neediest.number]

    def _notify(self) -> None:
        # A fresh event per change: every waiter re-checks once, none misses a change made meanwhile.
        self._changed.set()
        self._changed = asyncio.Event()


class TenantShare:
    """What all the workers of one tenant share."""

    def __init__(self, tenant: str | None, budget: TenantBudget) -> None:
        self.tenant = tenant
        """The tenant (the operator: a namespace); None = a worker that is a tenant of its own."""
        self.tunnels = TunnelShare(budget.max_inflight_requests)
        """Open Connect streams of the tenant's agents (`--max-inflight-requests-per-namespace`)."""
        self.buffered = ByteBudget(budget.max_buffered_bytes)
        """Request bytes held for the tenant's agents (`--max-buffered-bytes-per-namespace`)."""
        self.workers = 0
        """Workers using this share now; the registry drops it when the last one leaves."""


class TenantRegistry:
    """The process's tenant shares by tenant, created on demand and dropped with their last worker."""

    def __init__(self) -> None:
        self._shares: dict[str, TenantShare] = {}

    def get(self, tenant: str) -> TenantShare | None:
        """The share of `tenant` while one of its workers runs."""
        return self._shares.get(tenant)

    def __len__(self) -> int:
        return len(self._shares)

    @contextlib.contextmanager
    def joined(self, tenant: str | None, budget: TenantBudget) -> Iterator[TenantShare]:
        """The share of `tenant` (with `budget` if it is new) while inside; a None tenant gets its own."""
        if tenant is None:
            share = TenantShare(None, budget)
        elif (found := self._shares.get(tenant)) is not None:
            share = found
        else:
            share = self._shares[tenant] = TenantShare(tenant, budget)
        share.workers += 1
        try:
            yield share
        finally:
            share.workers -= 1
            if share.workers == 0 and tenant is not None and self._shares.get(tenant) is share:
                del self._shares[tenant]
