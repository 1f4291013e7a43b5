"""The tunnel pool of PROTOCOL.md §8, independent of gRPC so it can be tested with a fake clock.

Each slot loops: one Connect attempt, then the next. Attempts report when they start serving a request
(slot becomes active; scale up by `scale_up_step` if fewer than `min_idle` idle remain, never beyond
`max`). When an attempt ends an active slot becomes idle again (recording the time); a slot that stayed
idle is retired if more than `min_idle` slots are idle and it has not been active for `max_idle_s`.
After an error (not a cancel) a slot waits for its backoff.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agent_runtime.backoff import Backoff, BackoffPolicy
from agent_runtime.clock import Clock


class Outcome(enum.Enum):
    """How one Connect attempt ended."""

    DONE = "done"
    """Ended normally (served a request, or idle stream closed with OK): reconnect at once."""
    CANCELLED = "cancelled"
    """Cancelled (token change, drain, kas canceled): reconnect at once."""
    ERROR = "error"
    """Failed: wait for the backoff."""


@dataclass(frozen=True)
class PoolSettings:
    """Pool shape (defaults from §8; min_idle/max from the spec)."""

    min_idle: int
    """Idle slots to keep."""
    max: int
    """Cap on all slots."""
    scale_up_step: int
    """Slots started at once when short of idle ones."""
    max_idle_s: float
    """Idle extras not active for this long are retired."""
    backoff: BackoffPolicy
    """Per-slot reconnect backoff."""


class Slot:
    """One tunnel worker; attempts call `activate()` when kas hands them a request."""

    def __init__(self, pool: TunnelPool, number: int) -> None:
        self._pool = pool
        self.number = number
        """Stable id for names and logs."""
        self.active = False
        """Serving a request now."""
        self.established = False
        """The current idle stream is open (kas accepted it); only counted for reporting."""
        self.last_active: float | None = None
        """When this slot last finished a request; None = never."""
        self.attempt: asyncio.Task[Outcome] | None = None

    def activate(self) -> None:
        """The attempt received request_info: idle → active (may scale the pool up)."""
        self._pool.on_activate(self)

    def set_established(self, established: bool) -> None:
        """The attempt's stream is (no longer) open and idle."""
        if established == self.established:
            return  # every request's attempt says "not established" twice, mostly without a change
        self.established = established
        self._pool.report()


Attempt = Callable[[Slot], Coroutine[Any, Any, Outcome]]
"""Runs one Connect attempt for a slot."""
Report = Callable[[int, int], None]
"""Receives (idle established, active) counts on every change."""


class TunnelPool:
    """Owns the slots; `run()` until cancelled or until `drain()` and every slot ended."""

    def __init__(
        self,
        attempt: Attempt,
        settings: PoolSettings,
        *,
        clock: Clock,
        report: Report,
        before_attempt: Callable[[], Awaitable[None]] | None = None,
        name: str = "tunnel",
    ) -> None:
        self._attempt = attempt
        self._settings = settings
        self._clock = clock
        self._report = report
        self._before_attempt = before_attempt
        self._name = name
        self._slots: dict[int, Slot] = {}
        self._numbers = itertools.count(1)
        self._tg: asyncio.TaskGroup | None = None
        self._draining = False
        self._wake = asyncio.Event()
        self._last_report: tuple[int, int] | None = None

    # --- observation ------------------------------------------------------------------------------
    @property
    def total(self) -> int:
        """All slots."""
        return len(self._slots)

    @property
    def active(self) -> int:
        """Slots serving a request."""
        return sum(1 for s in self._slots.values() if s.active)

    @property
    def idle(self) -> int:
        """Slots not serving a request (connecting, parked or backing off), as agentk counts them."""
        return self.total - self.active

    def report(self) -> None:
        """Publish (established idle, active) if changed."""
        idle_established = active = 0
        for slot in self._slots.values():  # one pass: this runs several times per tunnelled request
            if slot.active:
                active += 1
            elif slot.established:
                idle_established += 1
        counts = (idle_established, active)
        if counts != self._last_report:
            self._last_report = counts
            self._report(*counts)

    # --- control ------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Start `min_idle` slots and keep the pool going."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for _ in range(min(self._settings.min_idle, self._settings.max)):
                self._spawn()
        self._tg = None

    def recycle_idle(self) -> None:
        """Cancel the streams of idle slots (new token): they reopen at once; active ones finish."""
        for slot in self._slots.values():
            if not slot.active and slot.attempt is not None:
                slot.attempt.cancel()
        self._wake.set()
        self._wake = asyncio.Event()

    def drain(self) -> None:
        """Stop: idle slots end now, active ones after their request; run() returns when all ended."""
        self._draining = True
        self.recycle_idle()

    # --- algorithm (§8) -----------------------------------------------------------------------------
    def on_activate(self, slot: Slot) -> None:
        """Slot got request_info."""
        slot.active = True
        if self.idle < self._settings.min_idle and not self._draining:
            for _ in range(min(self._settings.scale_up_step, self._settings.max - self.total)):
                self._spawn()
        self.report()

    def on_attempt_end(self, slot: Slot) -> bool:
        """Attempt over; returns True when the slot must retire."""
        slot.established = False
        if slot.active:
            slot.active = False
            slot.last_active = self._clock.now()
            self.report()
            return False
        stale = slot.last_active is None or self._clock.now() - slot.last_active > self._settings.max_idle_s
        retire = self.idle > self._settings.min_idle and stale
        self.report()
        return retire

    def _spawn(self) -> None:
        assert self._tg is not None
        slot = Slot(self, next(self._numbers))
        self._slots[slot.number] = slot
        self._tg.create_task(self._slot_loop(slot), name=f"{self._name}-{slot.number}")

    async def _slot_loop(self, slot: Slot) -> None:
        backoff = Backoff(self._settings.backoff, clock=self._clock)
        try:
            while not self._draining:
                if self._before_attempt is not None:
                    await self._before_attempt()
                    if self._draining:
                        break
                outcome = await self._run_attempt(slot)
                if self.on_attempt_end(slot) or self._draining:
                    break
                if outcome is Outcome.ERROR:
                    await backoff.sleep(wake=self._wake)
        finally:
            del self._slots[slot.number]
            self.report()

    async def _run_attempt(self, slot: Slot) -> Outcome:
        # The attempt runs in its own task so drain()/recycle_idle() can cancel just this stream.
        slot.attempt = asyncio.create_task(self._attempt(slot), name=f"{self._name}-{slot.number}-connect")
        try:
            return await asyncio.shield(slot.attempt)
        except asyncio.CancelledError:
            if slot.attempt.cancelled() and not _current_task_cancelling():
                return Outcome.CANCELLED
            slot.attempt.cancel()
            raise
        finally:
            if not slot.attempt.done():
                slot.attempt.cancel()
                await asyncio.gather(slot.attempt, return_exceptions=True)
            slot.attempt = None


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
