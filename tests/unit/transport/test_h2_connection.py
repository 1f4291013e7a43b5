"""The tunnel's own HTTP/2 client state (agent_runtime.transport.h2.connection) against the `h2` library's
server side, and against frames kas must not send: each protocol error ends the connection with a GOAWAY
naming it, and nothing kas sends raises anything else."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import hyperframe.frame
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_runtime.transport.h2 import frames
from agent_runtime.transport.h2.connection import ClientConnection, Headers, ProtocolError, StreamClosedError
from agent_runtime.transport.h2.frames import ErrorCode, Flag, FrameType, HeaderError, Setting

REQUEST: Headers = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/gitlab.agent.reverse_tunnel.rpc.ReverseTunnel/Connect"),
    (b":authority", b"kas.example"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"gitlab-agent-operator/0.1"),
    (b"authorization", b"Bearer " + b"t" * 200),  # a value above 127 bytes: a multi-byte length
    (b"x-custom-name", b"v"),  # a name outside the static table
]


class Recorder:
    """A connection.Listener that writes down what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    def h2_headers(self, stream_id: int, headers: Headers, ended: bool) -> None:
        self.seen.append(("headers", stream_id, [tuple(h) for h in headers], ended))

    def h2_data(self, stream_id: int, data: bytes, flow_controlled: int) -> None:
        self.seen.append(("data", stream_id, data, flow_controlled))

    def h2_trailers(self, stream_id: int, headers: Headers) -> None:
        self.seen.append(("trailers", stream_id, [tuple(h) for h in headers]))

    def h2_stream_ended(self, stream_id: int) -> None:
        self.seen.append(("ended", stream_id))

    def h2_stream_reset(self, stream_id: int, code: int) -> None:
        self.seen.append(("reset", stream_id, code))

    def h2_window_opened(self, stream_id: int) -> None:
        self.seen.append(("window", stream_id))

    def h2_ping_acknowledged(self) -> None:
        self.seen.append(("pong",))

    def h2_goaway(self, code: int, last_stream_id: int) -> None:
        self.seen.append(("goaway", code, last_stream_id))


def connected() -> tuple[ClientConnection, Recorder, h2.connection.H2Connection]:
    """A client and an `h2` server with the preface and SETTINGS exchanged both ways."""
    recorder = Recorder()
    client = ClientConnection(recorder, stream_window=65_535, connection_window=4 << 20)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive(server.data_to_send())
    server.receive_data(client.data_to_send())
    recorder.seen.clear()
    return client, recorder, server


def server_events(server: h2.connection.H2Connection, client: ClientConnection) -> list[h2.events.Event]:
    events = server.receive_data(client.data_to_send())
    for event in events:
        if isinstance(event, h2.events.DataReceived):
            server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    return events


def test_a_call_both_ways_through_a_real_http2_server() -> None:
    client, recorder, server = connected()
    stream_id = client.open_stream(REQUEST)
    client.send_data(stream_id, b"hello")
    client.end_stream(stream_id)
    events = server_events(server, client)
    received = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert [tuple(h) for h in received.headers] == REQUEST
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"hello"
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)

    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(stream_id, b"world")
    server.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
    client.receive(server.data_to_send())
    assert [s for s in recorder.seen if s[0] != "window"] == [
        ("headers", stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")], False),
        ("data", stream_id, b"world", 5),
        ("trailers", stream_id, [(b"grpc-status", b"0")]),
    ]
    with pytest.raises(StreamClosedError):
        client.send_window(stream_id)


def test_our_settings_as_an_http2_server_reads_them() -> None:
    client = ClientConnection(Recorder(), stream_window=1 << 20, connection_window=4 << 20)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    assert server.remote_settings.enable_push == 0
    assert server.remote_settings.max_concurrent_streams == 0
    assert server.remote_settings.max_header_list_size == 65_536
    assert server.remote_settings.initial_window_size == 1 << 20
    assert server.outbound_flow_control_window == 4 << 20


def test_kas_limits_the_streams_we_open_only_when_it_says_so() -> None:
    client = ClientConnection(Recorder(), stream_window=65_535, connection_window=65_535)
    client.receive(frames.settings({}))
    assert client.remote_max_streams >= 1 << 31
    client.receive(frames.settings({Setting.MAX_CONCURRENT_STREAMS: 7}))
    assert client.remote_max_streams == 7


HYPERFRAME_CLASSES = {
    "DATA": "DataFrame",
    "HEADERS": "HeadersFrame",
    "PRIORITY": "PriorityFrame",
    "RST_STREAM": "RstStreamFrame",
    "SETTINGS": "SettingsFrame",
    "PUSH_PROMISE": "PushPromiseFrame",
    "PING": "PingFrame",
    "GOAWAY": "GoAwayFrame",
    "WINDOW_UPDATE": "WindowUpdateFrame",
    "CONTINUATION": "ContinuationFrame",
}


def test_our_wire_numbers_are_those_of_an_independent_http2_implementation() -> None:
    """Frame types, flags, settings and error codes as the h2/hyperframe libraries number them."""
    assert {
        name: hyperframe.frame.FRAMES[kind.value].__name__ for name, kind in FrameType.__members__.items()
    } == HYPERFRAME_CLASSES
    assert {code.name: code.value for code in ErrorCode} == {
        code.name: code.value for code in h2.errors.ErrorCodes
    }
    theirs = {code.name: code.value for code in h2.settings.SettingCodes}
    assert {name: int(setting) for name, setting in Setting.__members__.items()} == {
        name: theirs[name] for name in Setting.__members__
    }
    defined = {
        flag.name: flag.bit
        for frame_class in hyperframe.frame.FRAMES.values()
        for flag in frame_class.defined_flags
    }
    assert {name: int(flag) for name, flag in Flag.__members__.items()} == {
        name: defined[name] for name in Flag.__members__
    }


def test_frames_we_build_are_laid_out_as_rfc_9113_says() -> None:
    """Length, type, flags (0 where the type defines none), stream id, payload; RFC 9113 §4.1, §6."""
    assert frames.window_update(3, 5) == bytes.fromhex("00000408000000000300000005")
    assert frames.rst_stream(3, ErrorCode.CANCEL) == bytes.fromhex("00000403000000000300000008")
    assert frames.goaway(7, ErrorCode.PROTOCOL_ERROR) == bytes.fromhex("0000080700000000000000000700000001")
    assert frames.settings({Setting.ENABLE_PUSH: 0, Setting.MAX_FRAME_SIZE: 1 << 14}) == bytes.fromhex(
        "00000c040000000000000200000000000500004000"
    )
    assert frames.frame(FrameType.DATA, 0, 1, b"x" * 70_000)[:3] == (70_000).to_bytes(3, "big")
    assert frames.error_name(ErrorCode.CANCEL) == "CANCEL"
    assert frames.error_name(0x1234) == "4660"


def test_header_blocks_use_the_static_table_and_index_nothing() -> None:
    """RFC 7541 Appendix A: `:method: POST` is entry 3, `content-type` entry 31; a value goes as a literal
    without indexing (0000 prefix), never into kas's dynamic table."""
    assert frames.encode_headers([(b":method", b"POST")]) == b"\x83"
    assert frames.encode_headers([(b"content-type", b"application/grpc")]) == (
        b"\x0f\x10" + bytes([len(b"application/grpc")]) + b"application/grpc"
    )


def test_only_the_first_header_block_sets_kas_table_size_to_zero() -> None:
    client, _, _ = connected()
    client.open_stream(REQUEST)
    client.open_stream(REQUEST)
    sent = client.data_to_send()
    blocks = [payload for kind, _, payload in _frames(sent) if kind == FrameType.HEADERS]
    assert blocks[0] == frames.TABLE_SIZE_ZERO + frames.encode_headers(REQUEST)
    assert blocks[1] == frames.encode_headers(REQUEST)


def _frames(sent: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags, payload) of each whole frame in `sent`."""
    out, offset = [], 0
    while offset + 9 <= len(sent):
        length = int.from_bytes(sent[offset : offset + 3], "big")
        out.append((sent[offset + 3], sent[offset + 4], sent[offset + 9 : offset + 9 + length]))
        offset += 9 + length
    return out


def _headers_of_block_size(size: int) -> Headers:
    """REQUEST plus one header whose value makes the (second, unprefixed) block `size` bytes long."""
    headers = [*REQUEST, (b"x-pad", b"")]
    for length in range(size):
        headers[-1] = (b"x-pad", b"p" * length)
        if len(frames.encode_headers(headers)) >= size:
            break
    assert len(frames.encode_headers(headers)) == size
    return headers


@pytest.mark.parametrize(
    ("size", "expected"),
    [(16_384, [0x4]), (16_385, [0x0, 0x4]), (32_768, [0x0, 0x4]), (32_769, [0x0, 0x0, 0x4])],
)
def test_a_header_block_is_cut_at_kas_frame_size(size: int, expected: list[int]) -> None:
    """HEADERS (END_HEADERS only on the last frame, never END_STREAM), then CONTINUATION frames."""
    client, _, _ = connected()
    client.open_stream(REQUEST)  # the first block carries the table size update
    client.data_to_send()
    client.open_stream(_headers_of_block_size(size))
    sent = _frames(client.data_to_send())
    assert [flags for _, flags, _ in sent] == expected
    assert [kind for kind, _, _ in sent] == [FrameType.HEADERS] + [FrameType.CONTINUATION] * (
        len(expected) - 1
    )
    assert sum(len(payload) for _, _, payload in sent) == size


def test_data_of_exactly_one_frame_goes_as_one_and_nothing_goes_on_a_closed_stream() -> None:
    client, _, _ = connected()
    stream_id = client.open_stream(REQUEST)
    client.data_to_send()
    client.send_data(stream_id, b"d" * 16_384)
    assert [(kind, flags) for kind, flags, _ in _frames(client.data_to_send())] == [(FrameType.DATA, 0)]
    client.end_stream(stream_id)
    assert [(kind, flags) for kind, flags, _ in _frames(client.data_to_send())] == [(FrameType.DATA, 0x1)]
    with pytest.raises(StreamClosedError):
        client.send_data(stream_id, b"late")
    with pytest.raises(StreamClosedError):
        client.send_window(stream_id)
    client.end_stream(stream_id)  # a second half-close sends nothing
    assert client.data_to_send() == b""


def test_a_connection_window_equal_to_the_default_sends_no_update() -> None:
    """A WINDOW_UPDATE of 0 would be a protocol error for kas."""
    client = ClientConnection(Recorder(), stream_window=65_535, connection_window=65_535)
    assert [kind for kind, _, _ in _frames(client.data_to_send()[len(frames.PREFACE) :])] == [
        FrameType.SETTINGS
    ]


def test_the_connection_window_goes_back_at_exactly_half() -> None:
    client = ClientConnection(Recorder(), stream_window=65_535, connection_window=65_535)
    client.receive(frames.settings({}))
    first, second = client.open_stream(REQUEST), client.open_stream(REQUEST)
    client.data_to_send()
    client.receive(_headers_frame(first, OK) + _headers_frame(second, OK))
    client.receive(frames.frame(FrameType.DATA, 0, first, b"x" * 16_384))
    client.receive(frames.frame(FrameType.DATA, 0, second, b"x" * 16_382))
    assert not client.window_returned  # 32 766 of 65 535
    client.receive(frames.frame(FrameType.DATA, 0, second, b"x"))
    assert client.window_returned  # 32 767: half, rounded down
    assert frames.window_update(0, 32_767) in client.data_to_send()


def test_kas_settings_wake_every_stream_waiting_for_its_window() -> None:
    client, recorder, _ = connected()
    client.open_stream(REQUEST)
    client.receive(frames.settings({Setting.INITIAL_WINDOW_SIZE: 1 << 20}))
    assert ("window", 0) in recorder.seen


@pytest.mark.parametrize("length", [126, 127, 128, 254, 255, 256, 383, 384, 16_510, 16_511, 16_512])
def test_value_lengths_at_each_hpack_integer_boundary(length: int) -> None:
    """A string length takes a 7-bit prefix, then 7 bits per byte (RFC 7541 §5.1): 127 and 127 + 128^n
    are where one more byte starts."""
    headers = [(b"x-a", b"v" * length), (b"x-b", b"w")]
    assert (
        hpack.Decoder(max_header_list_size=1 << 20).decode(frames.encode_headers(headers), raw=True)
        == headers
    )


def test_the_same_headers_again_and_headers_above_the_frame_size() -> None:
    client, _, server = connected()
    big = [*REQUEST, (b"x-big", b"b" * 40_000)]  # HEADERS + CONTINUATION frames
    opened = [client.open_stream(REQUEST), client.open_stream(REQUEST), client.open_stream(big)]
    requests = [e for e in server_events(server, client) if isinstance(e, h2.events.RequestReceived)]
    assert [e.stream_id for e in requests] == opened == [1, 3, 5]
    assert [[tuple(h) for h in e.headers] for e in requests] == [REQUEST, REQUEST, big]


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"content-type", b"user-agent", b"x-a", b"grpc-timeout", b"authorization"]),
            st.binary(min_size=0, max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        ),
        max_size=12,
    )
)
def test_any_header_block_decodes_to_its_headers(headers: Headers) -> None:
    block = frames.TABLE_SIZE_ZERO + frames.encode_headers(headers)
    assert [tuple(h) for h in hpack.Decoder().decode(block, raw=True)] == headers


@pytest.mark.parametrize(
    "headers",
    [
        [(b":method", b"POST"), (b"Content-Type", b"x")],
        [(b"content-type", b"x"), (b":path", b"/")],
        [(b":status", b"200")],
        [(b"connection", b"close")],
        [(b"te", b"gzip")],
        [(b"x-a", b"line\r\nx-injected: 1")],
        [(b"x-a", b" padded")],
        [(b"", b"x")],
    ],
)
def test_headers_http2_does_not_allow_are_refused_and_nothing_is_sent(headers: Headers) -> None:
    client, _, _ = connected()
    with pytest.raises(HeaderError):
        client.open_stream(headers)
    assert client.data_to_send() == b""
    assert client.open_stream(REQUEST) == 1  # the refused headers used no stream id


def test_flow_control_follows_kas_settings_and_window_updates() -> None:
    client, recorder, server = connected()
    stream_id = client.open_stream(REQUEST)
    assert client.send_window(stream_id) == 65_535
    client.send_data(stream_id, b"x" * 65_535)
    assert client.send_window(stream_id) == 0
    server.receive_data(client.data_to_send())
    server.increment_flow_control_window(65_535, stream_id=stream_id)
    client.receive(server.data_to_send())
    assert client.send_window(stream_id) == 0  # the connection's window is still used up
    server.increment_flow_control_window(65_535)
    client.receive(server.data_to_send())
    assert client.send_window(stream_id) == 65_535
    assert ("window", stream_id) in recorder.seen

    server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100_000})
    client.receive(server.data_to_send())
    assert client.send_window(stream_id) == 65_535  # the connection's window is the smaller now
    server.increment_flow_control_window(100_000)
    client.receive(server.data_to_send())
    assert client.send_window(stream_id) == 100_000


def test_data_is_sent_in_frames_of_kas_frame_size() -> None:
    client, _, server = connected()
    stream_id = client.open_stream(REQUEST)
    client.send_data(stream_id, b"y" * 40_000)
    sizes = [len(e.data) for e in server_events(server, client) if isinstance(e, h2.events.DataReceived)]
    assert sizes == [16_384, 16_384, 7_232]


def test_the_connection_window_is_returned_when_half_used() -> None:
    client, _, server = connected()
    sent = 0
    streams = [client.open_stream(REQUEST) for _ in range(40)]
    server_events(server, client)
    for stream_id in streams:
        server.send_headers(stream_id, [(b":status", b"200")])
        for _ in range(4):
            server.send_data(stream_id, b"z" * 15_000)
        sent += 60_000
        client.receive(server.data_to_send())
        if client.window_returned:
            break
    assert client.window_returned
    assert sent >= 2 << 20
    update = next(e for e in server_events(server, client) if isinstance(e, h2.events.WindowUpdated))
    assert update.stream_id == 0
    assert update.delta == sent


def test_pings_are_answered_and_late_frames_on_ended_streams_dropped() -> None:
    client, recorder, server = connected()
    stream_id = client.open_stream(REQUEST)
    server_events(server, client)
    server.send_headers(stream_id, [(b":status", b"200")])
    client.receive(server.data_to_send())
    client.reset_stream(stream_id, ErrorCode.CANCEL)
    server.send_data(stream_id, b"late")  # crossed our RST_STREAM
    server.ping(b"12345678")
    client.receive(server.data_to_send())
    assert [s[0] for s in recorder.seen] == ["headers"]
    events = server_events(server, client)
    assert any(isinstance(e, h2.events.StreamReset) and e.error_code == ErrorCode.CANCEL for e in events)
    assert any(isinstance(e, h2.events.PingAckReceived) and e.ping_data == b"12345678" for e in events)

    client.ping(b"abcdefgh")
    server_events(server, client)
    client.receive(server.data_to_send())
    assert recorder.seen[-1] == ("pong",)


def test_a_late_frame_on_a_stream_long_forgotten_is_answered_with_rst_stream() -> None:
    """Streams we ended are remembered (the last 256): a late frame on one is dropped quietly; on an older
    one kas is told the stream is closed."""
    client, recorder, _ = connected()
    opened = [client.open_stream(REQUEST) for _ in range(300)]
    for stream_id in opened:
        client.reset_stream(stream_id, ErrorCode.CANCEL)
    client.data_to_send()
    client.receive(frames.frame(FrameType.DATA, 0, opened[-1], b"late"))
    assert client.data_to_send() == b""
    client.receive(frames.frame(FrameType.DATA, 0, opened[0], b"late"))
    assert frames.rst_stream(opened[0], ErrorCode.STREAM_CLOSED) in client.data_to_send()
    assert not [s for s in recorder.seen if s[0] == "data"]


def test_returned_window_goes_to_kas_for_open_streams_only() -> None:
    client, _, _ = connected()
    stream_id = client.open_stream(REQUEST)
    client.data_to_send()
    client.receive(_headers_frame(stream_id, OK) + frames.frame(FrameType.DATA, 0, stream_id, b"x" * 1000))
    client.data_to_send()
    client.return_window(stream_id, 1000)
    assert client.data_to_send() == frames.window_update(stream_id, 1000)
    client.return_window(stream_id + 2, 1000)  # never opened: nothing
    client.receive(frames.frame(FrameType.DATA, Flag.END_STREAM, stream_id, b"y"))
    client.return_window(stream_id, 1)  # kas ended its side: nothing more to receive
    assert client.data_to_send() == b""


def test_a_released_stream_takes_nothing_more_from_kas() -> None:
    client, recorder, _ = connected()
    stream_id = client.open_stream(REQUEST)
    client.receive(_headers_frame(stream_id, OK))
    client.release(stream_id)
    client.release(stream_id + 2)  # never opened: nothing happens
    client.receive(frames.frame(FrameType.DATA, 0, stream_id, b"late"))
    assert [s[0] for s in recorder.seen] == ["headers"]


def test_a_continuation_must_follow_its_own_stream_headers() -> None:
    client, recorder, _ = connected()
    first, second = client.open_stream(REQUEST), client.open_stream(REQUEST)
    client.data_to_send()
    with pytest.raises(ProtocolError) as raised:
        client.receive(
            frames.frame(FrameType.HEADERS, 0, first, frames.encode_headers(OK))
            + frames.frame(FrameType.CONTINUATION, Flag.END_HEADERS, second, b"")
        )
    assert raised.value.code == ErrorCode.PROTOCOL_ERROR
    assert recorder.seen == []


def test_goaway_and_reset_are_reported_and_the_connection_goes_on() -> None:
    client, recorder, server = connected()
    first, second = client.open_stream(REQUEST), client.open_stream(REQUEST)
    server_events(server, client)
    server.reset_stream(second, h2.errors.ErrorCodes.REFUSED_STREAM)
    client.receive(server.data_to_send())
    client.receive(frames.goaway(first, ErrorCode.NO_ERROR))
    server.send_headers(first, [(b":status", b"200")], end_stream=True)
    client.receive(server.data_to_send())
    assert recorder.seen == [
        ("reset", second, ErrorCode.REFUSED_STREAM),
        ("goaway", ErrorCode.NO_ERROR, first),
        ("headers", first, [(b":status", b"200")], True),
    ]


def test_bytes_in_any_cuts_give_the_same_frames() -> None:
    client, _, server = connected()
    stream_id = client.open_stream(REQUEST)
    server_events(server, client)
    server.send_headers(stream_id, [(b":status", b"200")])
    server.send_data(stream_id, b"0123456789" * 100, pad_length=7)
    server.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
    wire = server.data_to_send()
    whole, whole_seen, _ = connected()
    whole.open_stream(REQUEST)
    whole.receive(wire)
    cut, cut_seen, _ = connected()
    cut.open_stream(REQUEST)
    for i in range(len(wire)):
        cut.receive(wire[i : i + 1])
    assert cut_seen.seen == whole_seen.seen
    assert ("data", stream_id, b"0123456789" * 100, 1008) in whole_seen.seen


def _unknown_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame of a type FrameType does not name, laid out by hand (RFC 9113 §4.1)."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def _headers_frame(stream_id: int, headers: Headers, flags: int = Flag.END_HEADERS) -> bytes:
    return frames.frame(FrameType.HEADERS, flags, stream_id, frames.encode_headers(headers))


OK = [(b":status", b"200")]
LARGEST_WINDOW = (1 << 31) - 1
"""RFC 9113 §6.9.1, written out here rather than taken from the code under test."""

BROKEN = {
    "a frame above 16 KiB": (frames.frame(FrameType.DATA, 0, 1, b"x" * 16_385), ErrorCode.FRAME_SIZE_ERROR),
    "DATA on stream 0": (frames.frame(FrameType.DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),
    "DATA on a stream never opened": (frames.frame(FrameType.DATA, 0, 3, b"x"), ErrorCode.PROTOCOL_ERROR),
    "DATA on a stream kas would open": (frames.frame(FrameType.DATA, 0, 2, b"x"), ErrorCode.PROTOCOL_ERROR),
    "DATA before the response headers": (frames.frame(FrameType.DATA, 0, 1, b"x"), ErrorCode.PROTOCOL_ERROR),
    "DATA past the stream's window": (
        _headers_frame(1, OK) + frames.frame(FrameType.DATA, 0, 1, b"x" * 16_384) * 5,
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "padding longer than the frame": (
        _headers_frame(1, OK) + frames.frame(FrameType.DATA, Flag.PADDED, 1, b"\x09abc"),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "padding as long as the frame": (
        _headers_frame(1, OK) + frames.frame(FrameType.DATA, Flag.PADDED, 1, b"\x03\x00\x00"),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "DATA one byte past the stream's window": (
        _headers_frame(1, OK)
        + frames.frame(FrameType.DATA, 0, 1, b"x" * 16_384) * 3
        + frames.frame(FrameType.DATA, 0, 1, b"x" * 16_384),
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "PRIORITY on stream 0": (
        frames.frame(FrameType.PRIORITY, 0, 0, b"\0\0\0\3\x10"),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "SETTINGS_ENABLE_PUSH of 2": (frames.settings({Setting.ENABLE_PUSH: 2}), ErrorCode.PROTOCOL_ERROR),
    "a frame size above 2^24-1": (
        frames.settings({Setting.MAX_FRAME_SIZE: 1 << 24}),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a pseudo-header in trailers": (
        _headers_frame(1, OK) + _headers_frame(1, OK, flags=Flag.END_HEADERS | Flag.END_STREAM),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a CONTINUATION on another stream": (
        _headers_frame(1, OK, flags=0) + frames.frame(FrameType.CONTINUATION, Flag.END_HEADERS, 3, b""),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a pseudo-header after a regular header": (
        _headers_frame(1, [*OK, (b"content-type", b"application/grpc"), *OK]),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a GOAWAY of 7 bytes": (frames.frame(FrameType.GOAWAY, 0, 0, b"\0" * 7), ErrorCode.FRAME_SIZE_ERROR),
    "HEADERS with a priority and no header block": (
        frames.frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.PRIORITY, 1, b"\0\0\0\0\x10"),
        ErrorCode.PROTOCOL_ERROR,  # no :status; the priority itself is the right size
    ),
    "HEADERS too short for its priority": (
        frames.frame(FrameType.HEADERS, Flag.END_HEADERS | Flag.PRIORITY, 1, b"\0\0\0\0"),
        ErrorCode.FRAME_SIZE_ERROR,
    ),
    "a RST_STREAM on a stream never opened": (
        frames.rst_stream(3, ErrorCode.CANCEL),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a RST_STREAM on a stream kas would open": (
        frames.rst_stream(2, ErrorCode.CANCEL),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "an initial window that overflows an open stream's": (
        frames.window_update(1, frames.MAX_WINDOW - 65_535)
        + frames.settings({Setting.INITIAL_WINDOW_SIZE: 65_536}),
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "a push": (
        frames.frame(FrameType.PUSH_PROMISE, Flag.END_HEADERS, 1, b"\0\0\0\2"),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a short PING": (frames.frame(FrameType.PING, 0, 0, b"1234"), ErrorCode.FRAME_SIZE_ERROR),
    "a PING on a stream": (frames.frame(FrameType.PING, 0, 1, b"12345678"), ErrorCode.PROTOCOL_ERROR),
    "a WINDOW_UPDATE of 0": (frames.window_update(0, 0), ErrorCode.PROTOCOL_ERROR),
    "a connection window above 2^31-1": (
        frames.window_update(0, frames.MAX_WINDOW),
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "a stream window above 2^31-1": (
        frames.window_update(1, frames.MAX_WINDOW),
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "SETTINGS of a wrong size": (
        frames.frame(FrameType.SETTINGS, 0, 0, b"\0\1\0"),
        ErrorCode.FRAME_SIZE_ERROR,
    ),
    "a frame size below 16 KiB": (frames.settings({Setting.MAX_FRAME_SIZE: 100}), ErrorCode.PROTOCOL_ERROR),
    "an initial window above 2^31-1": (
        frames.settings({Setting.INITIAL_WINDOW_SIZE: 1 << 31}),
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "a header block cut off by DATA": (
        _headers_frame(1, OK, flags=0) + frames.frame(FrameType.DATA, 0, 1, b"x"),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a CONTINUATION alone": (
        frames.frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, b""),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a header block HPACK refuses": (
        frames.frame(FrameType.HEADERS, Flag.END_HEADERS, 1, b"\xff\xff\xff\xff\xff\xff"),
        ErrorCode.COMPRESSION_ERROR,
    ),
    "response headers without :status": (
        _headers_frame(1, [(b"content-type", b"application/grpc")]),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a request's pseudo-header": (_headers_frame(1, [*OK, (b":path", b"/")]), ErrorCode.PROTOCOL_ERROR),
    "a name in upper case": (_headers_frame(1, [*OK, (b"Grpc-Status", b"0")]), ErrorCode.PROTOCOL_ERROR),
    "a CR/LF in a header value": (
        _headers_frame(1, [*OK, (b"grpc-message", b"x\r\nset-cookie: y")]),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a NUL in a header value": (_headers_frame(1, [*OK, (b"x-a", b"a\x00b")]), ErrorCode.PROTOCOL_ERROR),
    "a connection-specific header": (
        _headers_frame(1, [*OK, (b"transfer-encoding", b"chunked")]),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a header block flood over CONTINUATION": (
        frames.frame(FrameType.HEADERS, 0, 1, b"\x00" * 16_384)
        + frames.frame(FrameType.CONTINUATION, 0, 1, b"\x00" * 16_384) * 4,
        ErrorCode.ENHANCE_YOUR_CALM,
    ),
    "a header list above 64 KiB once decoded": (
        # hpack's own encoder indexes the value once and refers to it 20 times: a 4 KiB block, 80 KiB decoded
        frames.frame(
            FrameType.HEADERS,
            Flag.END_HEADERS,
            1,
            hpack.Encoder().encode([*OK, *[(b"x-big", b"v" * 4000)] * 20]),
        ),
        ErrorCode.COMPRESSION_ERROR,
    ),
    "trailers that do not end the stream": (
        _headers_frame(1, OK) + _headers_frame(1, [(b"grpc-status", b"0")]),
        ErrorCode.PROTOCOL_ERROR,
    ),
    "a frame after the stream ended": (
        _headers_frame(1, OK, flags=Flag.END_HEADERS | Flag.END_STREAM)
        + frames.frame(FrameType.DATA, 0, 1, b"x"),
        ErrorCode.STREAM_CLOSED,
    ),
}


ACCEPTED = {
    "DATA filling the stream's window exactly": (
        _headers_frame(1, OK)
        + frames.frame(FrameType.DATA, 0, 1, b"x" * 16_384) * 3
        + frames.frame(FrameType.DATA, 0, 1, b"x" * 16_383)
    ),
    "DATA that is all padding": _headers_frame(1, OK)
    + frames.frame(FrameType.DATA, Flag.PADDED, 1, b"\2\0\0"),
    "a PRIORITY frame on a stream (ignored)": frames.frame(FrameType.PRIORITY, 0, 1, b"\0\0\0\3\x10"),
    "SETTINGS_ENABLE_PUSH of 1 (meaningless from a server, allowed)": frames.settings(
        {Setting.ENABLE_PUSH: 1}
    ),
    "the largest frame size, 2^24-1": frames.settings({Setting.MAX_FRAME_SIZE: (1 << 24) - 1}),
    "a stream's send window raised to exactly 2^31-1": frames.window_update(1, LARGEST_WINDOW - 65_535),
    "the largest initial window, 2^31-1": frames.settings({Setting.INITIAL_WINDOW_SIZE: LARGEST_WINDOW}),
    "response headers over HEADERS and CONTINUATION": (
        frames.frame(FrameType.HEADERS, 0, 1, frames.encode_headers(OK))
        + frames.frame(FrameType.CONTINUATION, Flag.END_HEADERS, 1, frames.encode_headers([(b"x-a", b"b")]))
    ),
    "HEADERS with a priority": frames.frame(
        FrameType.HEADERS, Flag.END_HEADERS | Flag.PRIORITY, 1, b"\0\0\0\0\x10" + frames.encode_headers(OK)
    ),
    "frame types RFC 9113 does not define (ignored)": (
        _unknown_frame(0xA, 0, 0, b"h3=:443")  # ALTSVC, RFC 7838
        + _unknown_frame(0xFF, 0xFF, 1, b"anything")
    ),
    "the connection's send window raised to exactly 2^31-1": frames.window_update(0, LARGEST_WINDOW - 65_535),
}
"""What kas may send at the edge of what is allowed: taken, and nothing is sent back but acknowledgements."""


@pytest.mark.parametrize("wire", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_frames_at_the_limits_are_taken(wire: bytes) -> None:
    client, _, _ = connected()
    client.open_stream(REQUEST)
    client.data_to_send()
    client.receive(wire)
    assert _goaway_codes(client.data_to_send()) == []


def _goaway_codes(sent: bytes) -> list[int]:
    """The error codes of the GOAWAY frames in `sent` (whole frames, as the client queues them)."""
    codes, offset = [], 0
    while offset + 9 <= len(sent):
        length = int.from_bytes(sent[offset : offset + 3], "big")
        if sent[offset + 3] == FrameType.GOAWAY:
            codes.append(frames.unpack_code(sent[offset + 9 : offset + 9 + length], 4))
        offset += 9 + length
    return codes


@pytest.mark.parametrize("wire", BROKEN.values(), ids=BROKEN.keys())
def test_each_protocol_error_ends_the_connection_with_its_goaway(wire: tuple[bytes, ErrorCode]) -> None:
    data, code = wire
    client, recorder, _ = connected()
    client.open_stream(REQUEST)
    client.data_to_send()
    with pytest.raises(ProtocolError) as raised:
        client.receive(data)
    assert raised.value.code == code
    assert client.data_to_send().endswith(frames.goaway(0, code))
    before = list(recorder.seen)
    client.receive(_headers_frame(1, OK))  # nothing more is taken
    assert recorder.seen == before


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200))
def test_nothing_kas_sends_raises_anything_but_a_protocol_error(first: bytes, second: bytes) -> None:
    client, _, _ = connected()
    client.open_stream(REQUEST)
    for data in (first, _headers_frame(1, OK) + second):
        try:
            client.receive(data)
        except ProtocolError:
            return
