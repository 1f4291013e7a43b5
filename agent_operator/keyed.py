"""At most one task per key, started on demand and owned by one supervisor (`run()`).

`kick(key)` asks for `work(key)` to run (again); kicks that arrive while it runs coalesce into one more
run, after an optional debounce. The debounce is leading-edge: the first kick of an idle key runs at once
(a new resource's first status is not delayed), only the follow-ups wait; `kick(key, now=True)` skips or
cuts short the wait (a change the caller knows to be due now). The tasks are named
`<name>:<key>` and live in the TaskGroup of `run()`,
so cancelling `run()` stops them all. `work` failures are logged, never propagated: one key's bug must not
stop the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class KeyedTasks(Generic[K]):
    """Coalescing per-key work queue with one task per busy key."""

    def __init__(self, name: str, work: Callable[[K], Awaitable[None]], *, debounce: float = 0.0) -> None:
        self._name = name
        self._work = work
        self._debounce = debounce
        self._pending: set[K] = set()
        self._now: set[K] = set()
        """Keys kicked with `now`: their next run does not wait for the debounce."""
        self._waking: dict[K, asyncio.Event] = {}
        """Keys waiting for the debounce now: set to cut the wait short."""
        self._tasks: dict[K, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None

    def kick(self, key: K, *, now: bool = False) -> None:
        """Run `work(key)` soon (once more if it is running now); `now`: without the debounce."""
        self._pending.add(key)
        if now and self._debounce:
            self._now.add(key)
            waking = self._waking.get(key)
            if waking is not None:
                waking.set()
        self._start(key)

    def busy(self, key: K) -> bool:
        """A task for `key` is running or scheduled."""
        return key in self._tasks

    async def run(self) -> None:
        """Own the tasks until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for key in list(self._pending):
                    self._start(key)
                await asyncio.Event().wait()
        finally:
            self._tg = None
            self._tasks.clear()

    def _start(self, key: K) -> None:
        if self._tg is None or key in self._tasks:
            return
        self._tasks[key] = self._tg.create_task(self._loop(key), name=f"{self._name}:{key}")

    async def _loop(self, key: K) -> None:
        first = True
        try:
            while key in self._pending:
                if self._debounce and not first and key not in self._now:
                    await self._debounced(key)
                first = False
                self._pending.discard(key)
                self._now.discard(key)
                try:
                    await self._work(key)
                except Exception:
                    log.exception("%s failed", self._name, extra={"key": str(key)})
        finally:
            self._tasks.pop(key, None)
            self._now.discard(key)

    async def _debounced(self, key: K) -> None:
        """Wait the debounce, or less when `kick(key, now=True)` comes meanwhile."""
        waking = self._waking[key] = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._debounce):
                    await waking.wait()
        finally:
            del self._waking[key]
