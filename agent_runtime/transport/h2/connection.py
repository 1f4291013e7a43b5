"""The client side of one HTTP/2 connection (RFC 9113), as much of it as a gRPC client uses: kas opens no
streams, pushes nothing, and everything it sends is checked here before the link sees it.

Written for the tunnel's request path, where the `h2` library's generality cost more CPU per tunnelled
request than everything else in the runtime (docs/benchmarks.md, Session 12): no event objects (the
listener is called directly), no dynamic HPACK table on the way out (frames.encode_headers), and a
frame is parsed in place. kas's protocol errors end the connection: a GOAWAY saying why is queued and
ConnectionError raised, after which the connection takes no more input.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Protocol, cast

import hpack

from agent_runtime.transport.h2 import frames
from agent_runtime.transport.h2.frames import ErrorCode, Flag, FrameType, Setting

Headers = list[tuple[bytes, bytes]]

MAX_HEADER_LIST: Final = 65_536
"""The largest header list we take from kas (decoded; our SETTINGS_MAX_HEADER_LIST_SIZE)."""
_MAX_HEADER_BLOCK: Final = MAX_HEADER_LIST
"""The largest encoded header block (HEADERS + CONTINUATION) we collect before decoding it."""
_FORGOTTEN: Final = 256
"""How many closed streams are remembered, to tell a late frame on one from a protocol error."""
_UNLIMITED: Final = 1 << 32


class ProtocolError(Exception):
    """kas broke the protocol; the connection is over (a GOAWAY with `code` is queued)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamClosedError(Exception):
    """The stream is not open for sending (reset, ended, or never opened)."""


class StreamIdsExhaustedError(Exception):
    """The connection has used every client stream id."""


class Listener(Protocol):
    """What the connection reports, in the order kas's frames say it."""

    def h2_headers(self, stream_id: int, headers: Headers, ended: bool) -> None:
        """kas's response headers (`ended`: they also end the stream: a trailers-only response)."""

    def h2_data(self, stream_id: int, data: bytes, flow_controlled: int) -> None:
        """A DATA frame's payload; `flow_controlled` also counts its padding."""

    def h2_trailers(self, stream_id: int, headers: Headers) -> None:
        """kas's trailers (they end the stream)."""

    def h2_stream_ended(self, stream_id: int) -> None:
        """kas ended the stream with a DATA frame (no trailers)."""

    def h2_stream_reset(self, stream_id: int, code: int) -> None:
        """kas reset the stream."""

    def h2_window_opened(self, stream_id: int) -> None:
        """More may be sent on the stream (0: on every stream)."""

    def h2_ping_acknowledged(self) -> None:
        """kas answered our PING."""

    def h2_goaway(self, code: int, last_stream_id: int) -> None:
        """kas goes away; streams above `last_stream_id` were not processed."""


class _Stream:
    __slots__ = ("headers_received", "local_closed", "receive_window", "remote_closed", "send_window")

    def __init__(self, send_window: int, receive_window: int) -> None:
        self.send_window = send_window
        self.receive_window = receive_window
        self.headers_received = False
        self.local_closed = False
        self.remote_closed = False


class ClientConnection:
    """HTTP/2 state of one connection: feed it kas's bytes, take what to send from `data_to_send()`."""

    def __init__(self, listener: Listener, *, stream_window: int, connection_window: int) -> None:
        self._listener = listener
        self._out = bytearray(frames.PREFACE)
        self._out += frames.settings(
            {
                Setting.ENABLE_PUSH: 0,  # a PUSH_PROMISE is then a protocol error
                Setting.MAX_CONCURRENT_STREAMS: 0,  # kas opens no streams towards us
                Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            }
            | ({} if stream_window == frames.DEFAULT_WINDOW else {Setting.INITIAL_WINDOW_SIZE: stream_window})
        )
        if connection_window > frames.DEFAULT_WINDOW:
            self._out += frames.window_update(0, connection_window - frames.DEFAULT_WINDOW)
        self._stream_window = stream_window
        self._connection_window = connection_window
        self._receive_window = connection_window
        self._unreturned = 0
        self.window_returned = False
        """A WINDOW_UPDATE for the connection is queued: kas may be waiting for it (send it now)."""
        self._send_window = frames.DEFAULT_WINDOW
        self._remote_initial_window = frames.DEFAULT_WINDOW
        self.remote_max_frame = frames.DEFAULT_MAX_FRAME
        self.remote_max_streams = _UNLIMITED
        self._streams: dict[int, _Stream] = {}
        self._forgotten: deque[int] = deque(maxlen=_FORGOTTEN)
        self._next_stream_id = 1
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._first_block = True
        self._pending = b""
        self._block: bytearray | None = None
        """A header block waiting for its CONTINUATION frames."""
        self._block_stream = 0
        self._block_end_stream = False
        self._failed = False
        self._encoded: tuple[tuple[tuple[bytes, bytes], ...], bytes] | None = None
        """The last request headers this connection encoded, and their block (a tunnel opens the same
        stream again and again)."""

    # Sending

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def open_stream(self, headers: Sequence[tuple[bytes, bytes]]) -> int:
        """Send `headers` on a new stream and return its id; frames.HeaderError for headers HTTP/2
        refuses (nothing is sent then), StreamIdsExhaustedError when no stream id is left."""
        key = tuple(headers)
        if self._encoded is not None and self._encoded[0] == key:
            block = self._encoded[1]
        else:
            frames.check_request_headers(key)
            block = frames.encode_headers(key)
            self._encoded = (key, block)
        if self._first_block:
            self._first_block = False
            block = frames.TABLE_SIZE_ZERO + block
        stream_id = self._next_stream_id
        if stream_id > frames.MAX_WINDOW:
            raise StreamIdsExhaustedError
        self._next_stream_id += 2
        self._streams[stream_id] = _Stream(self._remote_initial_window, self._stream_window)
        limit = self.remote_max_frame
        if len(block) <= limit:
            self._out += frames.frame(FrameType.HEADERS, Flag.END_HEADERS, stream_id, block)
            return stream_id
        self._out += frames.frame(FrameType.HEADERS, 0, stream_id, block[:limit])
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            flags = Flag.END_HEADERS if last else 0
            self._out += frames.frame(FrameType.CONTINUATION, flags, stream_id, block[start : start + limit])
        return stream_id

    def send_window(self, stream_id: int) -> int:
        """How much may be sent on the stream now; StreamClosedError when it is not open for sending."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError
        return min(self._send_window, stream.send_window)

    def send_data(self, stream_id: int, data: bytes) -> None:
        """Send `data` (at most `send_window(stream_id)` bytes) in frames kas's frame size allows."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError
        n = len(data)
        stream.send_window -= n
        self._send_window -= n
        limit = self.remote_max_frame
        if n <= limit:
            self._out += frames.frame(FrameType.DATA, 0, stream_id, data)
            return
        for start in range(0, n, limit):
            self._out += frames.frame(FrameType.DATA, 0, stream_id, data[start : start + limit])

    def end_stream(self, stream_id: int) -> None:
        """Half-close the stream (an empty DATA frame with END_STREAM)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        stream.local_closed = True
        self._out += frames.frame(FrameType.DATA, Flag.END_STREAM, stream_id)
        if stream.remote_closed:
            self._forget(stream_id)

    def reset_stream(self, stream_id: int, code: ErrorCode) -> None:
        """End the stream both ways with RST_STREAM `code` (nothing when it is closed already)."""
        if self._streams.get(stream_id) is not None:
            self._out += frames.rst_stream(stream_id, code)
            self._forget(stream_id)

    def release(self, stream_id: int) -> None:
        """The stream is of no more interest: forget it without telling kas (it ended its side)."""
        if stream_id in self._streams:
            self._forget(stream_id)

    def return_window(self, stream_id: int, size: int) -> None:
        """`size` bytes of the stream were read: kas may send that much more on it."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        stream.receive_window += size
        self._out += frames.window_update(stream_id, size)

    def ping(self, payload: bytes) -> None:
        self._out += frames.frame(FrameType.PING, 0, 0, payload)

    def _forget(self, stream_id: int) -> None:
        del self._streams[stream_id]
        self._forgotten.append(stream_id)

    # Receiving

    def receive(self, data: bytes) -> None:
        """Take kas's bytes; complete frames are acted on, the rest waits for more."""
        if self._failed:
            return
        buffer = self._pending + data if self._pending else data
        self._pending = b""
        try:
            self._pending = buffer[self._frames(buffer) :]
        except ProtocolError as e:
            self._failed = True
            self._out += frames.goaway(0, e.code)
            raise

    def _frames(self, buffer: bytes) -> int:
        """Act on the complete frames in `buffer`; returns where the incomplete rest starts."""
        size = len(buffer)
        position = 0
        while size - position >= 9:
            high, low, kind, flags, stream_id = frames.HEADER.unpack_from(buffer, position)
            length = (high << 16) | low
            if length > frames.DEFAULT_MAX_FRAME:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            end = position + 9 + length
            if end > size:
                break
            payload = buffer[position + 9 : end]
            position = end
            if self._block is not None and kind != FrameType.CONTINUATION:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "a header block without its end")
            if kind < len(_HANDLERS):  # unknown frame types are ignored (RFC 9113 §5.5)
                _HANDLERS[kind](self, flags, stream_id & frames.MAX_WINDOW, payload)
        return position

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        flow_controlled = len(payload)
        self._receive_window -= flow_controlled
        if self._receive_window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        data = _unpad(flags, payload)
        self._consumed(flow_controlled)
        stream = self._receiving(stream_id)
        if stream is None:
            return  # a late frame on a stream we ended
        if not stream.headers_received:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA before the response headers")
        stream.receive_window -= flow_controlled
        if stream.receive_window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the stream's window")
        self._listener.h2_data(stream_id, data, flow_controlled)
        if flags & Flag.END_STREAM:
            self._remote_closed(stream_id, stream)
            self._listener.h2_stream_ended(stream_id)

    def _consumed(self, size: int) -> None:
        """`size` bytes of the connection's window are used: return them once half of it is.

        Each stream is bounded by its own window already, so the connection's never holds kas back."""
        self._unreturned += size
        if self._unreturned >= self._connection_window // 2:
            self._receive_window += self._unreturned
            self._out += frames.window_update(0, self._unreturned)
            self._unreturned = 0
            self.window_returned = True

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        fragment = _unpad(flags, payload)
        if flags & Flag.PRIORITY:
            if len(fragment) < 5:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            fragment = fragment[5:]
        end_stream = bool(flags & Flag.END_STREAM)
        if flags & Flag.END_HEADERS:
            self._header_block(stream_id, fragment, end_stream)
        else:
            self._block = bytearray(fragment)
            self._block_stream, self._block_end_stream = stream_id, end_stream

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        block = self._block
        if block is None or stream_id != self._block_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        block += payload
        if len(block) > _MAX_HEADER_BLOCK:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "a header block above 64 KiB")
        if flags & Flag.END_HEADERS:
            self._block = None
            self._header_block(stream_id, bytes(block), self._block_end_stream)

    def _header_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        try:
            # Decoded even for a stream we ended: the block may change the HPACK table.
            headers = cast("Headers", self._decoder.decode(block, raw=True))  # raw: (bytes, bytes) pairs
        except hpack.HPACKError as e:
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"HPACK refuses a block: {e}") from None
        stream = self._receiving(stream_id)
        if stream is None:
            return
        if not stream.headers_received:
            _check_response_headers(headers, trailers=False)
            stream.headers_received = True
            if end_stream:
                self._remote_closed(stream_id, stream)
            self._listener.h2_headers(stream_id, headers, end_stream)
            return
        if not end_stream:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "trailers that do not end the stream")
        _check_response_headers(headers, trailers=True)
        self._remote_closed(stream_id, stream)
        self._listener.h2_trailers(stream_id, headers)

    def _receiving(self, stream_id: int) -> _Stream | None:
        """The stream a frame from kas is for; None for one we ended (the frame is dropped)."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            if stream.remote_closed:
                raise ProtocolError(ErrorCode.STREAM_CLOSED, f"a frame on ended stream {stream_id}")
            return stream
        if stream_id % 2 == 0 or stream_id >= self._next_stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"a frame on stream {stream_id}, never opened")
        if stream_id not in self._forgotten:
            # Ended so long ago that it is not remembered: tell kas, as for any closed stream.
            self._out += frames.rst_stream(stream_id, ErrorCode.STREAM_CLOSED)
        return None

    def _remote_closed(self, stream_id: int, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            self._forget(stream_id)

    def _priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY of a wrong size")

    def _rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of a wrong size")
        if stream_id % 2 == 0 or stream_id >= self._next_stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on unopened {stream_id}")
        if stream_id in self._streams:
            self._forget(stream_id)
            self._listener.h2_stream_reset(stream_id, frames.unpack_code(payload))

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & Flag.ACK:
            if payload:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of a wrong size")
        for identifier, value in frames.parse_settings(payload):
            self._setting(identifier, value)
        self._out += frames.SETTINGS_ACK
        self._listener.h2_window_opened(0)  # the initial window may have grown

    def _setting(self, identifier: int, value: int) -> None:
        if identifier == Setting.ENABLE_PUSH and value > 1:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH above 1")
        if identifier == Setting.MAX_CONCURRENT_STREAMS:
            self.remote_max_streams = value
        elif identifier == Setting.INITIAL_WINDOW_SIZE:
            if value > frames.MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE > 2^31-1")
            delta, self._remote_initial_window = value - self._remote_initial_window, value
            for stream in self._streams.values():
                stream.send_window += delta
                if stream.send_window > frames.MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "a stream's window above 2^31-1")
        elif identifier == Setting.MAX_FRAME_SIZE:
            if not frames.DEFAULT_MAX_FRAME <= value <= frames.MAX_FRAME_LIMIT:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
            self.remote_max_frame = value
        # HEADER_TABLE_SIZE: we index nothing (frames.TABLE_SIZE_ZERO); the rest is advisory or unknown.

    def _push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING of a wrong size")
        if flags & Flag.ACK:
            self._listener.h2_ping_acknowledged()
        else:
            self._out += frames.frame(FrameType.PING, Flag.ACK, 0, payload)

    def _goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY too short")
        self._listener.h2_goaway(frames.unpack_code(payload, 4), frames.unpack_u32(payload))

    def _window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong size")
        increment = frames.unpack_u32(payload)
        if not increment:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
        if not stream_id:
            self._send_window += increment
            if self._send_window > frames.MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "the connection's window above 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                return  # a stream we ended, or one kas's update crossed with our reset
            stream.send_window += increment
            if stream.send_window > frames.MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "a stream's window above 2^31-1")
        self._listener.h2_window_opened(stream_id)


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & Flag.PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]


def _check_response_headers(headers: Headers, *, trailers: bool) -> None:
    """kas's headers as HTTP/2 allows them (RFC 9113 §8.2, §8.3.2): a response's :status alone as a
    pseudo-header, first, none in trailers; names in lower case and no connection-specific ones; no NUL,
    CR or LF in a value, nor whitespace around it. Anything else is a malformed response."""
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if trailers or regular or name != b":status":
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"pseudo-header {name[:32]!r} there")
        else:
            regular = True
            if name != name.lower() or name in frames.CONNECTION_SPECIFIC:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"header name {name[:32]!r} not allowed")
        if frames.forbidden_value(value):
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"the value of {name[:32]!r} is malformed")
    if not trailers and (not headers or headers[0][0] != b":status"):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "response headers without :status")


_Handler = Callable[[ClientConnection, int, int, bytes], None]
_HANDLERS: Final[tuple[_Handler, ...]] = (
    ClientConnection._data,
    ClientConnection._headers,
    ClientConnection._priority,
    ClientConnection._rst_stream,
    ClientConnection._settings,
    ClientConnection._push_promise,
    ClientConnection._ping,
    ClientConnection._goaway,
    ClientConnection._window_update,
    ClientConnection._continuation,
)
"""Frame handlers by frame type (one table for all connections)."""
