"""The client side of a ws-tunnel connection after the upgrade: HTTP/2 bytes carried in binary messages.

Used by the bridge's pipes and by the tunnel's own HTTP/2 connections (`h2/link.py`); message boundaries
carry no meaning (PROTOCOL.md §3.2.2), pings are answered at once, a close frame ends the connection.
"""

from __future__ import annotations

import asyncio
from typing import Final

from agent_proto import wstunnel

MAX_FRAME: Final = 1 << 20
"""Largest binary message we send (kas accepts up to 10 MiB)."""


class WsClientFraming:
    """Wraps what we send in masked binary messages and unwraps what kas sends."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._decoder = wstunnel.FrameDecoder(expect_masked=False)
        self._close_sent = False

    def send(self, data: bytes) -> None:
        """Send `data` as one or more binary messages."""
        if not self._close_sent:
            self._transport.write(wstunnel.encode_binary(data, mask=True, max_frame=MAX_FRAME))

    def receive(self, data: bytes) -> tuple[list[bytes], wstunnel.Close | None]:
        """The payloads in `data` and kas's close frame if it came; answers pings.

        Raises WebSocketProtocolError when kas breaks the protocol; after that, or after a close frame,
        nothing more is read.
        """
        if self._decoder.closed:
            return [], None
        payloads: list[bytes] = []
        for event in self._decoder.feed(data):
            if isinstance(event, wstunnel.Data):
                payloads.append(event.payload)
            elif isinstance(event, wstunnel.Ping):
                self._transport.write(wstunnel.encode_frame(wstunnel.Opcode.PONG, event.payload, mask=True))
            elif isinstance(event, wstunnel.Close):
                return payloads, event
        return payloads, None

    def close(self, code: int | None, reason: str) -> None:
        """Send a close frame (once, while the connection can still carry it)."""
        if not self._close_sent:
            self._close_sent = True
            if not self._transport.is_closing():
                self._transport.write(wstunnel.encode_close(code, reason, mask=True))
