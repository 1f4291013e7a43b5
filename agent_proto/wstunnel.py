"""RFC 6455 WebSocket codec for the `ws-tunnel` transport (PROTOCOL.md §3.2). Pure: no I/O.

gRPC's HTTP/2 byte stream travels as the payload of binary WebSocket messages whose boundaries carry no
meaning, so the decoder hands out payload bytes as soon as they arrive and never reassembles a message.
Both ends use this module: the agent (client: masks what it sends, expects unmasked frames) and the
reference kas (server: the opposite).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

SUBPROTOCOL: Final = "ws-tunnel"
"""The only subprotocol offered by agentk and accepted by kas."""
MAX_MESSAGE_SIZE: Final = 10 * 1024 * 1024
"""Read limit per WebSocket message, on both sides (agentk's and kas's defaultMaxMessageSize)."""
MAX_HEAD_SIZE: Final = 64 * 1024
"""Largest HTTP/1.1 request or response head we accept during the upgrade."""
MAX_CONTROL_PAYLOAD: Final = 125
"""RFC 6455 §5.5: control frames carry at most 125 payload bytes."""
_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes we send (RFC 6455 §7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    MESSAGE_TOO_BIG = 1009


class WebSocketProtocolError(Exception):
    """The peer broke RFC 6455 or the tunnel's rules; close the connection with `code`."""

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a binary message's payload, in order; message boundaries are not reported."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping; answer it with a pong carrying the same payload."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong (unsolicited or answering our ping)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer started (or answered) the closing handshake. `code` is None when it sent no code."""

    code: int | None
    reason: str


Event = Data | Ping | Pong | Close


# ---------------------------------------------------------------------------------------------------
# Masking and encoding


def apply_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    """XOR `data` with the 4-byte masking `key`, starting at byte `offset` of the frame payload."""
    n = len(data)
    if n == 0:
        return b""
    shift = offset % 4
    rotated = key[shift:] + key[:shift]
    # One big-integer XOR is far faster in CPython than a per-byte loop, and linear in the size.
    repeated = (rotated * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(
    opcode: Opcode, payload: bytes = b"", *, mask: bool, fin: bool = True, mask_key: bytes | None = None
) -> bytes:
    """One frame. Clients must mask (`mask=True`), servers must not; `mask_key` fixes the key (tests)."""
    if opcode >= Opcode.CLOSE and (len(payload) > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
    first = (0x80 if fin else 0) | int(opcode)
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = mask_key if mask_key is not None else os.urandom(4)
    if len(key) != 4:
        raise ValueError("the masking key has 4 bytes")
    return head + key + apply_mask(payload, key)


def encode_binary(payload: bytes, *, mask: bool, max_frame: int = 1 << 20) -> bytes:
    """Payload as complete binary messages of at most `max_frame` bytes each (boundaries carry no meaning)."""
    if len(payload) <= max_frame:
        return encode_frame(Opcode.BINARY, payload, mask=mask)
    view = memoryview(payload)
    return b"".join(
        encode_frame(Opcode.BINARY, bytes(view[i : i + max_frame]), mask=mask)
        for i in range(0, len(payload), max_frame)
    )


def encode_close(code: int | None, reason: str = "", *, mask: bool) -> bytes:
    """A close frame; the reason is cut so the payload fits a control frame."""
    if code is None:
        return encode_frame(Opcode.CLOSE, b"", mask=mask)
    body = reason.encode()[: MAX_CONTROL_PAYLOAD - 2]
    # Cutting may split a UTF-8 sequence; drop the broken tail so the peer can decode the reason.
    body = body.decode("utf-8", "ignore").encode()
    return encode_frame(Opcode.CLOSE, struct.pack("!H", code) + body, mask=mask)


# ---------------------------------------------------------------------------------------------------
# Streaming decoder

_HEADER = 0
_EXT_LEN = 1
_MASK_KEY = 2
_PAYLOAD = 3


def _valid_close_code(code: int) -> bool:
    # RFC 6455 §7.4: 1004-1006 and 1015 are reserved for local use; 3000-4999 are for applications.
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack("!H", payload[:2])
    if not _valid_close_code(code):
        raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketProtocolError(CloseCode.INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return Close(code, reason)


class FrameDecoder:
    """Turns received bytes into events, streaming binary payload as it arrives.

    `expect_masked` is True on the server (clients must mask) and False on the client. Text messages,
    messages over `max_message_size`, and every RFC 6455 violation raise `WebSocketProtocolError`;
    after that (or after a Close event) the decoder accepts no more input.
    """

    def __init__(self, *, expect_masked: bool, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._expect_masked = expect_masked
        self._max_message_size = max_message_size
        self._buf = bytearray()
        self._state = _HEADER
        self._fin = False
        self._opcode = Opcode.CONTINUATION
        self._masked = False
        self._ext_len_size = 0
        self._remaining = 0
        self._mask_key = b""
        self._mask_offset = 0
        self._control_payload = bytearray()
        self._in_message = False
        self._message_size = 0
        self._done = False

    @property
    def closed(self) -> bool:
        """A Close frame or a protocol error ended the stream."""
        return self._done

    def feed(self, data: bytes) -> list[Event]:
        """Consume `data`; return the events it completes, in order."""
        if self._done:
            if data:
                raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "data after the close frame")
            return []
        self._buf += data
        events: list[Event] = []
        try:
            while self._step(events):
                pass
        except WebSocketProtocolError:
            self._done = True
            raise
        return events

    def _step(self, events: list[Event]) -> bool:
        if self._done:
            return False
        if self._state == _HEADER:
            return self._read_header()
        if self._state == _EXT_LEN:
            return self._read_ext_len()
        if self._state == _MASK_KEY:
            return self._read_mask_key()
        return self._read_payload(events)

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        return chunk

    def _read_header(self) -> bool:
        if len(self._buf) < 2:
            return False
        b0, b1 = self._take(2)
        if b0 & 0x70:
            raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
        self._fin = bool(b0 & 0x80)
        self._opcode = self._check_opcode(b0 & 0x0F)
        self._masked = bool(b1 & 0x80)
        if self._masked != self._expect_masked:
            side = "masked" if self._expect_masked else "unmasked"
            raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, f"expected {side} frames")
        length = b1 & 0x7F
        self._ext_len_size = {126: 2, 127: 8}.get(length, 0)
        self._remaining = length
        self._state = _EXT_LEN if self._ext_len_size else self._after_length()
        return True

    def _check_opcode(self, value: int) -> Opcode:
        try:
            opcode = Opcode(value)
        except ValueError:
            raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {value:#x}") from None
        if opcode == Opcode.TEXT:
            raise WebSocketProtocolError(CloseCode.UNSUPPORTED_DATA, "text messages are not allowed")
        if opcode >= Opcode.CLOSE:
            if not self._fin:
                raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
        elif opcode == Opcode.CONTINUATION and not self._in_message:
            raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame without a message")
        elif opcode == Opcode.BINARY and self._in_message:
            raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        return opcode

    def _read_ext_len(self) -> bool:
        if len(self._buf) < self._ext_len_size:
            return False
        raw = self._take(self._ext_len_size)
        self._remaining = struct.unpack("!H" if self._ext_len_size == 2 else "!Q", raw)[0]
        if self._ext_len_size == 8 and self._remaining >> 63:
            raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "frame length has the top bit set")
        self._state = self._after_length()
        return True

    def _after_length(self) -> int:
        if self._opcode >= Opcode.CLOSE:
            if self._remaining > MAX_CONTROL_PAYLOAD:
                raise WebSocketProtocolError(CloseCode.PROTOCOL_ERROR, "control frame longer than 125 bytes")
        else:
            if self._opcode == Opcode.BINARY:
                self._message_size = 0
            self._message_size += self._remaining
            if self._message_size > self._max_message_size:
                raise WebSocketProtocolError(
                    CloseCode.MESSAGE_TOO_BIG,
                    f"message larger than the {self._max_message_size}-byte limit",
                )
            self._in_message = not self._fin
        self._mask_offset = 0
        return _MASK_KEY if self._masked else _PAYLOAD

    def _read_mask_key(self) -> bool:
        if len(self._buf) < 4:
            return False
        self._mask_key = self._take(4)
        self._state = _PAYLOAD
        return True

    def _read_payload(self, events: list[Event]) -> bool:
        is_control = self._opcode >= Opcode.CLOSE
        if self._remaining and not self._buf:
            return False
        chunk = self._take(min(self._remaining, len(self._buf)))
        self._remaining -= len(chunk)
        if self._masked:
            chunk = apply_mask(chunk, self._mask_key, self._mask_offset)
            self._mask_offset += len(chunk)
        if is_control:
            self._control_payload += chunk
        elif chunk:
            events.append(Data(chunk))
        if self._remaining:
            return False
        self._state = _HEADER
        if is_control:
            events.append(self._control_event(bytes(self._control_payload)))
            self._control_payload.clear()
        return True

    def _control_event(self, payload: bytes) -> Event:
        if self._opcode == Opcode.PING:
            return Ping(payload)
        if self._opcode == Opcode.PONG:
            return Pong(payload)
        self._done = True
        return _parse_close(payload)


# ---------------------------------------------------------------------------------------------------
# HTTP/1.1 upgrade


class HandshakeError(Exception):
    """The HTTP/1.1 upgrade failed; the message says why in words a user can act on."""


@dataclass(frozen=True)
class HttpHead:
    """A parsed HTTP/1.1 request or response head. Header names keep their case; lookups ignore it."""

    start_line: tuple[str, str, str]
    """Request: (method, target, version). Response: (version, status code, reason phrase)."""
    headers: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def get_all(self, name: str) -> list[str]:
        """Every value of header `name`, comma-separated lists split, empty items dropped."""
        lowered = name.lower()
        values = (v for k, v in self.headers if k.lower() == lowered)
        return [item.strip() for v in values for item in v.split(",") if item.strip()]

    def has_token(self, name: str, token: str) -> bool:
        """Header `name` lists `token` (case-insensitive), e.g. Connection: keep-alive, Upgrade."""
        return token.lower() in (item.lower() for item in self.get_all(name))

    @property
    def status(self) -> int:
        """The status code of a response head."""
        return int(self.start_line[1])


def read_head(buffer: bytearray) -> HttpHead | None:
    """Remove and parse one complete head from `buffer`; None until the blank line has arrived."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD_SIZE:
            raise HandshakeError(f"HTTP head larger than {MAX_HEAD_SIZE} bytes")
        return None
    raw = bytes(buffer[:end])
    del buffer[: end + 4]
    return parse_head(raw)


def parse_head(raw: bytes) -> HttpHead:
    """Parse a head without its final blank line."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HandshakeError("HTTP head is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2:
        raise HandshakeError(f"malformed HTTP start line {lines[0][:80]!r}")
    start = (parts[0], parts[1], parts[2] if len(parts) == 3 else "")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(f"malformed HTTP header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return HttpHead(start, tuple(headers))


def parse_response_head(raw: bytes) -> HttpHead:
    """Parse a response head, checking that it is HTTP/1.x with a numeric status."""
    head = parse_head(raw)
    version, status, _ = head.start_line
    if not version.startswith("HTTP/1.") or not (len(status) == 3 and status.isdigit()):
        raise HandshakeError(f"not an HTTP/1.1 response: {' '.join(head.start_line)[:80]!r}")
    return head


def new_key() -> str:
    """A fresh Sec-WebSocket-Key (16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    """The Sec-WebSocket-Accept value that proves a server understood `key`."""
    digest = hashlib.sha1(key.encode() + _ACCEPT_GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def check_header(name: str, value: str) -> None:
    """Reject a header name that is not an HTTP token, or a value that could split the head."""
    if not name or any(c in name for c in ' \t\r\n:"(),/;<=>?@[\\]{}') or not name.isascii():
        raise ValueError(f"invalid HTTP header name {name!r}")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"the value of header {name} contains a line break or NUL")


def _serialize_head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [start_line]
    for name, value in headers:
        check_header(name, value)
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def build_upgrade_request(
    *, target: str, host: str, key: str, extra_headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """The client's upgrade request: GET `target`, subprotocol ws-tunnel, no extensions, no Origin."""
    headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", SUBPROTOCOL),
        *extra_headers,
    ]
    return _serialize_head(f"GET {target} HTTP/1.1", headers)


def check_upgrade_response(head: HttpHead, key: str) -> None:
    """Raise HandshakeError unless `head` accepts our upgrade with the ws-tunnel subprotocol."""
    if head.status != 101:
        raise HandshakeError(f"expected handshake response status code 101 but got {head.status}")
    if not head.has_token("Upgrade", "websocket"):
        raise HandshakeError("handshake response lacks 'Upgrade: websocket'")
    if not head.has_token("Connection", "upgrade"):
        raise HandshakeError("handshake response lacks 'Connection: Upgrade'")
    if head.get("Sec-WebSocket-Accept") != accept_for(key):
        raise HandshakeError("handshake response has a wrong Sec-WebSocket-Accept")
    protocol = head.get("Sec-WebSocket-Protocol")
    if protocol != SUBPROTOCOL:
        got = f"{protocol!r}" if protocol else "none"
        raise HandshakeError(f"server did not select the {SUBPROTOCOL!r} subprotocol (got {got})")
    if head.get_all("Sec-WebSocket-Extensions"):
        raise HandshakeError("server enabled WebSocket extensions we did not offer")


def check_upgrade_request(head: HttpHead) -> str:
    """Server side: validate an upgrade request; return its Sec-WebSocket-Key."""
    method, _, version = head.start_line
    if method != "GET" or version != "HTTP/1.1":
        raise HandshakeError("WebSocket upgrade must be an HTTP/1.1 GET")
    if not head.has_token("Upgrade", "websocket") or not head.has_token("Connection", "upgrade"):
        raise HandshakeError("websocket upgrade required")
    if head.get("Sec-WebSocket-Version") != "13":
        raise HandshakeError("unsupported Sec-WebSocket-Version (need 13)")
    key = head.get("Sec-WebSocket-Key") or ""
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    if not valid:
        raise HandshakeError("invalid Sec-WebSocket-Key")
    return key


def offered_subprotocols(head: HttpHead) -> list[str]:
    """The subprotocols a client offered, in order."""
    return head.get_all("Sec-WebSocket-Protocol")


def build_upgrade_response(
    key: str, *, subprotocol: str | None = SUBPROTOCOL, extra_headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """Server side: the 101 response (add `Server: gitlab-kas/<version>/<commit>` via extra_headers)."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_for(key)),
    ]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    return _serialize_head("HTTP/1.1 101 Switching Protocols", [*headers, *extra_headers])


def build_error_response(
    status: int, reason: str, body: str = "", extra_headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    """Server side: a plain-text error response that ends the connection."""
    payload = body.encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(payload))),
        ("Connection", "close"),
        *extra_headers,
    ]
    return _serialize_head(f"HTTP/1.1 {status} {reason}", headers) + payload
