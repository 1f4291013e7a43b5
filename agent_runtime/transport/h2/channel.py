"""The worker's HTTP/2 "channel" to kas: hands each new call a connection, dialing one when needed.

Like grpc's channel: a call waits while kas cannot be reached (wait-for-ready; without it a call fails
UNAVAILABLE at once while the last dial failed), and the connection is dialed again with gRPC's connect
backoff (1 s, x1.6, jitter 0.2, at most 120 s; PROTOCOL.md §3.5). Calls never share a connection with
another worker's; a connection kas sends GOAWAY on keeps its calls and the next call dials a new one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from agent_runtime.backoff import Backoff, BackoffPolicy
from agent_runtime.rpc_status import StatusCode
from agent_runtime.spec import ErrorReason, WorkerError
from agent_runtime.transport.dialer import DialPlan, dial
from agent_runtime.transport.errors import TransportError
from agent_runtime.transport.h2 import wire
from agent_runtime.transport.h2.call import H2Call
from agent_runtime.transport.h2.link import H2Link, LinkSettings
from agent_runtime.transport.h2.unary import H2UnaryCall

_log = logging.getLogger(__name__)

CONNECT_BACKOFF: Final = BackoffPolicy(initial=1.0, cap=120.0, factor=1.6, jitter=0.2, reset_after=150.0)
"""gRPC's connect backoff, which agentk uses (PROTOCOL.md §3.5)."""
CLOSED: Final = wire.Status(StatusCode.CANCELLED, "the connection to kas was closed")
UNREACHABLE: Final = wire.Status(StatusCode.UNAVAILABLE, "kas cannot be reached")


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


@dataclass(frozen=True)
class DialObserver:
    """Who learns how dialing kas goes (the worker's status and kas version)."""

    dialed: Callable[[str | None], None]
    """A connection is up; called with the kas version its handshake announced, if any."""
    failed: Callable[[WorkerError], None]
    """A dial failed; called with what the worker reports."""


class H2Channel:
    """Connections to one kas for one worker's calls."""

    def __init__(self, target: H2Target, *, name: str, observer: DialObserver | None = None) -> None:
        self._target = target
        self._name = name
        self.observer = observer
        """Who learns how dialing goes; its owner may set it before the first call."""
        self._current: H2Link | None = None
        self._links: set[H2Link] = set()
        self._dialing: asyncio.Task[None] | None = None
        self._backoff = Backoff(CONNECT_BACKOFF)
        self._closing = False
        self._attempted: asyncio.Future[None] | None = None
        """Resolved after the dial attempt under way, so that calls not waiting for kas learn its outcome."""
        self._failing = False
        """The last dial failed (and none succeeded since): calls that do not wait for kas fail at once."""

    def stream_stream(self, path: str) -> Callable[..., H2Call]:
        """A factory of bidirectional-streaming calls to `path`, called as grpc.aio's multi-callable is."""

        def start(
            *,
            metadata: Iterable[tuple[str, str]] = (),
            wait_for_ready: bool | None = None,
            gzip: bool = False,
        ) -> H2Call:
            # The tunnel's messages go uncompressed, whatever `gzip` asks (grpc_calls.TUNNEL_GZIP).
            return H2Call(self._connector(wait_for_ready), self._headers(path, metadata), self._max)

        return start

    def unary_stream(self, path: str) -> Callable[..., H2Call]:
        """A factory of server-streaming calls to `path`: `(request, metadata=..., ...)`."""
        return functools.partial(self._request_call, path)

    def unary_unary(self, path: str) -> Callable[..., H2UnaryCall]:
        """A factory of unary calls to `path`: `(request, metadata=..., timeout=..., ...)`."""

        def start(request: bytes, *, timeout: float | None = None, **options: Any) -> H2UnaryCall:
            return H2UnaryCall(self._request_call(path, request, timeout=timeout, **options), timeout)

        return start

    def _request_call(
        self,
        path: str,
        request: bytes,
        *,
        metadata: Iterable[tuple[str, str]] = (),
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
        gzip: bool = False,
    ) -> H2Call:
        """A call that sends `request` and half-closes; gzip if asked, as agentk's calls are."""
        headers = self._headers(path, metadata, timeout, gzip=gzip)
        return H2Call(self._connector(wait_for_ready), headers, self._max, request, gzip=gzip)

    @property
    def _max(self) -> int:
        return self._target.max_message

    def _headers(
        self,
        path: str,
        metadata: Iterable[tuple[str, str]],
        timeout: float | None = None,
        *,
        gzip: bool = False,
    ) -> list[tuple[bytes, bytes]]:
        target = self._target
        return wire.request_headers(
            path=path,
            scheme=target.scheme,
            authority=target.authority,
            user_agent=target.user_agent,
            metadata=metadata,
            timeout=timeout,
            gzip=gzip,
        )

    def _connector(self, wait_for_ready: bool | None) -> Callable[[], Awaitable[H2Link]]:
        return self.link if wait_for_ready else functools.partial(self.link, wait_for_ready=False)

    @property
    def connections(self) -> int:
        """Connections to kas open now (draining ones included)."""
        return len(self._links)

    async def link(self, *, wait_for_ready: bool = True) -> H2Link:
        """A connection that takes new streams, dialed (with backoff) if there is none. Without
        `wait_for_ready`, UNAVAILABLE as soon as a dial fails (at once while the last one failed)."""
        while True:
            current = self._current
            if current is not None and current.usable:
                return current
            if self._closing:
                raise CLOSED.error()
            if self._failing and not wait_for_ready:
                raise UNREACHABLE.error()
            if self._dialing is None or self._dialing.done():
                self._dialing = asyncio.create_task(self._dial_until_up(), name=f"h2-dial:{self._name}")
            if self._attempted is None:
                self._attempted = asyncio.get_running_loop().create_future()
            # asyncio.wait: a call given up does not cancel the dial others wait for, and the dial's own
            # end (cancelled by close()) is not mistaken for the caller's cancellation.
            await asyncio.wait({self._dialing, self._attempted}, return_when=asyncio.FIRST_COMPLETED)

    async def _dial_until_up(self) -> None:
        while not self._closing:
            link = await self._dial_once()
            attempted, self._attempted = self._attempted, None
            if attempted is not None and not attempted.done():
                attempted.set_result(None)  # calls that do not wait for kas look at the outcome
            if link is not None:
                self._backoff.reset()
                return
            await self._backoff.sleep()

    async def _dial_once(self) -> H2Link | None:
        """One connection attempt; the link when kas took it, else None (the failure is reported)."""
        try:
            dialed = await dial(self._target.plan)
        except TransportError as e:
            self._dial_failed(e.error)
            return None
        except Exception as e:  # noqa: BLE001 - the dial loop must outlive any failure, as the bridge's does
            _log.exception("kas connection %s: unexpected dial failure", self._name)
            self._dial_failed(
                WorkerError(ErrorReason.INTERNAL, f"unexpected failure dialing kas: {type(e).__name__}")
            )
            return None
        if self._closing:
            dialed.transport.abort()
            return None
        self._failing = False
        if self.observer is not None:
            self.observer.dialed(dialed.kas_version)
        link = H2Link(
            dialed,
            websocket=self._target.plan.websocket,
            settings=self._target.link,
            on_unusable=self._unusable,
            name=self._name,
            on_protocol_error=self._report,
        )
        if not link.usable:  # kas broke the protocol or left in its first bytes
            self._failing = True
            return None
        self._links.add(link)
        self._current = link
        return link

    def _dial_failed(self, error: WorkerError) -> None:
        self._failing = True
        self._report(error)

    def _report(self, error: WorkerError) -> None:
        """A dial failed, or kas broke the protocol on a connection (the next call dials a new one)."""
        if self.observer is not None:
            self.observer.failed(error)

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
