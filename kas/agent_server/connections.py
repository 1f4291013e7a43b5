"""Agent connections, found again from inside gRPC handlers by `context.peer()`.

With the front listener (WebSocket on), every agent connection is spliced into its own loopback TCP
connection to the internal gRPC server, so a handler's peer (`ipv4:127.0.0.1:<port>`) names exactly one
agent connection, which the front listener registers on accept. Without it (gRPC served directly), the
peer is the agent's own address and the table registers the connection when its first stream arrives,
forgetting it when its last stream ends.

Each connection carries GitLab's "age context" (PROTOCOL.md §3.6): an event set 30 % of
`max_connection_age` (+0-5 % random) after accept, which ends idle Connect and GetConfiguration streams OK.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field

_ids = itertools.count(1)


@dataclass(eq=False)
class AgentConnection:
    """One accepted TCP (or TLS, or WebSocket) connection from an agent."""

    remote: str
    """host:port of the agent as the front listener saw it."""
    transport: str
    """grpc, grpcs, ws or wss."""
    id: int = field(default_factory=lambda: next(_ids))
    accepted_at: float = field(default_factory=time.monotonic)
    aged: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the age context fires (or the connection is gone)."""
    watchers: set[asyncio.Event] = field(default_factory=set)
    """Events of long-lived handlers on this connection, set together with `aged`."""
    streams: int = 0
    """Handlers attached to this connection now."""
    seen_by_peer: bool = False
    """Registered by `attach()` (gRPC served directly), not by the front listener: it goes with its last
    stream."""
    _timer: asyncio.TimerHandle | None = None

    def start_age_timer(self, age: float) -> None:
        delay = age * (1.0 + random.uniform(0.0, 0.05))  # noqa: S311 - jitter, not security
        self._timer = asyncio.get_running_loop().call_later(delay, self.fire)

    def fire(self) -> None:
        """The age context is done: wake every idle handler so it can end with OK."""
        self.aged.set()
        for event in list(self.watchers):
            event.set()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.fire()


class ConnectionTable:
    """Peer address (as gRPC names it) -> agent connection."""

    def __init__(self, age_context: float, transport: str = "grpc") -> None:
        self._age_context = age_context
        self._transport = transport
        """What connections first seen by peer are (grpc or grpcs): the direct listener's scheme."""
        self._by_peer: dict[str, AgentConnection] = {}

    def attach(self, peer: str) -> AgentConnection:
        """The connection a handler's stream runs on; pair with `detach()` when the handler ends."""
        conn = self._by_peer.get(peer)
        if conn is None:
            remote = peer.partition(":")[2] or peer  # "ipv4:10.0.0.1:5000" -> "10.0.0.1:5000"
            conn = AgentConnection(remote=remote, transport=self._transport, seen_by_peer=True)
            conn.start_age_timer(self._age_context)
            self._by_peer[peer] = conn
        conn.streams += 1
        return conn

    def detach(self, peer: str, conn: AgentConnection) -> None:
        """A handler attached to `conn` ended; a connection seen by peer goes with its last stream."""
        conn.streams -= 1
        if conn.streams == 0 and conn.seen_by_peer and self._by_peer.get(peer) is conn:
            del self._by_peer[peer]
            conn.close()

    def add(self, internal_local_port: int, conn: AgentConnection) -> None:
        conn.start_age_timer(self._age_context)
        self._by_peer[f"ipv4:127.0.0.1:{internal_local_port}"] = conn

    def remove(self, internal_local_port: int) -> None:
        conn = self._by_peer.pop(f"ipv4:127.0.0.1:{internal_local_port}", None)
        if conn is not None:
            conn.close()

    def __len__(self) -> int:
        return len(self._by_peer)

    def close_all(self) -> None:
        for conn in self._by_peer.values():
            conn.close()
        self._by_peer.clear()
