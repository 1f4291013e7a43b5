"""agentk's `--kas-header`: HTTP headers on the WebSocket handshake (ws/wss) or gRPC metadata (grpc/grpcs).

Values may be credentials for a proxy or ingress in front of kas, so errors name the header, never its value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from agent_proto.wstunnel import check_header
from agent_runtime.transport.config_error import TransportConfigError

_HANDSHAKE_OWNED: Final = frozenset(
    {"host", "upgrade", "connection", "content-length", "transfer-encoding", "origin"}
)
"""Headers the WebSocket handshake sets itself (Origin: agentk sends none and kas may reject a mismatch)."""
_METADATA_RESERVED: Final = frozenset({"authorization", "user-agent", "content-type", "te", "host"})
"""Metadata keys gRPC or the token credentials own."""
_METADATA_KEY: Final = re.compile(r"[0-9a-z_.\-]+")


class KasHeaderError(TransportConfigError):
    """A kas header cannot be sent; the message names the header but never shows its value."""

    default_hint = "fix kasHeaders"


def handshake_headers(headers: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Validated headers for the WebSocket upgrade request, names and values trimmed like agentk."""
    result = []
    for raw_name, raw_value in headers:
        name, value = _trimmed(raw_name, raw_value)
        lowered = name.lower()
        if lowered in _HANDSHAKE_OWNED or lowered.startswith("sec-websocket-"):
            raise KasHeaderError(f"kas header {name!r} is set by the WebSocket handshake itself")
        try:
            check_header(name, value)
        except ValueError as e:
            raise KasHeaderError(f"kas header {name[:40]!r}: {_without_value(e, value)}") from None
        result.append((name, value))
    return tuple(result)


def metadata_headers(headers: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Validated gRPC metadata (lower-case keys) sent on every RPC for grpc/grpcs."""
    result = []
    for raw_name, raw_value in headers:
        name, value = _trimmed(raw_name, raw_value)
        key = name.lower()
        if not _METADATA_KEY.fullmatch(key):
            raise KasHeaderError(f"kas header {name[:40]!r} is not a valid gRPC metadata key")
        if key in _METADATA_RESERVED or key.startswith("grpc-") or key.endswith("-bin"):
            raise KasHeaderError(f"kas header {name!r} is reserved in gRPC metadata")
        if not all(0x20 <= ord(c) <= 0x7E for c in value):
            raise KasHeaderError(f"the value of kas header {name!r} must be printable ASCII")
        result.append((key, value))
    return tuple(result)


def _trimmed(name: str, value: str) -> tuple[str, str]:
    name, value = name.strip(), value.strip()
    if not name:
        raise KasHeaderError("a kas header has an empty name")
    if not value:
        raise KasHeaderError(f"kas header {name[:40]!r} has an empty value")
    return name, value


def _without_value(error: ValueError, value: str) -> str:
    return str(error).replace(value, "<value>") if value else str(error)
