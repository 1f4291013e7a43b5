"""gRPC over HTTP/2, the parts a client needs: message framing, request headers and the final status."""

from __future__ import annotations

import gzip as zlib_gzip
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from agent_runtime.rpc_status import RpcError, StatusCode
from agent_runtime.transport.h2.frames import ErrorCode

PREFIX: Final = struct.Struct(">BI")
"""Each gRPC message: a compressed flag (1 byte) and the length (4 bytes, big-endian)."""

_HTTP_TO_GRPC: Final = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}
"""gRPC's mapping of an HTTP status that is not 200 (a proxy answering instead of kas)."""

_RESET_TO_GRPC: Final = {
    ErrorCode.REFUSED_STREAM: StatusCode.UNAVAILABLE,
    ErrorCode.CANCEL: StatusCode.CANCELLED,
    ErrorCode.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED,
}
"""gRPC's mapping of RST_STREAM codes; every other code is INTERNAL."""

_CODES: Final = {int(code): code for code in StatusCode}


@dataclass(frozen=True)
class Status:
    """How a call ended."""

    code: StatusCode
    """The gRPC status code."""
    details: str
    """The status message (kas's grpc-message, or ours for local and transport failures)."""

    def error(self) -> RpcError:
        """The exception a call raises for this status (the grpc.aio path raises the same)."""
        return RpcError(self.code, self.details)


OK: Final = Status(StatusCode.OK, "")


def frame(message: bytes, *, gzip: bool = False) -> bytes:
    """`message` with its prefix; gzip-compressed if `gzip` and that makes it smaller (as grpc does)."""
    if gzip:
        packed = zlib_gzip.compress(message)
        if len(packed) < len(message):
            return PREFIX.pack(1, len(packed)) + packed
    return PREFIX.pack(0, len(message)) + message


def request_headers(
    *,
    path: str,
    scheme: str,
    authority: str,
    user_agent: str,
    metadata: Iterable[tuple[str, str]],
    timeout: float | None = None,
    gzip: bool = False,
) -> list[tuple[bytes, bytes]]:
    """The HEADERS of a call: pseudo-headers first, then gRPC's, then the caller's metadata.

    `timeout` (seconds) goes to kas as grpc-timeout, in whole milliseconds. `gzip`: our messages may be
    gzip-compressed (kas then answers in gzip too; any response saying grpc-encoding gzip is decoded)."""
    headers = [
        (b":method", b"POST"),
        (b":scheme", scheme.encode()),
        (b":path", path.encode()),
        (b":authority", authority.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"user-agent", user_agent.encode()),
        (b"grpc-accept-encoding", b"identity,gzip"),
    ]
    if gzip:
        headers.append((b"grpc-encoding", b"gzip"))
    if timeout is not None:
        headers.append((b"grpc-timeout", b"%dm" % max(1, min(int(timeout * 1000), 99_999_999))))
    headers.extend((name.encode(), value.encode()) for name, value in metadata)
    return headers


def gzip_encoded(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """The response's messages may be gzip-compressed (grpc-encoding: gzip)."""
    return dict(headers).get(b"grpc-encoding", b"").strip().lower() == b"gzip"


def metadata(headers: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """Response headers as call metadata: the pseudo-headers left out, values decoded as Latin-1."""
    return tuple(
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if not name.startswith(b":")
    )


def response_status(headers: Sequence[tuple[bytes, bytes]]) -> Status | None:
    """The status a response HEADERS block ends the call with before any message, or None if it may go on.

    A block carrying grpc-status is a trailers-only response; a non-200 :status or a content type that is
    not gRPC ends the call as gRPC clients do.
    """
    fields = dict(headers)
    if b"grpc-status" in fields:
        return trailer_status(headers)
    status = fields.get(b":status", b"")
    if status != b"200":
        code = _HTTP_TO_GRPC.get(int(status), StatusCode.UNKNOWN) if status.isdigit() else None
        return Status(code or StatusCode.INTERNAL, f"kas answered HTTP {status[:3].decode('latin-1')}")
    if not fields.get(b"content-type", b"").startswith(b"application/grpc"):
        return Status(StatusCode.UNKNOWN, "kas answered with a content type that is not gRPC")
    return None


def trailer_status(headers: Sequence[tuple[bytes, bytes]]) -> Status:
    """The status in a trailers block (grpc-status and the percent-encoded grpc-message)."""
    fields = dict(headers)
    raw = fields.get(b"grpc-status")
    if raw is None:
        return Status(StatusCode.INTERNAL, "kas ended the stream without a grpc-status")
    code = _CODES.get(int(raw)) if raw.isdigit() and len(raw) <= 3 else None
    if code is None:
        return Status(StatusCode.UNKNOWN, f"kas sent an unknown grpc-status {raw[:8]!r}")
    message = unquote(fields.get(b"grpc-message", b"").decode("utf-8", "replace"), errors="replace")
    return Status(code, message)


def reset_status(error_code: int) -> Status:
    """The status of a call kas reset with RST_STREAM `error_code`."""
    try:
        name = ErrorCode(error_code)
    except ValueError:
        return Status(StatusCode.INTERNAL, f"kas reset the stream (HTTP/2 error {error_code})")
    code = _RESET_TO_GRPC.get(name, StatusCode.INTERNAL)
    return Status(code, f"kas reset the stream ({name.name})")


class MessageTooLargeError(Exception):
    """kas sent a message above the receive limit."""


class CompressedMessageError(Exception):
    """kas sent a compressed message although we accept identity only, or one that does not decompress."""


class Reassembler:
    """Cuts the DATA bytes of one stream into gRPC messages (gunzipping them once `gzip` is set: kas said
    grpc-encoding gzip in its response headers)."""

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self.gzip = False
        """Compressed messages are gzip (else a compressed message is an error)."""
        self._compressed = False
        self._buffer = bytearray()
        self._need = -1
        """The length of the message being read, or -1 while its prefix is incomplete."""

    def feed(self, data: bytes) -> list[bytes]:
        """The messages `data` completes; raises MessageTooLargeError or CompressedMessageError."""
        if not self._buffer and self._need < 0 and len(data) >= PREFIX.size:
            flag, length = PREFIX.unpack_from(data)
            if len(data) == PREFIX.size + length and not flag and length <= self._max:
                return [data[PREFIX.size :]]  # the common case: one DATA frame, one message
        self._buffer += data
        messages: list[bytes] = []
        while True:
            if self._need < 0:
                if len(self._buffer) < PREFIX.size:
                    return messages
                flag, self._need = PREFIX.unpack_from(self._buffer)
                if flag and not self.gzip:
                    raise CompressedMessageError(
                        "kas sent a compressed message without a negotiated encoding"
                    )
                self._compressed = bool(flag)
                if self._need > self._max:
                    raise MessageTooLargeError(
                        f"received message larger than max ({self._need} vs. {self._max})"
                    )
                del self._buffer[: PREFIX.size]
            if len(self._buffer) < self._need:
                return messages
            message = bytes(self._buffer[: self._need])
            messages.append(self._gunzip(message) if self._compressed else message)
            del self._buffer[: self._need]
            self._need = -1

    def _gunzip(self, message: bytes) -> bytes:
        """`message` decompressed, never past the receive limit (a small bomb must not inflate)."""
        inflater = zlib.decompressobj(wbits=31)
        try:
            plain = inflater.decompress(message, self._max + 1)
        except zlib.error:
            raise CompressedMessageError("kas sent a message that does not gunzip") from None
        if len(plain) > self._max:
            raise MessageTooLargeError(f"received message larger than max ({self._max}) once decompressed")
        if not inflater.eof:
            raise CompressedMessageError("kas sent a message that does not gunzip")
        return plain

    @property
    def partial(self) -> bool:
        """A message is cut off (the stream must not end here)."""
        return bool(self._buffer) or self._need >= 0
