"""Per agent, the ready (idle) tunnels connected to this kas, and requests waiting for one (§11.1).

A request takes a random ready tunnel whose descriptor lists the exact service and method; with none
ready it waits, and the next matching tunnel that registers goes to the longest-waiting request instead
of becoming ready. A tunnel found but not used goes back to the ready set.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence

from google.rpc import code_pb2, status_pb2

from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from kas.tunnel_call import CallError, CallEvent
from kas.tunnels.channel import Channel

_ids = itertools.count(1)
CHANNEL_CAPACITY = 16
"""Frames from the agent buffered per call; beyond that, HTTP/2 flow control holds the agent."""


class KasShuttingDownError(Exception):
    """This kas is stopping: no tunnel will be handed out any more."""


class TunnelGoneError(Exception):
    """The tunnel's Connect stream ended before the call could start on it."""


class TunnelState(enum.Enum):
    READY = "ready"
    RESERVED = "reserved"
    CLAIMED = "claimed"
    GONE = "gone"


def status(code: int, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


def to_values(meta: Mapping[str, Sequence[str]]) -> dict[str, prototool_pb2.Values]:
    return {key: prototool_pb2.Values(value=list(values)) for key, values in meta.items()}


FrameWriter = Callable[[tunnel_rpc.ConnectResponse], Awaitable[None]]
"""Writes one frame on the tunnel's Connect stream (the handler's `context.write`)."""


class LocalTunnelCall:
    """A call running on a tunnel of this kas (TunnelCall).

    Frames to the agent are written by the caller's own task, straight onto the Connect stream (one
    write in flight, in order, under a lock): no queue and no task switch per frame. request_info goes
    out just before the caller's first frame. Frames from the agent arrive through `inbound`, fed by the
    Connect handler's reader.
    """

    def __init__(self, tunnel: Tunnel, request_info: tunnel_rpc.ConnectResponse) -> None:
        self.tunnel = tunnel
        self.inbound: Channel[CallEvent] = Channel(CHANNEL_CAPACITY)
        self.cancelled = asyncio.Event()
        self.write_failed = False
        """Writing to the Connect stream failed: the agent's side is gone."""
        self._request_info: tunnel_rpc.ConnectResponse | None = request_info
        self._send_closed = False
        self._write_lock = asyncio.Lock()

    async def send(self, message: bytes) -> None:
        if self._send_closed:
            raise RuntimeError("send after close_send")
        await self._write(tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=message)))

    async def close_send(self) -> None:
        if not self._send_closed:
            self._send_closed = True
            await self._write(tunnel_rpc.ConnectResponse(close_send=tunnel_rpc.CloseSend()))

    async def receive(self) -> CallEvent | None:
        if self._request_info is not None:
            await self._write(None)  # a caller that only listens still has to tell the agent what to run
        return await self.inbound.get()

    async def cancel(self) -> None:
        self.cancelled.set()
        self.tunnel.changed.set()

    def agent_gone(self, message: str) -> None:
        """The Connect stream ended under the call: the caller sees UNAVAILABLE, then the end."""
        self.inbound.close(CallError(status(code_pb2.UNAVAILABLE, message)))

    async def _write(self, frame: tunnel_rpc.ConnectResponse | None) -> None:
        """Write request_info if still due, then `frame`; after a failure or cancel, frames are dropped."""
        async with self._write_lock:
            due = [f for f in (self._request_info, frame) if f is not None]
            self._request_info = None
            for item in due:
                if self.cancelled.is_set() or self.write_failed:
                    return
                try:
                    await self.tunnel.write(item)
                except Exception:  # noqa: BLE001 - any failure means the stream is over; receive() says how
                    self.write_failed = True
                    self.tunnel.changed.set()
                    return


class Tunnel:
    """One agent Connect stream, from descriptor to end. Owned by its Connect handler."""

    def __init__(
        self,
        agent_id: int,
        services: Mapping[str, frozenset[str]],
        write: FrameWriter,
        connection_id: int = 0,
    ) -> None:
        self.id = next(_ids)
        self.write = write
        """Writes a frame on this tunnel's Connect stream."""
        self.agent_id = agent_id
        self.services = services
        self.connection_id = connection_id
        self.state = TunnelState.READY
        self.retire_requested = False
        self.call: LocalTunnelCall | None = None
        self.changed = asyncio.Event()
        """Set when the tunnel is claimed by a call or retired; the Connect handler waits on it."""
        self.settled = asyncio.Event()
        """Set once the tunnel carries a call or is gone (never reset)."""

    def supports(self, service: str, method: str) -> bool:
        methods = self.services.get(service)
        return methods is not None and method in methods

    def start(self, method: str, meta: Mapping[str, Sequence[str]]) -> LocalTunnelCall:
        """Begin the one call this tunnel carries: request_info goes out first."""
        if self.state is not TunnelState.RESERVED:
            raise TunnelGoneError(f"tunnel {self.id} is {self.state.value}")
        info = tunnel_rpc.RequestInfo(method_name=method, meta=to_values(meta))
        call = LocalTunnelCall(self, tunnel_rpc.ConnectResponse(request_info=info))
        self.state, self.call = TunnelState.CLAIMED, call
        self.changed.set()
        self.settled.set()
        return call


class _Waiter:
    __slots__ = ("future", "method", "service")

    def __init__(self, service: str, method: str) -> None:
        self.service = service
        self.method = method
        self.future: asyncio.Future[Tunnel] = asyncio.get_running_loop().create_future()


PresenceCallback = Callable[[int], None]


class TunnelRegistry:
    """Ready tunnels and waiting requests per agent id."""

    def __init__(
        self, on_first_tunnel: PresenceCallback | None = None, on_last_tunnel: PresenceCallback | None = None
    ) -> None:
        self._ready: dict[int, dict[int, Tunnel]] = {}
        self._waiters: dict[int, list[_Waiter]] = {}
        self._counts: dict[int, int] = {}
        self._all: set[Tunnel] = set()
        self._on_first = on_first_tunnel
        self._on_last = on_last_tunnel
        self.shutting_down = False
        self.shutdown_event = asyncio.Event()

    # -- tunnels (called by Connect handlers) -------------------------------------------------------

    def add(self, tunnel: Tunnel) -> None:
        self._all.add(tunnel)
        count = self._counts.get(tunnel.agent_id, 0)
        self._counts[tunnel.agent_id] = count + 1
        if count == 0 and self._on_first is not None:
            self._on_first(tunnel.agent_id)
        self._offer(tunnel)

    def remove(self, tunnel: Tunnel) -> None:
        """The Connect stream is ending; forget the tunnel whatever its state."""
        if tunnel.state is TunnelState.GONE:
            return
        tunnel.state = TunnelState.GONE
        tunnel.changed.set()
        tunnel.settled.set()
        self._all.discard(tunnel)
        ready = self._ready.get(tunnel.agent_id)
        if ready is not None:
            ready.pop(tunnel.id, None)
            if not ready:
                del self._ready[tunnel.agent_id]
        count = self._counts.get(tunnel.agent_id, 0) - 1
        if count > 0:
            self._counts[tunnel.agent_id] = count
        else:
            self._counts.pop(tunnel.agent_id, None)
            if self._on_last is not None:
                self._on_last(tunnel.agent_id)

    def retire(self, tunnel: Tunnel) -> bool:
        """End an idle tunnel (age context, shutdown). False if a request holds it right now."""
        if tunnel.state is TunnelState.READY:
            self.remove(tunnel)
            return True
        if tunnel.state is TunnelState.RESERVED:
            tunnel.retire_requested = True
            return False
        return tunnel.state is TunnelState.GONE

    def _offer(self, tunnel: Tunnel) -> None:
        waiters = self._waiters.get(tunnel.agent_id)
        if waiters:
            for i, waiter in enumerate(waiters):
                if not waiter.future.done() and tunnel.supports(waiter.service, waiter.method):
                    del waiters[i]
                    if not waiters:
                        del self._waiters[tunnel.agent_id]
                    tunnel.state = TunnelState.RESERVED
                    waiter.future.set_result(tunnel)
                    return
        tunnel.state = TunnelState.READY
        self._ready.setdefault(tunnel.agent_id, {})[tunnel.id] = tunnel

    # -- requests ----------------------------------------------------------------------------------

    def try_find(self, agent_id: int, service: str, method: str) -> Tunnel | None:
        """A ready tunnel (now reserved for the caller), or None."""
        ready = self._ready.get(agent_id)
        if not ready:
            return None
        candidates = list(ready.values())
        pick = random.choice(candidates)  # noqa: S311 - load spreading, not security
        if not pick.supports(service, method):
            matching = [t for t in candidates if t.supports(service, method)]
            if not matching:
                return None
            pick = random.choice(matching)  # noqa: S311
        del ready[pick.id]
        if not ready:
            del self._ready[agent_id]
        pick.state = TunnelState.RESERVED
        return pick

    async def find(self, agent_id: int, service: str, method: str) -> Tunnel:
        """Wait (until cancelled) for a tunnel; raises KasShuttingDownError when kas stops."""
        if self.shutting_down:
            raise KasShuttingDownError("kas is shutting down")
        found = self.try_find(agent_id, service, method)
        if found is not None:
            return found
        waiter = _Waiter(service, method)
        self._waiters.setdefault(agent_id, []).append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.put_back(waiter.future.result())  # handed over just as the requester gave up
            waiters = self._waiters.get(agent_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[agent_id]
            raise

    def put_back(self, tunnel: Tunnel) -> None:
        """A reserved tunnel was not used after all."""
        if tunnel.state is not TunnelState.RESERVED:
            return
        if tunnel.retire_requested or self.shutting_down:
            self.remove(tunnel)
        else:
            self._offer(tunnel)

    # -- state -------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Waiting requests fail with 'kas is shutting down'; idle tunnels are told to end (OK)."""
        self.shutting_down = True
        self.shutdown_event.set()
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(KasShuttingDownError("kas is shutting down"))
        self._waiters.clear()
        for tunnel in list(self._all):
            tunnel.changed.set()

    def counts(self) -> tuple[int, int, int]:
        """(ready tunnels, all tunnels, waiting requests) for metrics."""
        ready = sum(len(t) for t in self._ready.values())
        total = sum(self._counts.values())
        waiting = sum(len(w) for w in self._waiters.values())
        return ready, total, waiting

    def agents_with_tunnels(self) -> list[int]:
        return list(self._counts)
