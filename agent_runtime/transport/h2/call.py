"""One gRPC call on an HTTP/2 connection to kas, with the surface of grpc.aio's calls the modules use
(`read`, `write`, `done_writing`, `initial_metadata`, `done`, `cancel`, `add_done_callback`) and the
runtime's errors (RpcError with the call's status), as the grpc.aio path's adapter gives them too."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent_runtime.rpc_status import EOF, EndOfStream, RpcError, StatusCode, UsageError
from agent_runtime.transport.h2 import wire
from agent_runtime.transport.h2.wire import Status

if TYPE_CHECKING:
    from agent_runtime.transport.h2.link import H2Link

LOCALLY_CANCELLED = Status(StatusCode.CANCELLED, "Locally cancelled by application!")


class H2Call:
    """A streaming call of bytes messages; opens its stream on the first operation.

    Given a `request`, the call sends it and half-closes at once (a unary or server-streaming call).
    `gzip`: the request goes gzip-compressed (the request headers must say so too)."""

    def __init__(
        self,
        connect: Callable[[], Any],
        headers: list[tuple[bytes, bytes]],
        max_message: int,
        request: bytes | None = None,
        *,
        gzip: bool = False,
    ) -> None:
        self._connect = connect
        """Returns (awaitable) a connection with room for a new stream: waits for kas (wait-for-ready)."""
        self._headers = headers
        self._link: H2Link | None = None
        self._stream_id = 0
        self._opening: asyncio.Lock | None = None
        self._replaying_on: H2Link | None = None
        """The connection a refused stream is being opened again on, until the replay is sent."""
        self._reassembler = wire.Reassembler(max_message)
        self._messages: deque[bytes] = deque()
        self._status: Status | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[H2Call], None]] = []
        self._half_closed = request is not None
        self._initial_metadata: tuple[tuple[str, str], ...] | None = None
        """kas's response headers without the pseudo-headers; () after a trailers-only response."""
        self._headers_waiter: asyncio.Future[None] | None = None
        self._unacknowledged = 0
        """Bytes received and not yet returned to kas's window for this stream. They are returned while
        the caller keeps up (nothing unread): as they arrive, and when a read empties the queue. So kas
        runs at most one window past what the caller left unread, and a message larger than the window
        still arrives."""
        self._sent: list[bytes] | None = [] if request is None else [wire.frame(request, gzip=gzip)]
        """What we sent before kas's response headers, to send again if kas refuses the stream unprocessed
        (GOAWAY below its id, REFUSED_STREAM); None once kas answered (the call is committed)."""

    # The grpc.aio surface

    async def write(self, message: bytes) -> None:
        """Send one message; RpcError once the call is over."""
        link = await self._open()
        if self._half_closed:
            raise UsageError("write after done_writing")
        data = wire.frame(message)
        if self._sent is not None:
            self._sent.append(data)
        await link.send(self, self._stream_id, data)

    async def done_writing(self) -> None:
        """Half-close: no more messages from us."""
        link = await self._open()
        self._raise_if_over()
        if not self._half_closed:
            self._half_closed = True
            link.end_stream(self._stream_id)

    async def read(self) -> bytes | EndOfStream:
        """The next message; EOF after the last one of a call that ended OK, else RpcError."""
        while True:
            if self._link is None and self._status is None:
                await self._open()
            if self._messages:
                message = self._messages.popleft()
                if not self._messages:
                    self._return_window()
                    self._run_callbacks_if_done()
                return message
            status = self._status
            if status is not None:
                self._run_callbacks_if_done()
                if status.code is StatusCode.OK:
                    return EOF
                raise status.error()
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    async def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        """kas's response headers (empty when the call ended without any), once they arrived."""
        while self._initial_metadata is None and self._status is None:
            if self._link is None:
                await self._open()
                continue
            if self._headers_waiter is None or self._headers_waiter.done():
                # A fresh future if a cancelled caller took the last one down with it (no shield, which
                # costs a task-like wrapper per wait: one waiter at a time in practice).
                self._headers_waiter = asyncio.get_running_loop().create_future()
            await self._headers_waiter
        return self._initial_metadata or ()

    def done(self) -> bool:
        """The call has its status and nothing received is left unread (grpc.aio's meaning)."""
        return self._status is not None and not self._messages

    def cancel(self) -> bool:
        """End the call from our side (RST_STREAM CANCEL); False when it was already over."""
        if self._status is not None:
            return False
        self._end(LOCALLY_CANCELLED, reset=True)
        return True

    def fail(self, status: Status) -> None:
        """End the call from our side with `status` (a deadline, a broken response): RST_STREAM CANCEL."""
        self._end(status, reset=True)

    def add_done_callback(self, callback: Callable[[H2Call], None]) -> None:
        """Call `callback(self)` once the call is done (at once if it is)."""
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    # Called by the connection

    def received_headers(self, headers: Sequence[tuple[bytes, bytes]], ended: bool) -> None:
        """kas's response HEADERS (`ended`: they ended the stream: a trailers-only response)."""
        self._sent = None
        self._initial_metadata = () if ended else wire.metadata(headers)
        self._reassembler.gzip = wire.gzip_encoded(headers)
        self._wake_headers()
        status = wire.response_status(headers)
        if status is None and ended:
            status = Status(StatusCode.INTERNAL, "kas ended the stream without a grpc-status")
        if status is not None:
            self._end(status, reset=not ended)

    def received_data(self, data: bytes, flow_controlled: int) -> None:
        """A DATA frame's payload (`flow_controlled` also counts its padding)."""
        if self._status is not None:
            return  # nobody will read it; the connection's window is the link's
        keeping_up = not self._messages
        self._unacknowledged += flow_controlled
        try:
            messages = self._reassembler.feed(data)
        except wire.MessageTooLargeError as e:
            self._end(Status(StatusCode.RESOURCE_EXHAUSTED, str(e)), reset=True)
            return
        except wire.CompressedMessageError as e:
            self._end(Status(StatusCode.INTERNAL, str(e)), reset=True)
            return
        if keeping_up:
            self._return_window()
        if messages:
            self._messages.extend(messages)
            self._wake()

    def received_trailers(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """kas's trailers: the call's status."""
        status = wire.trailer_status(headers)
        if status.code is StatusCode.OK and self._reassembler.partial:
            status = Status(StatusCode.INTERNAL, "kas ended the stream in the middle of a message")
        self._end(status, reset=not self._half_closed)

    def stream_ended(self) -> None:
        """kas closed its side; without trailers before it, that is an error."""
        if self._status is None:
            self._end(Status(StatusCode.INTERNAL, "kas ended the stream without trailers"), reset=True)

    def stream_reset(self, error_code: int) -> None:
        """kas reset the stream."""
        if self._status is None:
            self._end(wire.reset_status(error_code), reset=False)

    def refused(self, status: Status) -> None:
        """kas did not process the stream: open it again elsewhere unless kas had answered on it."""
        if self._status is not None:
            return
        if self._sent is None:
            self._end(status, reset=False)
            return
        self._link, self._stream_id = None, 0
        self._wake()  # a waiting reader opens the stream again

    def connection_failed(self, status: Status) -> None:
        """The connection under the call is gone (or kas went away before this stream started)."""
        if self._status is None:
            self._end(status, reset=False)

    @property
    def stream_id(self) -> int:
        """The HTTP/2 stream (0 until opened)."""
        return self._stream_id

    @property
    def over(self) -> bool:
        """The call has its status (messages may still be unread)."""
        return self._status is not None

    def error(self) -> RpcError:
        """What writing to the call raises now that it is over."""
        assert self._status is not None
        return self._status.error()

    # Internals

    async def _open(self) -> H2Link:
        link = self._link
        if link is not None:
            return link
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            while self._link is None:
                self._raise_if_over()
                candidate: H2Link = await self._connect()
                self._raise_if_over()  # cancelled while waiting for kas
                stream_id = candidate.open_stream(self, self._headers)
                if not stream_id:
                    continue
                self._stream_id, self._replaying_on = stream_id, candidate
                for data in self._sent or ():
                    await candidate.send(self, stream_id, data)
                if self._half_closed:
                    candidate.end_stream(stream_id)
                self._replaying_on = None
                if self._stream_id == stream_id:  # not refused again meanwhile
                    self._link = candidate
            return self._link

    def _raise_if_over(self) -> None:
        if self._status is not None:
            raise self._status.error()

    def _end(self, status: Status, *, reset: bool) -> None:
        if self._status is not None:
            return
        self._status = status
        link = self._link or self._replaying_on
        if link is not None:
            link.forget(self, reset=reset)
        self._wake()
        self._wake_headers()
        self._run_callbacks_if_done()

    def _wake_headers(self) -> None:
        waiter, self._headers_waiter = self._headers_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _run_callbacks_if_done(self) -> None:
        if self._callbacks and self.done():
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback(self)

    def _return_window(self) -> None:
        link = self._link
        if self._status is not None or link is None or self._unacknowledged < link.window_update_threshold:
            return
        size, self._unacknowledged = self._unacknowledged, 0
        link.return_window(self._stream_id, size)
