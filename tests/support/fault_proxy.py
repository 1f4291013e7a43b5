"""A fault-injecting TCP proxy on loopback, for the reliability tests (tests/reliability).

It forwards every accepted connection to one upstream (e.g. kas's agent port) and can, at any time:
delay every chunk by a latency plus jitter (order kept), black-hole the open connections (bytes are
read and dropped, nothing is closed, so neither side gets a FIN or RST), reset them (RST both ways,
mid-stream), or make them half-open (the upstream side is reset, the downstream side stays open and
silent: what a client sees when the server's host vanished). Faults apply to the connections open when
they are injected; connections accepted later pass through cleanly unless `latency` is set.

Every task is named and owned by the proxy; `close()` cancels and awaits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Final

_CHUNK: Final = 64 * 1024
_LOOPBACK: Final = "127.0.0.1"


class Fault(enum.Enum):
    """What happens to the bytes of one connection."""

    NONE = "none"
    BLACK_HOLE = "black-hole"
    HALF_OPEN = "half-open"


@dataclass
class _Link:
    """One proxied connection: the downstream (client) side and the upstream side."""

    number: int
    down: asyncio.StreamWriter
    up: asyncio.StreamWriter
    fault: Fault = Fault.NONE
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """`127.0.0.1:<port>` → `upstream_host:upstream_port`, with faults on demand."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: dict[int, _Link] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self.accepted = 0
        """Connections accepted so far (each reconnect of a client adds one)."""
        self.latency = 0.0
        """Seconds added to every chunk, each direction."""
        self.jitter = 0.0
        """Up to this many seconds more, uniformly random per chunk (never reorders bytes)."""
        self.dropped_bytes = 0
        """Bytes read and thrown away by black-holed or half-open connections."""

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def open_links(self) -> int:
        """Connections currently proxied (including black-holed ones)."""
        return len(self._links)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, _LOOPBACK, 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links.values()):
            self._drop(link)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # --- faults --------------------------------------------------------------------------------------
    def black_hole(self) -> int:
        """Drop every byte of the open connections from now on, in both directions; close nothing."""
        return self._mark(Fault.BLACK_HOLE)

    def half_open(self) -> int:
        """Reset the upstream side of the open connections; the downstream side stays open and silent."""
        count = self._mark(Fault.HALF_OPEN)
        for link in self._links.values():
            if link.fault is Fault.HALF_OPEN:
                _reset(link.up)
        return count

    def reset(self) -> int:
        """RST both sides of every open connection (mid-stream). Returns how many were reset."""
        links = list(self._links.values())
        for link in links:
            self._drop(link)
        return len(links)

    def _mark(self, fault: Fault) -> int:
        count = 0
        for link in self._links.values():
            if link.fault is Fault.NONE:
                link.fault = fault
                count += 1
        return count

    def _drop(self, link: _Link) -> None:
        self._links.pop(link.number, None)
        _reset(link.down)
        _reset(link.up)

    # --- forwarding ----------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # close() cancelled it; asyncio's server callback would log a cancelled handler as an error
        finally:
            self._handlers.discard(task)

    async def _serve(self, down_reader: asyncio.StreamReader, down: asyncio.StreamWriter) -> None:
        self.accepted += 1
        number = self.accepted
        try:
            up_reader, up = await asyncio.open_connection(*self._upstream)
        except OSError:
            _reset(down)
            return
        link = _Link(number, down, up)
        self._links[number] = link
        try:
            async with asyncio.TaskGroup() as tg:
                link.tasks = [
                    tg.create_task(self._pump(link, down_reader, up), name=f"fault-proxy/{number}/up"),
                    tg.create_task(self._pump(link, up_reader, down), name=f"fault-proxy/{number}/down"),
                ]
        except* OSError:
            if self._links.get(number) is link:
                self._drop(link)  # one side was reset: so is the other, as a router would pass it on
        else:
            self._links.pop(number, None)
            down.close()
            up.close()

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy `reader` to `writer` with the configured delay; drop the bytes once the link is faulted."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._deliver(link, queue, writer), name=f"fault-proxy/{link.number}/deliver")
            due = 0.0
            while True:
                data = await reader.read(_CHUNK)
                if link.fault is not Fault.NONE:
                    self.dropped_bytes += len(data)
                    if not data:  # the faulted side's FIN is swallowed too: keep the link silent
                        await asyncio.Event().wait()
                    continue
                # Never earlier than the previous chunk: jitter must not reorder the stream.
                due = max(due, time.monotonic() + self.latency + random.uniform(0, self.jitter))  # noqa: S311
                await queue.put((due, data))
                if not data:
                    return

    async def _deliver(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            due, data = await queue.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if link.fault is not Fault.NONE:
                self.dropped_bytes += len(data)
                continue
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
