"""Small helpers shared by the modules for calling kas (PROTOCOL.md §3.5)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any, Final, Protocol

from agent_runtime.rpc_status import EndOfStream

GZIP: Final = True
"""agentk compresses every call with gzip (§3.5); we do too, except on the tunnel (below). Passed to the
call factories as `gzip=`."""

TUNNEL_GZIP: Final = False
"""The Connect (reverse tunnel) stream is sent uncompressed, a deliberate deviation from agentk.

grpc.aio compresses inline on the event loop: gzip on 32 KiB tunnel frames capped a tunnelled LIST at
14 % of direct throughput and stalled every other worker of the process meanwhile (docs/benchmarks.md);
uncompressed it reaches 52 to 62 % (LIST) and 69 to 83 % (watch). Every gRPC server accepts
identity-encoded messages, so this is wire compatible; the API server still gzips large responses when
the client asks, as kubectl does.
"""


class TunnelCall(Protocol):
    """What the reverse tunnel uses of a Connect call: the runtime's own HTTP/2 call
    (agent_runtime.transport.h2), or grpc.aio's StreamStreamCall behind its adapter. Both raise
    agent_runtime.rpc_status's RpcError (and UsageError on a write the call no longer takes)."""

    async def write(self, message: bytes) -> None: ...
    async def read(self) -> bytes | EndOfStream: ...
    async def done_writing(self) -> None: ...
    def done(self) -> bool: ...
    def cancel(self) -> bool: ...
    def add_done_callback(self, callback: Callable[[Any], None]) -> None: ...


class UnaryCall(Protocol):
    """What the modules use of a unary call (the own HTTP/2 client's, or grpc.aio's behind its adapter);
    awaiting it raises RpcError for every failure."""

    def __await__(self) -> Generator[Any, None, bytes]: ...
    async def initial_metadata(self) -> Any: ...
    def cancel(self) -> bool: ...
    def done(self) -> bool: ...


class ServerStreamCall(Protocol):
    """What the modules use of a server-streaming call (the own one's, or grpc.aio's behind its adapter)."""

    async def read(self) -> bytes | EndOfStream: ...
    async def initial_metadata(self) -> Any: ...
    def cancel(self) -> bool: ...
    def done(self) -> bool: ...


class KasChannel(Protocol):
    """Where calls to kas are opened: the runtime's own HTTP/2 channel, or a grpc.aio channel behind its
    adapter. Each method gives a factory called as grpc.aio's multi-callables are (request, metadata=,
    timeout=, wait_for_ready=), except that compression is `gzip=` (a bool)."""

    def unary_unary(self, method: str) -> Callable[..., UnaryCall]: ...
    def unary_stream(self, method: str) -> Callable[..., ServerStreamCall]: ...
    def stream_stream(self, method: str) -> Callable[..., TunnelCall]: ...


class EstablishedProbe:
    """Calls `on_established` if a stream is still alive `after` seconds after start() (and not ended).

    A long poll (idle tunnel, quiet GetConfiguration) gives no other sign that kas accepted it: kas
    authenticates first and fails at once, so surviving a moment is the evidence.
    """

    def __init__(self, after: float, on_established: Callable[[], None]) -> None:
        self._after = after
        self._callback = on_established
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Arm the timer."""
        self._handle = asyncio.get_running_loop().call_later(self._after, self._callback)

    def stop(self) -> None:
        """The stream ended (or proved itself otherwise): never call back."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def wait_either(work: asyncio.Task[object], event: asyncio.Event) -> bool:
    """Wait for `work` or `event`; returns True when `event` fired first (work is then still running)."""
    waiter = asyncio.create_task(event.wait(), name="wait-either-event")
    try:
        done, _ = await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    return work not in done
