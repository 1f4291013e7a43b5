"""One HTTP/2 connection to kas carrying tunnel calls (`H2Call`), driven by the event loop.

Bytes come from the dialer's KasStream (TCP, proxy, TLS and the WebSocket upgrade are done there, after
the destination policy); connection.py keeps the protocol state. What we send is collected and written
once per loop iteration, so a request's response frames leave in one write. Flow control: kas may run
one window (64 KiB) ahead on each stream; a stream's window reopens as its messages are read, the
connection's as data arrives (each stream is bounded already). kas's GOAWAY leaves the streams it
accepted running (a gRPC server's graceful GOAWAY, kas's connection rotation); streams it did not accept
are opened again elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from agent_proto import wstunnel
from agent_runtime.rpc_status import StatusCode
from agent_runtime.spec import ErrorReason, WorkerError
from agent_runtime.transport.dialer import Dialed
from agent_runtime.transport.h2.call import H2Call
from agent_runtime.transport.h2.connection import (
    ClientConnection,
    Headers,
    ProtocolError,
    StreamClosedError,
    StreamIdsExhaustedError,
)
from agent_runtime.transport.h2.frames import ErrorCode, HeaderError, error_name
from agent_runtime.transport.h2.wire import Status
from agent_runtime.transport.ws_framing import WsClientFraming

_log = logging.getLogger(__name__)

STREAM_WINDOW: Final = 65_535
"""How far kas may run ahead on one stream (HTTP/2's default, grpc's without BDP probing)."""
CONNECTION_WINDOW: Final = 4 << 20
"""How far kas may run ahead on the connection: never the limit, each stream is bounded already."""
_HIGH_WATER: Final = 1 << 20
"""Unsent bytes above which writers wait for the socket to drain."""
ACKNOWLEDGEMENT_HOLD_S: Final = 0.010
"""What only acknowledges kas's frames (a PING's answer, a SETTINGS ACK) waits at most this long for a
write to go with (our choice). GitLab's kas pings after each burst of data it receives (grpc's bandwidth
probe): answered at once, each ping cost a send of its own, three of about eight per tunnelled request
(docs/benchmarks.md, Session 9). Nothing waits for these answers but a round-trip estimate (grpc's
keepalive allows 20 s); 2 ms still left one answer per request alone, 10 ms none at a request every 3 ms."""

LOST: Final = Status(StatusCode.UNAVAILABLE, "the connection to kas was lost")
REFUSED: Final = Status(StatusCode.UNAVAILABLE, "kas went away before it accepted the stream")


@dataclass(frozen=True)
class LinkSettings:
    """Per-connection tuning; the defaults are agentk's."""

    keepalive_s: float = 55.0
    """Ping kas after this long without receiving anything."""
    ping_timeout_s: float = 20.0
    """Give the connection up when a ping is not answered within this time."""


class H2Link:
    """A KasSink (dialer.py) speaking HTTP/2 to kas for the calls opened on it."""

    window_update_threshold: Final = STREAM_WINDOW // 4
    """A stream's read bytes are returned to kas's window in pieces of at least this size."""

    def __init__(
        self,
        dialed: Dialed,
        *,
        websocket: bool,
        settings: LinkSettings,
        on_unusable: Callable[[H2Link], None],
        name: str,
        on_protocol_error: Callable[[WorkerError], None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = dialed.transport
        self._transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._ws = WsClientFraming(dialed.transport) if websocket else None
        self._settings = settings
        self._on_unusable = on_unusable
        self._on_protocol_error = on_protocol_error
        """Told when kas breaks the WebSocket or HTTP/2 protocol (the worker reports it)."""
        self._name = name
        self._h2 = ClientConnection(self, stream_window=STREAM_WINDOW, connection_window=CONNECTION_WINDOW)
        self._calls: dict[int, H2Call] = {}
        self._window_waiters: dict[int, asyncio.Future[None]] = {}
        self._writable: asyncio.Future[None] | None = None
        """Set while the socket's buffer is over the high-water mark."""
        self._flush_handle: asyncio.Handle | None = None
        """Set while a flush is due in this turn of the loop (or, for acknowledgements alone, soon)."""
        self._draining = False
        self._lost = False
        self._last_received = self._loop.time()
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._keepalive = self._loop.call_later(settings.keepalive_s, self._keepalive_due)
        self.idle = self._loop.create_future()
        """Resolved once the link carries no call and opens none (drained or lost)."""
        leftover = dialed.stream.attach(self)
        self._flush()
        if leftover:
            self.kas_data(leftover)
        if dialed.stream.lost:
            self.kas_lost()

    @property
    def usable(self) -> bool:
        """New calls may open streams here."""
        return not (self._draining or self._lost)

    @property
    def calls(self) -> int:
        """Calls open on the link."""
        return len(self._calls)

    # Used by H2Call

    def open_stream(self, call: H2Call, headers: Sequence[tuple[bytes, bytes]]) -> int:
        """Send `headers` on a new stream for `call`; 0 when this link takes no more streams."""
        if not self.usable:
            return 0
        if len(self._calls) >= self._h2.remote_max_streams:
            self.drain()  # kas's stream limit: later calls go to a new connection
            return 0
        try:
            stream_id = self._h2.open_stream(headers)
        except StreamIdsExhaustedError:
            self.drain()
            return 0
        except HeaderError as e:
            # Metadata HTTP/2 does not allow (the operator validates what tenants set; this is the last
            # line): that call fails; nothing was sent, the connection goes on.
            _log.warning("kas connection %s: call headers refused by HTTP/2: %s", self._name, e)
            call.fail(Status(StatusCode.INTERNAL, "the call's headers are not valid HTTP/2"))
            return 0
        self._calls[stream_id] = call
        self._schedule_flush()
        return stream_id

    async def send(self, call: H2Call, stream_id: int, data: bytes) -> None:
        """Send `data` on the stream as kas's flow-control windows and the socket allow."""
        while data:
            if call.over:
                raise call.error()
            if self._writable is not None:
                await self._writable
                continue
            try:
                window = self._h2.send_window(stream_id)
            except StreamClosedError:
                raise (call.error() if call.over else LOST.error()) from None
            if window <= 0:
                await self._window(stream_id)
                continue
            chunk, data = (data, b"") if window >= len(data) else (data[:window], data[window:])
            self._h2.send_data(stream_id, chunk)
        self._schedule_flush()

    def end_stream(self, stream_id: int) -> None:
        """Half-close the stream (after everything sent on it)."""
        if stream_id in self._calls:
            self._h2.end_stream(stream_id)
            self._schedule_flush()

    def return_window(self, stream_id: int, size: int) -> None:
        """`size` bytes of the stream were taken: kas may send that much more on it."""
        if stream_id in self._calls:
            self._h2.return_window(stream_id, size)
            self._schedule_flush()

    def forget(self, call: H2Call, *, reset: bool) -> None:
        """The call is over; `reset`: tell kas (RST_STREAM CANCEL) because the stream is still open."""
        stream_id = call.stream_id
        if self._calls.get(stream_id) is not call:
            return
        del self._calls[stream_id]
        self._wake_window(stream_id)
        if reset and not self._lost:
            self._h2.reset_stream(stream_id, ErrorCode.CANCEL)
            self._schedule_flush()
        else:
            self._h2.release(stream_id)
        self._close_if_done()

    # KasSink

    def kas_data(self, data: bytes) -> None:
        self._last_received = self._loop.time()
        if self._ws is None:
            self._receive(data)
            return
        try:
            payloads, close = self._ws.receive(data)
        except wstunnel.WebSocketProtocolError as e:
            self._protocol_error(f"kas broke the WebSocket protocol: {e}", ws_code=e.code)
            return
        for payload in payloads:
            if self._lost:
                return
            self._receive(payload)
        if close is not None:
            self._fail("kas closed the WebSocket connection", ws_code=close.code)

    def kas_lost(self) -> None:
        self._give_up(LOST)

    def kas_pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def kas_resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # Receiving

    def _receive(self, data: bytes) -> None:
        try:
            self._h2.receive(data)
        except ProtocolError as e:
            self._flush()  # the GOAWAY tells kas why
            self._protocol_error(f"kas broke the HTTP/2 protocol: {e}")
            return
        if self._h2.window_returned:
            self._h2.window_returned = False
            self._schedule_flush()  # kas may be waiting for the connection's window: not to be held
        else:
            self._schedule_acknowledgements()

    # connection.Listener

    def h2_headers(self, stream_id: int, headers: Headers, ended: bool) -> None:
        call = self._calls.get(stream_id)
        if call is not None:
            call.received_headers(headers, ended=ended)

    def h2_data(self, stream_id: int, data: bytes, flow_controlled: int) -> None:
        call = self._calls.get(stream_id)
        if call is not None:
            call.received_data(data, flow_controlled)

    def h2_trailers(self, stream_id: int, headers: Headers) -> None:
        call = self._calls.get(stream_id)
        if call is not None:
            call.received_trailers(headers)

    def h2_stream_ended(self, stream_id: int) -> None:
        call = self._calls.get(stream_id)
        if call is not None:
            call.stream_ended()

    def h2_stream_reset(self, stream_id: int, code: int) -> None:
        call = self._calls.get(stream_id)
        if call is None:
            return
        if code == ErrorCode.REFUSED_STREAM:
            self._calls.pop(stream_id)
            call.refused(REFUSED)
            self._close_if_done()
        else:
            call.stream_reset(code)

    def h2_window_opened(self, stream_id: int) -> None:
        if stream_id:
            self._wake_window(stream_id)
        else:
            self._wake_windows()

    def h2_goaway(self, code: int, last_stream_id: int) -> None:
        if code != ErrorCode.NO_ERROR:
            _log.warning("kas %s ended the connection: GOAWAY %s", self._name, error_name(code))
        for stream_id in [sid for sid in self._calls if sid > last_stream_id]:
            self._calls.pop(stream_id).refused(REFUSED)
        self.drain()

    # Keepalive (agentk's: a ping after 55 s without traffic, 20 s for the answer)

    def _keepalive_due(self) -> None:
        idle = self._loop.time() - self._last_received
        if idle < self._settings.keepalive_s:
            self._keepalive = self._loop.call_later(self._settings.keepalive_s - idle, self._keepalive_due)
            return
        self._h2.ping(os.urandom(8))
        self._schedule_flush()
        self._ping_deadline = self._loop.call_later(self._settings.ping_timeout_s, self._ping_unanswered)

    def h2_ping_acknowledged(self) -> None:
        if self._ping_deadline is not None:
            self._ping_deadline.cancel()
            self._ping_deadline = None
            self._keepalive = self._loop.call_later(self._settings.keepalive_s, self._keepalive_due)

    def _ping_unanswered(self) -> None:
        self._ping_deadline = None
        self._fail(f"kas did not answer a keepalive ping within {self._settings.ping_timeout_s:g} s")

    # Sending and ending

    def _schedule_flush(self) -> None:
        if self._lost:
            return
        if isinstance(self._flush_handle, asyncio.TimerHandle):
            self._flush_handle.cancel()  # held acknowledgements go now, with this
            self._flush_handle = None
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _schedule_acknowledgements(self) -> None:
        """Send what receiving produced (SETTINGS and PING acknowledgements) with the next write, or
        after ACKNOWLEDGEMENT_HOLD_S if none comes sooner."""
        if self._flush_handle is None and not self._lost:
            self._flush_handle = self._loop.call_later(ACKNOWLEDGEMENT_HOLD_S, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()  # a held flush, when a close flushes at once
        self._flush_handle = None
        data = self._h2.data_to_send()
        if not data or self._transport.is_closing():
            return
        if self._ws is not None:
            self._ws.send(data)
        else:
            self._transport.write(data)

    async def _window(self, stream_id: int) -> None:
        waiter = self._window_waiters.get(stream_id)
        if waiter is None:
            waiter = self._window_waiters[stream_id] = self._loop.create_future()
        await waiter

    def _wake_window(self, stream_id: int) -> None:
        waiter = self._window_waiters.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_windows(self) -> None:
        for stream_id in list(self._window_waiters):
            self._wake_window(stream_id)

    def drain(self) -> None:
        """Open no more streams here; close the connection once the open calls ended."""
        if not self._draining:
            self._draining = True
            self._on_unusable(self)
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._draining and not self._calls and not self._lost:
            self._flush()
            self._give_up(LOST)
            self._transport.close()

    def _protocol_error(self, message: str, *, ws_code: int | None = None) -> None:
        if not self._lost and self._on_protocol_error is not None:
            self._on_protocol_error(WorkerError(ErrorReason.PROTOCOL_ERROR, message))
        self._fail(message, ws_code=ws_code)

    def _fail(self, message: str, *, ws_code: int | None = None) -> None:
        if self._lost:
            return
        _log.warning("kas connection %s: %s", self._name, message)
        if self._ws is not None:
            self._ws.close(ws_code, "")
        self._give_up(Status(StatusCode.UNAVAILABLE, message))
        self._transport.close()

    def abort(self, status: Status) -> None:
        """End every call with `status` and drop the connection now."""
        self._give_up(status)
        self._transport.abort()

    def _give_up(self, status: Status) -> None:
        """No call can go on here: fail the ones left, stop the timers, tell the channel."""
        if self._lost:
            return
        self._lost = True
        self._keepalive.cancel()
        if self._ping_deadline is not None:
            self._ping_deadline.cancel()
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.connection_failed(status)
        self._wake_windows()
        self.kas_resume_writing()
        if not self.idle.done():
            self.idle.set_result(None)
        self._on_unusable(self)
