"""A latest-value publisher: readers see only the newest value, never a backlog (PROTOCOL.md §12.3)."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestValue(Generic[T]):
    """Holds the newest value; waiters wake on every change and skip intermediate values."""

    def __init__(self, initial: T) -> None:
        self._value = initial
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def value(self) -> T:
        """The current value."""
        return self._value

    @property
    def version(self) -> int:
        """Increments on every set(); pass it to wait_newer()."""
        return self._version

    def set(self, value: T) -> None:
        """Publish a new value and wake every waiter."""
        self._value = value
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_newer(self, than_version: int) -> tuple[T, int]:
        """Wait until the version is above `than_version`; returns (value, version)."""
        while self._version <= than_version:
            await self._changed.wait()
        return self._value, self._version


class Signal:
    """An edge-triggered notification: `event()` is set on the next fire() (e.g. token changed)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def event(self) -> asyncio.Event:
        """An event that becomes set at the next fire(); take it before you start waiting."""
        return self._event

    def fire(self) -> None:
        """Wake everyone holding the current event."""
        self._event.set()
        self._event = asyncio.Event()
