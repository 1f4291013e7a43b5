"""Taking over the client's connection after a 101 Switching Protocols (exec, attach, port-forward).

aiohttp has no public hijack API. Its request handler accepts a replacement payload parser, the hook its
own WebSocket support uses: once installed, every byte the client sends goes to that parser instead of the
HTTP parser. That works for any Upgrade token (SPDY/3.1 as well as websocket), provided the parser is
installed before the 101 reaches the client, because a client may start talking right after it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import web

_READ_LIMIT: Final = 256 * 1024
"""Bytes buffered from the client before reading from its socket pauses (back-pressure)."""


class _RawFeeder:
    """Quacks like aiohttp's WebSocketReader: receives raw bytes from the request handler."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self._reader.feed_eof()


def take_over_input(request: web.BaseRequest) -> asyncio.StreamReader:
    """From now on, the client's bytes arrive on the returned reader (EOF when the client goes away)."""
    protocol = request.protocol
    transport = request.transport
    if protocol is None or transport is None:
        raise ConnectionResetError("the client connection is already closed")
    reader = asyncio.StreamReader(limit=_READ_LIMIT)
    reader.set_transport(transport)
    feeder: Any = _RawFeeder(reader)  # duck-typed stand-in for WebSocketReader (see module docstring)
    protocol.set_parser(feeder)
    return reader
