"""agent_proto.wstunnel: RFC 6455 framing and the HTTP/1.1 upgrade, without any I/O."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_proto import wstunnel
from agent_proto.wstunnel import (
    Close,
    CloseCode,
    Data,
    FrameDecoder,
    Opcode,
    Ping,
    Pong,
    WebSocketProtocolError,
    encode_frame,
)


def _payload(events: list[wstunnel.Event]) -> bytes:
    return b"".join(e.payload for e in events if isinstance(e, Data))


def _feed_in_pieces(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[wstunnel.Event]:
    events: list[wstunnel.Event] = []
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        events += decoder.feed(data[start:cut])
        start = cut
    events += decoder.feed(data[start:])
    return events


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=70_000), max_size=5),
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400_000), max_size=20),
)
def test_round_trip_any_split(messages: list[bytes], masked: bool, cuts: list[int]) -> None:
    wire = b"".join(encode_frame(Opcode.BINARY, m, mask=masked) for m in messages)
    events = _feed_in_pieces(FrameDecoder(expect_masked=masked), wire, cuts)
    assert _payload(events) == b"".join(messages)
    assert all(isinstance(e, Data) and e.payload for e in events)


@settings(max_examples=30, deadline=None)
@given(
    fragments=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    ping=st.binary(max_size=125),
    masked=st.booleans(),
)
def test_fragmented_message_with_interleaved_ping_fed_byte_by_byte(
    fragments: list[bytes], ping: bytes, masked: bool
) -> None:
    wire = bytearray()
    for i, fragment in enumerate(fragments):
        opcode = Opcode.BINARY if i == 0 else Opcode.CONTINUATION
        wire += encode_frame(opcode, fragment, mask=masked, fin=i == len(fragments) - 1)
        if i == 0:
            wire += encode_frame(Opcode.PING, ping, mask=masked)
    decoder = FrameDecoder(expect_masked=masked)
    events: list[wstunnel.Event] = []
    for byte in wire:
        events += decoder.feed(bytes([byte]))
    assert _payload(events) == b"".join(fragments)
    assert [e for e in events if not isinstance(e, Data)] == [Ping(ping)]


def test_payload_is_streamed_before_the_frame_is_complete() -> None:
    payload = bytes(range(256)) * 100
    wire = encode_frame(Opcode.BINARY, payload, mask=True)
    decoder = FrameDecoder(expect_masked=True)
    first = decoder.feed(wire[:1000])
    assert first
    assert _payload(first) == payload[: 1000 - 8]  # 2 + 2 header bytes + 4 mask bytes
    assert _payload(decoder.feed(wire[1000:])) == payload[1000 - 8 :]


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_length_encodings(length: int) -> None:
    payload = b"x" * length
    wire = encode_frame(Opcode.BINARY, payload, mask=False)
    header = {0: 2, 125: 2, 126: 4, 65535: 4, 65536: 10}[length]
    assert len(wire) == header + length
    assert _payload(FrameDecoder(expect_masked=False).feed(wire)) == payload


def test_known_masking_vector() -> None:
    # RFC 6455 §5.7: a masked "Hello" from a client.
    wire = encode_frame(Opcode.TEXT, b"Hello", mask=True, mask_key=bytes.fromhex("37fa213d"))
    assert wire == bytes.fromhex("818537fa213d7f9f4d5158")


def test_apply_mask_with_offset_matches_whole_payload() -> None:
    key = b"\x01\x02\x03\x04"
    data = bytes(range(37))
    whole = wstunnel.apply_mask(data, key)
    assert wstunnel.apply_mask(data[:5], key) + wstunnel.apply_mask(data[5:], key, 5) == whole


def test_ping_pong_close_events() -> None:
    decoder = FrameDecoder(expect_masked=False)
    wire = (
        encode_frame(Opcode.PING, b"p", mask=False)
        + encode_frame(Opcode.PONG, b"q", mask=False)
        + wstunnel.encode_close(1001, "Shutting down", mask=False)
    )
    assert decoder.feed(wire) == [Ping(b"p"), Pong(b"q"), Close(1001, "Shutting down")]
    assert decoder.closed
    with pytest.raises(WebSocketProtocolError):
        decoder.feed(b"\x82\x00")


def test_close_without_code() -> None:
    assert FrameDecoder(expect_masked=False).feed(b"\x88\x00") == [Close(None, "")]


def test_close_reason_is_cut_to_fit_a_control_frame() -> None:
    frame = wstunnel.encode_close(1002, "é" * 200, mask=False)
    (event,) = FrameDecoder(expect_masked=False).feed(frame)
    assert isinstance(event, Close)
    assert event.code == 1002
    assert len(event.reason.encode()) <= 123


def _error(decoder: FrameDecoder, wire: bytes) -> WebSocketProtocolError:
    with pytest.raises(WebSocketProtocolError) as info:
        decoder.feed(wire)
    assert decoder.closed
    return info.value


@pytest.mark.parametrize(
    ("wire", "code", "words"),
    [
        (b"\x81\x01a", CloseCode.UNSUPPORTED_DATA, "text"),
        (b"\xc2\x00", CloseCode.PROTOCOL_ERROR, "reserved bits"),
        (b"\x83\x00", CloseCode.PROTOCOL_ERROR, "unknown opcode"),
        (b"\x80\x00", CloseCode.PROTOCOL_ERROR, "continuation frame without"),
        (b"\x09\x00", CloseCode.PROTOCOL_ERROR, "fragmented control"),
        (b"\x89\x7e\x00\x7e" + b"x" * 126, CloseCode.PROTOCOL_ERROR, "longer than 125"),
        (b"\x88\x01\x03", CloseCode.PROTOCOL_ERROR, "1-byte"),
        (b"\x88\x02" + struct.pack("!H", 1005), CloseCode.PROTOCOL_ERROR, "invalid close code"),
        (b"\x88\x04\x03\xe8\xff\xfe", CloseCode.INVALID_PAYLOAD, "UTF-8"),
        (b"\x82\x80\x00\x00\x00\x00", CloseCode.PROTOCOL_ERROR, "expected unmasked"),
        (b"\x02\x00\x82\x00", CloseCode.PROTOCOL_ERROR, "new message inside"),
        (b"\x82\x7f" + struct.pack("!Q", 1 << 63), CloseCode.PROTOCOL_ERROR, "top bit"),
    ],
)
def test_protocol_errors(wire: bytes, code: CloseCode, words: str) -> None:
    error = _error(FrameDecoder(expect_masked=False), wire)
    assert error.code == code
    assert words in str(error)


def test_server_rejects_unmasked_frames() -> None:
    error = _error(FrameDecoder(expect_masked=True), b"\x82\x00")
    assert "expected masked" in str(error)


def test_message_size_limit_counts_all_fragments_before_any_payload_arrives() -> None:
    decoder = FrameDecoder(expect_masked=False, max_message_size=100)
    assert _payload(decoder.feed(encode_frame(Opcode.BINARY, b"a" * 60, mask=False, fin=False))) == b"a" * 60
    head_only = encode_frame(Opcode.CONTINUATION, b"b" * 41, mask=False)[:2]
    assert _error(decoder, head_only).code == CloseCode.MESSAGE_TOO_BIG


def test_default_limit_is_ten_mebibytes() -> None:
    decoder = FrameDecoder(expect_masked=False)
    ok = struct.pack("!BBQ", 0x82, 127, 10 * 1024 * 1024)
    assert decoder.feed(ok) == []
    too_big = struct.pack("!BBQ", 0x82, 127, 10 * 1024 * 1024 + 1)
    assert _error(FrameDecoder(expect_masked=False), too_big).code == CloseCode.MESSAGE_TOO_BIG


def test_encode_binary_splits_large_payloads() -> None:
    payload = bytes(range(256)) * 20
    wire = wstunnel.encode_binary(payload, mask=True, max_frame=1000)
    events = FrameDecoder(expect_masked=True).feed(wire)
    assert _payload(events) == payload


def test_control_frames_cannot_be_large_or_fragmented() -> None:
    with pytest.raises(ValueError, match="control"):
        encode_frame(Opcode.PING, b"x" * 126, mask=False)
    with pytest.raises(ValueError, match="control"):
        encode_frame(Opcode.CLOSE, b"", mask=False, fin=False)


# --- HTTP/1.1 upgrade ---------------------------------------------------------------------------


def test_accept_value_from_rfc() -> None:
    assert wstunnel.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _client_request(extra: list[tuple[str, str]] | None = None) -> tuple[str, bytes]:
    key = wstunnel.new_key()
    request = wstunnel.build_upgrade_request(
        target="/-/kubernetes-agent/?a=b", host="gitlab.example.com", key=key, extra_headers=extra or []
    )
    return key, request


def test_request_and_response_agree() -> None:
    key, request = _client_request([("User-Agent", "gitlab-agent/v16.5.0/abc"), ("X-Team", "a")])
    assert request.startswith(b"GET /-/kubernetes-agent/?a=b HTTP/1.1\r\n")
    buffer = bytearray(request + b"leftover")
    head = wstunnel.read_head(buffer)
    assert head is not None
    assert buffer == b"leftover"
    assert wstunnel.check_upgrade_request(head) == key
    assert wstunnel.offered_subprotocols(head) == ["ws-tunnel"]
    assert head.get("origin") is None
    assert head.get("sec-websocket-extensions") is None
    assert head.get("x-team") == "a"
    response = wstunnel.build_upgrade_response(key, extra_headers=[("Server", "gitlab-kas/v16.5.0/abc")])
    response_head = wstunnel.read_head(bytearray(response))
    assert response_head is not None
    wstunnel.check_upgrade_response(response_head, key)
    assert response_head.status == 101
    assert response_head.get("server") == "gitlab-kas/v16.5.0/abc"


def test_read_head_waits_for_the_blank_line_and_bounds_size() -> None:
    buffer = bytearray(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
    assert wstunnel.read_head(buffer) is None
    with pytest.raises(wstunnel.HandshakeError, match="larger"):
        wstunnel.read_head(bytearray(b"x" * (wstunnel.MAX_HEAD_SIZE + 1)))


def _response(key: str, **overrides: str | None) -> wstunnel.HttpHead:
    headers: dict[str, str | None] = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": wstunnel.accept_for(key),
        "Sec-WebSocket-Protocol": "ws-tunnel",
    }
    headers.update(overrides)
    return wstunnel.HttpHead(
        ("HTTP/1.1", "101", "Switching Protocols"),
        tuple((k, v) for k, v in headers.items() if v is not None),
    )


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"Sec-WebSocket-Protocol": None}, "subprotocol (got none)"),
        ({"Sec-WebSocket-Protocol": "other"}, "subprotocol (got 'other')"),
        ({"Sec-WebSocket-Accept": "AAAA"}, "Sec-WebSocket-Accept"),
        ({"Upgrade": None}, "Upgrade: websocket"),
        ({"Connection": "keep-alive"}, "Connection: Upgrade"),
        ({"Sec-WebSocket-Extensions": "permessage-deflate"}, "extensions"),
    ],
)
def test_bad_upgrade_responses(overrides: dict[str, str | None], words: str) -> None:
    key = wstunnel.new_key()
    with pytest.raises(wstunnel.HandshakeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        wstunnel.check_upgrade_response(_response(key, **overrides), key)


def test_non_101_status_message_matches_agentk() -> None:
    head = wstunnel.parse_response_head(b"HTTP/1.1 301 Moved Permanently\r\nLocation: /x/")
    with pytest.raises(
        wstunnel.HandshakeError, match="expected handshake response status code 101 but got 301"
    ):
        wstunnel.check_upgrade_response(head, "k")


def test_malformed_heads() -> None:
    with pytest.raises(wstunnel.HandshakeError, match=r"not an HTTP/1\.1 response"):
        wstunnel.parse_response_head(b"\x16\x03\x01 garbage")
    with pytest.raises(wstunnel.HandshakeError, match="header line"):
        wstunnel.parse_head(b"HTTP/1.1 200 OK\r\nno colon here")


@pytest.mark.parametrize(
    ("name", "value"), [("X Bad", "v"), ("", "v"), ("X-Split", "a\r\nInjected: 1"), ("X-Nul", "a\0")]
)
def test_header_injection_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="header"):
        wstunnel.build_upgrade_request(target="/", host="h", key="k", extra_headers=[(name, value)])


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (b"POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade", "GET"),
        (b"GET / HTTP/1.1\r\nHost: h", "upgrade required"),
        (
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8",
            "Version",
        ),
        (
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: short",
            "Key",
        ),
    ],
)
def test_server_side_request_checks(head: bytes, words: str) -> None:
    with pytest.raises(wstunnel.HandshakeError, match=words):
        wstunnel.check_upgrade_request(wstunnel.parse_head(head))


def test_error_response_is_complete() -> None:
    raw = wstunnel.build_error_response(400, "Bad Request", "websocket upgrade required")
    head_raw, _, body = raw.partition(b"\r\n\r\n")
    head = wstunnel.parse_response_head(head_raw)
    assert head.status == 400
    assert head.get("content-length") == str(len(body))
    assert body == b"websocket upgrade required"
