"""gRPC's HTTP/2 mapping as the tunnel's own client reads it (agent_runtime.transport.h2.wire)."""

from __future__ import annotations

import pytest
from h2.errors import ErrorCodes

from agent_runtime.rpc_status import RpcError, StatusCode
from agent_runtime.transport.h2 import wire


def test_reassembler_cuts_messages_across_and_within_frames() -> None:
    stream = b"".join(wire.frame(m) for m in (b"one", b"", b"three" * 1000))
    reader = wire.Reassembler(max_message=10_000)
    got = []
    for start in range(0, len(stream), 7):  # 7-byte pieces: prefixes and bodies split anywhere
        got += reader.feed(stream[start : start + 7])
    assert got == [b"one", b"", b"three" * 1000]
    assert not reader.partial
    assert reader.feed(wire.frame(b"whole")) == [b"whole"]


def test_reassembler_refuses_oversized_and_compressed_messages() -> None:
    with pytest.raises(wire.MessageTooLargeError, match=r"\(11 vs. 10\)"):
        wire.Reassembler(max_message=10).feed(wire.PREFIX.pack(0, 11))
    with pytest.raises(wire.CompressedMessageError):
        wire.Reassembler(max_message=10).feed(wire.PREFIX.pack(1, 3) + b"abc")
    reader = wire.Reassembler(max_message=10)
    assert reader.feed(wire.frame(b"abc")[:6]) == []
    assert reader.partial


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b":status", b"200"), (b"content-type", b"application/grpc")], None),
        ([(b":status", b"200"), (b"content-type", b"application/grpc+proto")], None),
        ([(b":status", b"401"), (b"content-type", b"text/html")], StatusCode.UNAUTHENTICATED),
        ([(b":status", b"503")], StatusCode.UNAVAILABLE),
        ([(b":status", b"418")], StatusCode.UNKNOWN),
        ([(b":status", b"2xx")], StatusCode.INTERNAL),
        ([(b":status", b"200"), (b"content-type", b"text/html")], StatusCode.UNKNOWN),
        (
            [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"16")],
            StatusCode.UNAUTHENTICATED,
        ),
    ],
)
def test_response_headers(headers: list[tuple[bytes, bytes]], expected: StatusCode | None) -> None:
    status = wire.response_status(headers)
    assert (status.code if status else None) is expected


def test_trailer_status_decodes_the_message_and_refuses_nonsense() -> None:
    ok = wire.trailer_status([(b"grpc-status", b"0")])
    assert ok == wire.OK
    denied = wire.trailer_status([(b"grpc-status", b"7"), (b"grpc-message", b"no%20access%3A%20%E2%9C%93")])
    assert denied == wire.Status(StatusCode.PERMISSION_DENIED, "no access: \u2713")
    assert wire.trailer_status([]).code is StatusCode.INTERNAL
    assert wire.trailer_status([(b"grpc-status", b"99")]).code is StatusCode.UNKNOWN
    assert wire.trailer_status([(b"grpc-status", b"-1")]).code is StatusCode.UNKNOWN


def test_reset_codes_map_as_grpc_maps_them() -> None:
    assert wire.reset_status(ErrorCodes.CANCEL).code is StatusCode.CANCELLED
    assert wire.reset_status(ErrorCodes.REFUSED_STREAM).code is StatusCode.UNAVAILABLE
    assert wire.reset_status(ErrorCodes.ENHANCE_YOUR_CALM).code is StatusCode.RESOURCE_EXHAUSTED
    assert wire.reset_status(ErrorCodes.PROTOCOL_ERROR).code is StatusCode.INTERNAL
    assert wire.reset_status(0xFFFF).code is StatusCode.INTERNAL


def test_status_error_is_the_runtime_rpc_error() -> None:
    error = wire.Status(StatusCode.UNAVAILABLE, "gone").error()
    assert isinstance(error, RpcError)
    assert (error.code(), error.details()) == (StatusCode.UNAVAILABLE, "gone")


def test_request_headers_put_pseudo_headers_first() -> None:
    headers = wire.request_headers(
        path="/s/M",
        scheme="http",
        authority="kas:80",
        user_agent="ua",
        metadata=[("authorization", "Bearer x")],
    )
    names = [name for name, _ in headers]
    assert names[:4] == [b":method", b":scheme", b":path", b":authority"]
    assert (b"te", b"trailers") in headers
    assert headers[-1] == (b"authorization", b"Bearer x")


def _gzip_reassembler(limit: int) -> wire.Reassembler:
    reassembler = wire.Reassembler(limit)
    reassembler.gzip = wire.gzip_encoded([(b":status", b"200"), (b"grpc-encoding", b"gzip")])
    return reassembler


def test_gzip_messages_both_ways_when_negotiated() -> None:
    text = b"agent meta " * 100
    framed = wire.frame(text, gzip=True)
    assert framed[0] == 1
    assert len(framed) < len(text)
    assert _gzip_reassembler(4096).feed(framed) == [text]
    random_bytes = bytes(range(256))  # gzip would not shrink it: sent plain, as grpc does
    assert wire.frame(random_bytes, gzip=True)[0] == 0
    with pytest.raises(wire.CompressedMessageError):
        wire.Reassembler(4096).feed(framed)  # kas did not say grpc-encoding gzip


def test_gunzip_stops_at_the_receive_limit() -> None:
    bomb = wire.frame(b"\0" * (1 << 20), gzip=True)  # 1 MiB of zeros is about 1 KiB compressed
    assert len(bomb) < 2048
    with pytest.raises(wire.MessageTooLargeError, match="once decompressed"):
        _gzip_reassembler(64 * 1024).feed(bomb)
    not_gzip = wire.PREFIX.pack(1, 5) + b"hello"
    with pytest.raises(wire.CompressedMessageError, match="does not gunzip"):
        _gzip_reassembler(4096).feed(not_gzip)


def test_request_headers_say_the_timeout_and_the_encoding() -> None:
    headers = dict(
        wire.request_headers(
            path="/p", scheme="http", authority="kas", user_agent="ua", metadata=(), timeout=2.5, gzip=True
        )
    )
    assert headers[b"grpc-timeout"] == b"2500m"
    assert headers[b"grpc-encoding"] == b"gzip"
    assert headers[b"grpc-accept-encoding"] == b"identity,gzip"
    assert wire.gzip_encoded([(b"grpc-encoding", b"identity")]) is False
    assert wire.metadata([(b":status", b"200"), (b"server", b"kas")]) == (("server", "kas"),)
