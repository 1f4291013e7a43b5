"""This replica's membership: join, renew, fence; and the live member set, from the group's Leases.

A replica that cannot renew its member Lease for FENCE_FRACTION of its duration stops its workers at
once (`on_fence`), before the others, which wait the whole duration after they last saw it renewed, may
take its agents over. Until it renews again it owns nothing. Should the stop not be done by
EXIT_FRACTION of the duration (a starved event loop), the FenceWatchdog's thread ends the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import aiohttp

from agent_operator.sharding.leases import LeaseError, LeaseView, member_lease_name
from agent_operator.sharding.metrics import ShardMetrics
from agent_operator.sharding.watchdog import FenceWatchdog
from agent_runtime.sharding.members import Clock, Membership

log = logging.getLogger(__name__)

RENEW_FRACTION: Final = 0.25
"""A member Lease is renewed every quarter of its duration (client-go's leader election: about a third)."""
FENCE_FRACTION: Final = 0.75
"""Without a successful renewal (sent) within this part of the duration, a replica stops its workers:
the others wait the whole duration from when they saw its last renewal, which came after it was sent, and
a stop with no grace takes well under the remaining quarter (2 s by default)."""
CHECK_INTERVAL_S: Final = 0.5
"""How often the live member set is recomputed (a dead member is noticed this much after it expired);
the fence point is looked at exactly when it comes."""
DEAD_CONFIRMED_S: Final = 2.0
"""A member confirmed dead by a fresh read stays confirmed this long (one read per takeover burst)."""
_PAST_S: Final = 0.01
"""A wake-up for the fence point comes this much after it (the clock has moved past it then)."""
FORGET_AFTER_DURATIONS: Final = 6
"""A member Lease unchanged for this many durations belongs to a replica gone for good: deleted."""


class MemberLeases(Protocol):
    """What Members needs of LeaseApi."""

    @property
    def me(self) -> str: ...

    @property
    def group(self) -> str: ...

    async def join(self) -> bool: ...

    async def renew(self) -> bool: ...

    async def member_version(self, lease: str) -> str | None: ...

    async def delete_member(self, lease: str, version: str) -> None: ...


class Members:
    """Owns the member Lease of this replica and the view of the others'."""

    def __init__(
        self,
        leases: MemberLeases,
        duration: float,
        metrics: ShardMetrics,
        *,
        on_change: Callable[[], None],
        on_fence: Callable[[], Awaitable[None]],
        clock: Clock = time.monotonic,
        watchdog: FenceWatchdog | None = None,
    ) -> None:
        self._leases = leases
        self._duration = duration
        self._metrics = metrics
        self._on_change = on_change
        self._on_fence = on_fence
        self._clock = clock
        self._table = Membership(clock)
        self._live: frozenset[str] | None = None
        self._joined = False
        self._fenced = False
        self._fence_done = False
        """The fence's stop has returned: every worker here stopped (a renewal may end the fence now)."""
        self._watchdog = watchdog or FenceWatchdog(duration, clock=clock)
        self._synced = False
        self._dead: dict[str, float] = {}
        self._confirming = asyncio.Lock()
        self._last_ok = self._clock()
        """When the last successful renewal was sent."""
        self._last_attempt = self._clock()

    @property
    def live(self) -> frozenset[str] | None:
        """The live members (this one included), or None while unknown: before joining and while fenced."""
        return self._live

    def synced(self) -> None:
        """The informer has listed the group's Leases: the member set can be known."""
        self._synced = True
        self._recompute()

    def observe(self, lease: LeaseView) -> None:
        """A member Lease as the informer delivered it."""
        self._table.observe(lease.name, lease.holder, lease.version, lease.duration or self._duration)

    def forget(self, lease: LeaseView) -> None:
        """A member Lease was deleted: that member left."""
        self._table.forget(lease.name)
        self._recompute()

    async def run(self) -> None:
        """Join, then renew and recompute until cancelled (after every worker here has stopped: a
        replica that drains its workers at shutdown keeps its membership meanwhile)."""
        sent = self._clock()
        joined = await self._attempt(self._leases.join)
        while not joined:  # the API server is away: nothing to wait on but time
            await asyncio.sleep(CHECK_INTERVAL_S)
            sent = self._clock()
            joined = await self._attempt(self._leases.join)
        self._last_ok = sent
        self._watchdog.renewed(sent)
        self._watchdog.start()
        self._joined = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._renew(), name="shard-member-renewal")
                while True:
                    fence_at = self._last_ok + self._duration * FENCE_FRACTION
                    if not self._fenced and self._clock() > fence_at:
                        await self._fence()
                    self._recompute()
                    await asyncio.sleep(self._next_check(fence_at))
        finally:
            self._watchdog.stop()

    def _next_check(self, fence_at: float) -> float:
        """Seconds until the next look: CHECK_INTERVAL_S, or less to fence on time (a short Lease's
        fence point may come sooner; the watchdog's deadline follows it closely)."""
        if self._fenced:
            return CHECK_INTERVAL_S
        return min(CHECK_INTERVAL_S, max(0.0, fence_at - self._clock()) + _PAST_S)

    async def _fence(self) -> None:
        log.error("cannot renew the member Lease: stopping every agent here (others take over)")
        self._metrics.fences.inc()
        self._fenced = True
        self._fence_done = False
        self._recompute()
        await self._on_fence()
        self._watchdog.stood_down()
        self._fence_done = True

    async def _renew(self) -> None:
        """Renew every RENEW_FRACTION of the duration. A slow renewal is waited for, never cut short: a
        late renewal still counts, and the fencing above does not wait for it."""
        renew_every = self._duration * RENEW_FRACTION
        while True:
            await asyncio.sleep(max(0.0, self._last_attempt + renew_every - self._clock()))
            sent = self._last_attempt = self._clock()
            if await self._attempt(self._leases.renew):
                self._last_ok = max(self._last_ok, sent)
                fresh = self._clock() - sent < self._duration * FENCE_FRACTION
                if self._fenced and self._fence_done and fresh:
                    log.info("member Lease renewed again: taking agents again")
                    self._fenced = False
                    self._watchdog.renewed(sent)
                    self._recompute()
                elif not self._fenced:
                    self._watchdog.renewed(sent)

    async def _attempt(self, call: Callable[[], Awaitable[bool]]) -> bool:
        try:
            return await call()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("member Lease request failed: %s", type(exc).__name__)
            return False

    def _recompute(self) -> None:
        live: frozenset[str] | None = None
        if self._joined and self._synced and not self._fenced:
            live = self._table.live() | {self._leases.me}
        if live != self._live:
            self._live = live
            self._metrics.members.set(len(live) if live is not None else 0)
            log.info("members: %s", sorted(live) if live is not None else "unknown (not a member now)")
            self._on_change()

    async def confirm_dead(self, holder: str) -> bool:
        """Whether `holder` is dead, checked with a fresh read of its member Lease: a Lease that changed
        since we last saw it means our watch lagged, not that the member died.

        One read at a time: a dead replica's thousand agents ask at once, and the callers that waited
        take the answer of the read before them (thousands of reads would crowd the API server just when
        this replica's own renewals must get through)."""
        async with self._confirming:
            return await self._confirm_dead(holder)

    async def _confirm_dead(self, holder: str) -> bool:
        if holder in (self._live or ()) or holder in self._table.live():
            return False  # the table, too: a member first seen since the last recompute is live
        confirmed = self._dead.get(holder)
        if confirmed is not None and self._clock() - confirmed < DEAD_CONFIRMED_S:
            return True
        lease = member_lease_name(self._leases.group, holder)
        try:
            version = await self._leases.member_version(lease)
        except (aiohttp.ClientError, TimeoutError, LeaseError) as exc:
            log.warning("cannot confirm that %s is dead: %s", holder, exc)
            return False
        if version is None or version == self._table.marker(holder):
            self._dead[holder] = self._clock()
            return True
        self._table.observe(lease, holder, version, self._duration)
        self._recompute()
        return False

    async def forget_long_dead(self) -> None:
        """Delete member Leases of replicas gone for good (a Deployment's pods get new names)."""
        for lease, version in self._table.stale(self._duration * FORGET_AFTER_DURATIONS):
            try:
                await self._leases.delete_member(lease, version)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("cannot delete the Lease of a gone member: %s", type(exc).__name__)
                return
