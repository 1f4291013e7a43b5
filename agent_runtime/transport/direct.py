"""grpc:// and grpcs:// without a proxy: grpc dials kas's checked addresses itself, no Python relay.

The relay (`ws_bridge.py`) exists because grpcio takes no custom dialer; for WebSocket, a proxy or TLS
without verification it is needed anyway, but for plain grpc/grpcs it only copied bytes, which cost
about 0.5 ms and a good part of the agent's CPU per request (docs/benchmarks.md). Here the worker
resolves kas's name itself with the destination policy (`DestinationGuard.resolve`: once, refused
addresses dropped) and gives grpc the checked IPs as its target (`ipv4:`/`ipv6:`, which grpc never
resolves), so every TCP connection grpc opens still goes to an address the policy permitted. TLS
verifies the certificate against kas's name (`grpc.ssl_target_name_override`, also the SNI) and
`:authority` stays kas's `host[:port]` (`grpc.default_authority`).

Re-resolution (the relay resolved for every connection): a channel's addresses are fixed, so when the
channel is in TRANSIENT_FAILURE the worker asks `DirectRoute.next_target()` (at most every
`RERESOLVE_INTERVAL_S`) and builds a new channel only when the checked addresses changed. A failed
resolution keeps the current target (its addresses passed the policy, as grpc's own DNS resolver keeps
the last good answer); when even the first resolution fails, the channel starts on the relay, which
reports why for every attempt, and moves to the direct target once the name resolves to permitted
addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence
from typing import Final

from agent_runtime.transport.address import KasAddress
from agent_runtime.transport.destination import Destination, DestinationGuard, DestinationRefused, IPAddress

_log = logging.getLogger(__name__)

RERESOLVE_INTERVAL_S: Final = 5.0
"""Least time between two resolutions while the channel fails (kas moved: back within about this)."""


def grpc_target(ips: Sequence[IPAddress], port: int) -> str:
    """grpc's target for `ips` in order: `ipv4:a:p,b:p`, `ipv6:[a]:p`; both families as `ipv6:` with
    IPv4-mapped addresses (one target takes one scheme; grpc connects those over IPv4)."""
    if all(isinstance(ip, ipaddress.IPv4Address) for ip in ips):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip in ips)
    mapped = (
        ipaddress.IPv6Address(f"::ffff:{ip}") if isinstance(ip, ipaddress.IPv4Address) else ip for ip in ips
    )
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip in mapped)


class DirectRoute:
    """Chooses the channel's target: kas's checked addresses, or the relay until the name resolves."""

    def __init__(self, address: KasAddress, guard: DestinationGuard, *, within: float) -> None:
        self._kas = Destination(address.host, address.port, "kas")
        self._guard = guard
        self._within = within
        self._addresses: frozenset[IPAddress] | None = None
        self._resolved_at = float("-inf")
        self.target: str | None = None
        """The current direct `ipv4:`/`ipv6:` target, or None while the channel uses the relay."""

    @property
    def direct(self) -> bool:
        """The current target dials kas directly (not the relay)."""
        return self._addresses is not None

    async def next_target(self) -> str | None:
        """Resolve again; the new target when the checked addresses changed, else None (keep the channel)."""
        now = time.monotonic()
        if now - self._resolved_at < RERESOLVE_INTERVAL_S:
            return None
        self._resolved_at = now
        try:
            ips = await self._guard.resolve(self._kas, within=self._within)
        except (DestinationRefused, OSError, TimeoutError) as e:
            # Keep what we have: checked addresses, or the relay (which reports this on every attempt).
            kept = self.target or "the relay"
            _log.debug("kas %s: resolution failed (%s); keeping %s", self._kas.shown, type(e).__name__, kept)
            return None
        if frozenset(ips) == self._addresses:
            return None
        self._addresses = frozenset(ips)
        self.target = grpc_target(ips, self._kas.port)
        return self.target
