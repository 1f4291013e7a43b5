"""A bounded, closable single-consumer channel: backpressure for data, room for a final item."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Channel(Generic[T]):
    """`put` waits while `capacity` items are queued; `close(final)` always fits `final` in.

    After `close`, `put` returns False at once and `get` drains what is left, then returns None.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def put(self, item: T) -> bool:
        while not self._closed and len(self._items) >= self._capacity:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return False
        self._items.append(item)
        self._readable.set()
        return True

    def put_nowait(self, item: T) -> bool:
        """Append regardless of capacity (for items that must never wait, e.g. the first one)."""
        if self._closed:
            return False
        self._items.append(item)
        self._readable.set()
        return True

    def close(self, final: T | None = None) -> None:
        if self._closed:
            return
        if final is not None:
            self._items.append(final)
        self._closed = True
        self._readable.set()
        self._writable.set()

    async def get(self) -> T | None:
        while not self._items:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        if len(self._items) < self._capacity:
            self._writable.set()
        return item
