"""Monotonic time behind an interface, so time-driven algorithms can be tested deterministically."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A monotonic clock in seconds."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...


class SystemClock:
    """The process's monotonic clock."""

    def now(self) -> float:
        """time.monotonic()."""
        return time.monotonic()


SYSTEM_CLOCK = SystemClock()
"""The shared default clock."""
