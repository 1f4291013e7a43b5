"""Redis key and value formats shared with GitLab's kas (PROTOCOL.md §11.3)."""

from __future__ import annotations

import struct
import time

from agent_proto.gitlab.agent.redistool import redistool_pb2


def le8(value: int) -> bytes:
    """8-byte little-endian two's complement of an int64 (agent and project ids in keys)."""
    return struct.pack("<q", value)


def tunnel_index_key(prefix: str, agent_id: int) -> bytes:
    return f"{prefix}:tunnel_tracker2:kas_by_agent_id:".encode() + le8(agent_id)


def conn_by_agent_key(prefix: str, agent_id: int) -> bytes:
    return f"{prefix}:agent_tracker2:conn_by_agent_id:".encode() + le8(agent_id)


def connected_agents_key(prefix: str) -> bytes:
    return f"{prefix}:agent_tracker2:connected_agents".encode()


def expiring(ttl: float, value: bytes = b"") -> bytes:
    return redistool_pb2.ExpiringValue(expires_at=int(time.time() + ttl), value=value).SerializeToString()


def live_value(raw: bytes, now: float | None = None) -> bytes | None:
    """The payload of a serialized ExpiringValue, or None if it expired (or is not one)."""
    value = redistool_pb2.ExpiringValue()
    try:
        value.ParseFromString(raw)
    except Exception:  # noqa: BLE001 - foreign or corrupt entries are skipped like expired ones
        return None
    if value.expires_at < (time.time() if now is None else now):
        return None
    return value.value
