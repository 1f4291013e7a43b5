"""The tunnel's HTTP/2 "channel": hands each new call a connection to kas, dialing one when needed.

Like grpc's channel with wait-for-ready: a call waits while kas cannot be reached, and the connection is
dialed again with gRPC's connect backoff (1 s, x1.6, jitter 0.2, at most 120 s; PROTOCOL.md §3.5). Calls
never share a connection with another worker's; a connection kas sends GOAWAY on keeps its calls and the
next call dials a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import grpc

from agent_runtime.backoff import Backoff, BackoffPolicy
from agent_runtime.transport.dialer import DialPlan, dial
from agent_runtime.transport.errors import TransportError
from agent_runtime.transport.h2 import wire
from agent_runtime.transport.h2.call import H2Call
from agent_runtime.transport.h2.link import H2Link, LinkSettings

_log = logging.getLogger(__name__)

CONNECT_BACKOFF: Final = BackoffPolicy(initial=1.0, cap=120.0, factor=1.6, jitter=0.2, reset_after=150.0)
"""gRPC's connect backoff, which agentk uses (PROTOCOL.md §3.5)."""
CLOSED: Final = wire.Status(grpc.StatusCode.CANCELLED, "the connection to kas was closed")


@dataclass(frozen=True)
class H2Target:
    """Where the tunnel's connections go and what its calls carry."""

    plan: DialPlan
    """How to reach kas (the bridge's plan, with TLS done by the dialer for grpcs too)."""
    scheme: str
    """The :scheme of every call ("https" when TLS is used, else "http")."""
    authority: str
    """The :authority of every call (kas's host header)."""
    user_agent: str
    """`gitlab-agent/<version>/<commit>`."""
    max_message: int
    """Largest message accepted from kas."""
    link: LinkSettings = field(default_factory=LinkSettings)
    """Keepalive of each connection."""


class H2Channel:
    """Connections to one kas for one worker's tunnel calls."""

    def __init__(
        self, target: H2Target, *, name: str, on_kas_version: Callable[[str], None] | None = None
    ) -> None:
        self._target = target
        self._name = name
        self._on_kas_version = on_kas_version
        self._current: H2Link | None = None
        self._links: set[H2Link] = set()
        self._dialing: asyncio.Task[None] | None = None
        self._backoff = Backoff(CONNECT_BACKOFF)
        self._closing = False

    def stream_stream(self, path: str) -> Callable[..., H2Call]:
        """A factory of calls to `path`, called as grpc.aio's multi-callable is (metadata, ...)."""
        target = self._target

        def start(
            *,
            metadata: Iterable[tuple[str, str]] = (),
            wait_for_ready: bool = True,
            compression: object = None,
        ) -> H2Call:
            # Calls always wait for kas (the tunnel's only use); messages go uncompressed (as
            # TUNNEL_COMPRESSION says), so both keyword arguments are accepted and need nothing.
            headers = wire.request_headers(
                path=path,
                scheme=target.scheme,
                authority=target.authority,
                user_agent=target.user_agent,
                metadata=metadata,
            )
            return H2Call(self.link, headers, target.max_message)

        return start

    @property
    def connections(self) -> int:
        """Connections to kas open now (draining ones included)."""
        return len(self._links)

    async def link(self) -> H2Link:
        """A connection that takes new streams, dialed (with backoff) if there is none."""
        while True:
            current = self._current
            if current is not None and current.usable:
                return current
            if self._closing:
                raise CLOSED.error()
            if self._dialing is None or self._dialing.done():
                self._dialing = asyncio.create_task(self._dial_until_up(), name=f"h2-dial:{self._name}")
            # asyncio.wait: a call given up does not cancel the dial others wait for, and the dial's own
            # end (cancelled by close()) is not mistaken for the caller's cancellation.
            await asyncio.wait({self._dialing})

    async def _dial_until_up(self) -> None:
        while not self._closing:
            try:
                dialed = await dial(self._target.plan)
            except TransportError as e:
                # The grpc channel's bridge reports the same failures on the resource; logs only here.
                _log.debug("tunnel connection %s: %s", self._name, e.error.message)
            except Exception:  # noqa: BLE001 - the dial loop must outlive any failure, as the bridge's does
                _log.exception("tunnel connection %s: unexpected dial failure", self._name)
            else:
                if self._closing:
                    dialed.transport.abort()
                    return
                self._backoff.reset()
                if dialed.kas_version and self._on_kas_version is not None:
                    self._on_kas_version(dialed.kas_version)
                link = H2Link(
                    dialed,
                    websocket=self._target.plan.websocket,
                    settings=self._target.link,
                    on_unusable=self._unusable,
                    name=self._name,
                )
                if link.usable:
                    self._links.add(link)
                    self._current = link
                    return
            await self._backoff.sleep()

    def _unusable(self, link: H2Link) -> None:
        if self._current is link:
            self._current = None
        if not link.usable and link.idle.done():
            self._links.discard(link)

    async def close(self, grace: float) -> None:
        """Let open calls end for up to `grace` seconds, then end them and drop every connection."""
        self._closing = True
        dialing = self._dialing
        if dialing is not None:
            dialing.cancel()
            await asyncio.gather(dialing, return_exceptions=True)
        links = list(self._links)
        for link in links:
            link.drain()
        pending = [link.idle for link in links if not link.idle.done()]
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
        for link in links:
            link.abort(CLOSED)
        self._links.clear()
        self._current = None
