"""HTTP/2 frames (RFC 9113 §4 and §6) and request header blocks (RFC 7541), as the tunnel's client needs them.

Only what a gRPC client sends is written here: SETTINGS, HEADERS (+ CONTINUATION), DATA, WINDOW_UPDATE,
PING, RST_STREAM and GOAWAY. Header blocks are written without touching any HPACK dynamic table (static
table references and literals "without indexing"), so an encoded block depends on its headers alone and
the encoder keeps no state: a block for the same headers is reused as it is.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Sequence
from typing import Final

from hpack.table import HeaderTable

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface (RFC 9113 §3.4)."""

HEADER: Final = struct.Struct(">BHBBI")
"""A frame's 9-byte header: length (high byte, low 16 bits), type, flags, stream id (with the R bit)."""

MAX_WINDOW: Final = (1 << 31) - 1
DEFAULT_WINDOW: Final = 65_535
DEFAULT_MAX_FRAME: Final = 16_384
MAX_FRAME_LIMIT: Final = (1 << 24) - 1


class FrameType(enum.IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


class Flag(enum.IntFlag):
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


class ErrorCode(enum.IntEnum):
    """HTTP/2 error codes (RFC 9113 §7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def error_name(code: int) -> str:
    """`code`'s name, or the number for a code RFC 9113 does not define."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


def frame(kind: FrameType, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame; `payload` must fit the peer's frame size (callers cut it)."""
    n = len(payload)
    return HEADER.pack(n >> 16, n & 0xFFFF, kind, flags, stream_id) + payload


_SETTING: Final = struct.Struct(">HI")
_U32: Final = struct.Struct(">I")
_GOAWAY: Final = struct.Struct(">II")


def settings(values: dict[Setting, int]) -> bytes:
    return frame(FrameType.SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


SETTINGS_ACK: Final = frame(FrameType.SETTINGS, Flag.ACK, 0)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """(identifier, value) pairs; the payload's length is a multiple of 6 (the caller checked)."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), _SETTING.size)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(FrameType.WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(FrameType.RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int) -> bytes:
    return frame(FrameType.GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code))


def unpack_u32(payload: bytes, offset: int = 0) -> int:
    """A 32-bit field with the reserved high bit cleared."""
    value: int = _U32.unpack_from(payload, offset)[0]
    return value & MAX_WINDOW


def unpack_code(payload: bytes, offset: int = 0) -> int:
    """An error code (all 32 bits)."""
    value: int = _U32.unpack_from(payload, offset)[0]
    return value


# Header blocks

_FULL: Final[dict[tuple[bytes, bytes], int]] = {}
"""Static table entries by (name, value): an exact match is sent as its index alone."""
_NAMES: Final[dict[bytes, int]] = {}
"""Static table names, each with its lowest index."""
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _FULL.setdefault((_name, _value), _index)
    _NAMES.setdefault(_name, _index)
TABLE_SIZE_ZERO: Final = b"\x20"
"""A dynamic table size update to 0, first in the connection's first block: we index nothing, so any size
kas's SETTINGS later allow is above ours."""


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1: `value` with an N-bit prefix, `first` holding the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0) + value  # no Huffman coding: loopback bytes are cheap, CPU is not


def encode_headers(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A header block for `headers`, which changes no dynamic table (RFC 7541 §6.1, §6.2.2)."""
    out = bytearray()
    for name, value in headers:
        index = _FULL.get((name, value))
        if index is not None:
            out.append(0x80 | index)
            continue
        name_index = _NAMES.get(name)
        if name_index is not None:
            out += _integer(name_index, 4, 0)
        else:
            out.append(0)
            out += _string(name)
        out += _string(value)
    return bytes(out)


_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
"""A header name as HTTP/2 allows it: a token in lower case (RFC 9113 §8.2.1)."""
_VALUE_FORBIDDEN: Final = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
_REQUEST_PSEUDO: Final = frozenset((b":method", b":scheme", b":path", b":authority"))
CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


class HeaderError(ValueError):
    """Headers HTTP/2 does not allow in a request."""


def check_request_headers(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Raise HeaderError unless `headers` are a valid HTTP/2 request's (the last line behind the
    operator's validation of what tenants set)."""
    regular = False
    for name, value in headers:
        if name.startswith(b":"):
            if regular or name not in _REQUEST_PSEUDO:
                raise HeaderError(f"pseudo-header {name[:32]!r} not allowed here")
        else:
            regular = True
            if not _NAME.fullmatch(name):
                raise HeaderError(f"header name {name[:32]!r} is not a lower-case token")
            if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
                raise HeaderError(f"connection-specific header {name.decode()!r}")
        if forbidden_value(value):
            raise HeaderError(f"the value of {name[:32]!r} has forbidden characters or surrounding spaces")


def forbidden_value(value: bytes) -> bool:
    """A field value HTTP/2 calls malformed: NUL, CR or LF in it, or whitespace around it (RFC 9113
    §8.2.1)."""
    return _VALUE_FORBIDDEN.search(value) is not None
