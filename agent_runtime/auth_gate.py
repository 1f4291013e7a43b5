"""One shared brake for all of a worker's RPCs after kas rejected the token.

Without it every module (config stream, Register, each tunnel) would retry on its own schedule and a
revoked token would produce a steady storm of failing RPCs. After UNAUTHENTICATED the gate closes for
the configuration backoff (10 s → 5 min); every module waits at the gate before its next attempt. A new
token opens it at once.
"""

from __future__ import annotations

import asyncio

from agent_runtime.backoff import CONFIG_BACKOFF, Backoff, BackoffPolicy
from agent_runtime.clock import SYSTEM_CLOCK, Clock


class AuthGate:
    """Open unless kas recently said UNAUTHENTICATED (or PERMISSION_DENIED/agent not found)."""

    def __init__(self, policy: BackoffPolicy = CONFIG_BACKOFF, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._backoff = Backoff(policy, clock=clock)
        self._clock = clock
        self._closed_until = 0.0
        self._reopened = asyncio.Event()

    @property
    def is_open(self) -> bool:
        """True when modules may call kas now."""
        return self._clock.now() >= self._closed_until

    def report_rejected(self) -> None:
        """kas rejected the credentials: close the gate for the next backoff delay (unless already closed)."""
        if self.is_open:
            self._closed_until = self._clock.now() + self._backoff.next_delay()

    def report_accepted(self) -> None:
        """kas accepted the credentials: future rejections start the backoff from the beginning."""
        self._backoff.reset()

    def reopen(self) -> None:
        """New credentials: open now and wake all waiters."""
        self._backoff.reset()
        self._closed_until = 0.0
        self._reopened.set()
        self._reopened = asyncio.Event()

    async def wait_open(self) -> None:
        """Return when the gate is open (at the end of the delay or on reopen())."""
        while not self.is_open:
            reopened = self._reopened
            try:
                async with asyncio.timeout(self._closed_until - self._clock.now()):
                    await reopened.wait()
            except TimeoutError:
                continue
