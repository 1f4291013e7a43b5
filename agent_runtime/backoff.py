"""Exponential backoff with jitter and reset, as Kubernetes' ExponentialBackoffManager (PROTOCOL.md §8).

The n-th consecutive delay is min(initial·factor^(n-1), cap) x a random factor in [1, 1+jitter); the
sequence restarts from `initial` when the previous delay was handed out longer ago than `reset_after`.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from agent_runtime import constants as c
from agent_runtime.clock import SYSTEM_CLOCK, Clock


@dataclass(frozen=True)
class BackoffPolicy:
    """The shape of one backoff sequence."""

    initial: float
    """First delay in seconds."""
    cap: float
    """Largest delay before jitter."""
    factor: float
    """Growth per consecutive failure."""
    jitter: float
    """Each delay is multiplied by a random factor in [1, 1+jitter)."""
    reset_after: float
    """Start over when the previous delay was requested longer ago than this."""


CONFIG_BACKOFF = BackoffPolicy(
    c.CONFIG_BACKOFF_INITIAL_S,
    c.CONFIG_BACKOFF_MAX_S,
    c.CONFIG_BACKOFF_FACTOR,
    c.CONFIG_BACKOFF_JITTER,
    c.CONFIG_BACKOFF_RESET_S,
)
"""GetConfiguration (§6.1)."""
REGISTER_BACKOFF = BackoffPolicy(
    c.REGISTER_BACKOFF_INITIAL_S,
    c.REGISTER_BACKOFF_MAX_S,
    c.REGISTER_BACKOFF_FACTOR,
    c.REGISTER_BACKOFF_JITTER,
    c.REGISTER_BACKOFF_RESET_S,
)
"""Register (§6.2)."""
TUNNEL_BACKOFF = BackoffPolicy(
    c.TUNNEL_BACKOFF_INITIAL_S,
    c.TUNNEL_BACKOFF_MAX_S,
    c.TUNNEL_BACKOFF_FACTOR,
    c.TUNNEL_BACKOFF_JITTER,
    c.TUNNEL_BACKOFF_RESET_S,
)
"""Reverse tunnel (§8)."""


_JITTER = random.Random()  # noqa: S311 - jitter, not cryptography
"""One generator for every Backoff of the process: each Random holds 2.5 KiB of state, and a worker has
six backoffs (15 KiB per agent, measured in docs/benchmarks.md, Density). The draws need no independence
between sequences; the event loop runs them one at a time."""


class Backoff:
    """One backoff sequence; not shared between tasks that fail independently."""

    def __init__(
        self, policy: BackoffPolicy, *, clock: Clock = SYSTEM_CLOCK, rng: random.Random | None = None
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng or _JITTER
        self._steps = 0
        self._last: float | None = None

    def next_delay(self) -> float:
        """The delay to wait now, advancing the sequence."""
        p = self._policy
        now = self._clock.now()
        if self._last is not None and now - self._last > p.reset_after:
            self._steps = 0
        self._last = now
        base = min(p.initial * p.factor**self._steps, p.cap)
        if base < p.cap:
            self._steps += 1
        return base * (1.0 + self._rng.random() * p.jitter)

    def reset(self) -> None:
        """Start over from `initial` (after a success the caller knows about)."""
        self._steps = 0
        self._last = None

    async def sleep(self, wake: asyncio.Event | None = None) -> None:
        """Wait the next delay; returns early when `wake` is set (e.g. the token changed)."""
        delay = self.next_delay()
        if wake is None:
            await asyncio.sleep(delay)
            return
        try:
            async with asyncio.timeout(delay):
                await wake.wait()
        except TimeoutError:
            return
