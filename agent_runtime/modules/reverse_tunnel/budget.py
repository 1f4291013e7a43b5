"""How many request bytes from kas an agent's tunnels may hold at once (docs/security.md, budgets).

kas can be a tenant, and a request whose body the API server never reads (a blocked upload) must not
make the process buffer whatever kas sends. Each tunnel has a small inbox, bounded in bytes, that counts
a message until the handler asks for the next one (so the chunk the HTTP client is still writing counts
too); all the tunnels of one agent share a `ByteBudget` (`--max-buffered-bytes-per-agent`), whose
parent all the agents of the tenant share (`--max-buffered-bytes-per-namespace`, agent_runtime.tenancy).
A tunnel reads its next frame from kas only while all three have room, so when one is full the reads stop
and HTTP/2 flow control pushes back on kas instead of the process filling up.

A read in progress holds at most one frame (the channel's receive limit, `MAX_RECEIVE_MESSAGE` in
agent_runtime.transport.channel), so an agent holds at most its budget plus one frame per open tunnel.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from agent_runtime.tenancy import ByteBudget

__all__ = ["INBOX_BYTES", "ByteBudget", "Inbox"]

INBOX_BYTES: Final = 64 * 1024
"""Per tunnel: a new frame is read only while less than this is queued for the handler. Two of kas's
32 KiB body chunks: enough to keep an upload streaming, small enough that 200 tunnels hold ~13 MiB."""


class Inbox:
    """Request messages of one tunnelled call, waiting for its handler; `None` marks the end."""

    def __init__(self, budget: ByteBudget, limit: int = INBOX_BYTES) -> None:
        self._budget = budget
        self._limit = limit
        self._items: deque[tuple[bytes | None, int]] = deque()
        self._bytes = 0
        self._arrived = asyncio.Event()
        self._taken = asyncio.Event()
        self._ended = False
        self._lent = 0
        """The charge of the message the handler took last: it is still being sent upstream (an HTTP
        client asks for the next chunk once the previous one is written), so it counts until then."""

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for the handler, and the message it is still sending."""
        return self._bytes

    def has_room(self) -> bool:
        """This inbox and the agent's budget both take another frame now."""
        return self._bytes < self._limit and self._budget.has_room()

    async def wait_room(self) -> None:
        """Return once this inbox and the agent's budget both have room for another frame."""
        while not self.has_room():
            while self._bytes >= self._limit:
                self._taken.clear()
                await self._taken.wait()
            await self._budget.wait_room()

    def put(self, item: bytes | None, charged: int) -> None:
        """Queue `item`, holding `charged` bytes of the budget until the handler asks for the next one."""
        self._items.append((item, charged))
        self._bytes += charged
        self._budget.charge(charged)
        self._arrived.set()

    async def get(self) -> bytes | None:
        """The next message; None at the end, and again on every later call."""
        self._give_back(self._lent)
        self._lent = 0
        while not self._items:
            if self._ended:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        item, self._lent = self._items.popleft()
        if item is None:
            self._ended = True
        return item

    def clear(self) -> None:
        """Drop everything queued (nobody will read it) and give its bytes back."""
        self._give_back(self._lent)
        self._lent = 0
        while self._items:
            item, charged = self._items.popleft()
            self._give_back(charged)
            if item is None:
                self._ended = True

    def _give_back(self, charged: int) -> None:
        if not charged:
            return
        self._bytes -= charged
        self._budget.release(charged)
        self._taken.set()
