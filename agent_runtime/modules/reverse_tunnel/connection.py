"""One reverse-tunnel attempt: open Connect, park idle, serve at most one call (§6.3.3).

Sending order: descriptor, then header → message* → trailer → (error) → half-close; or just error for an
unknown method. The (empty) header goes out as soon as the call is accepted, while the handler works.
Receiving order is enforced by ResponseReader: a malformed or out-of-order frame ends this stream with
INVALID_ARGUMENT and never touches other tunnels.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from agent_proto.gitlab.agent.reverse_tunnel.rpc.rpc_pb2 import ConnectResponse
from agent_proto.ordering import StreamOrderError
from agent_runtime.constants import TUNNEL_ESTABLISHED_AFTER_S
from agent_runtime.environment import WorkerMetrics
from agent_runtime.errors import CREDENTIAL_REASONS, classify_rpc_error, is_cancel
from agent_runtime.grpc_calls import TUNNEL_GZIP, EstablishedProbe, TunnelCall
from agent_runtime.local_rpc import CallEndedError, LocalHandler, RpcStatusError
from agent_runtime.module_context import ModuleContext
from agent_runtime.modules.reverse_tunnel import frames
from agent_runtime.modules.reverse_tunnel.budget import ByteBudget, Inbox
from agent_runtime.modules.reverse_tunnel.pool import Outcome, Slot
from agent_runtime.rpc_status import EOF, RpcError, StatusCode, UsageError
from agent_runtime.worker_state import Component

_STREAM_OVER = (RpcError, asyncio.InvalidStateError, UsageError)
"""What a write or half-close of a call that has ended raises. UsageError includes grpc.aio's failed
half-close racing kas's end of the call (ExecuteBatchError), which took the whole worker down through
the pool's TaskGroup (found by tests/reliability/test_fuzz.py)."""

_LINGER_S = 1.0
"""How long a stream we failed waits for kas to end it (see _linger)."""

Status = tuple[StatusCode, str]
_Call = TunnelCall


class _Stream:
    """The LocalCall a handler sees, backed by one Connect stream."""

    def __init__(self, call: _Call, method: str, metadata: dict[str, list[str]], budget: ByteBudget) -> None:
        self._call = call
        self._method = method
        self._metadata = metadata
        self._inbox = Inbox(budget)
        self._write_lock = asyncio.Lock()
        self.first_delivered = asyncio.Event()
        """The reader has handed the handler its first request message (or the end, or given up)."""
        self.header_sent = False
        self.half_closed = False

    @property
    def method(self) -> str:
        return self._method

    @property
    def metadata(self) -> Mapping[str, Sequence[str]]:
        return self._metadata

    async def recv(self) -> bytes | None:
        return await self._inbox.get()

    def has_room(self) -> bool:
        """Another frame may be read from kas now (see budget.py)."""
        return self._inbox.has_room()

    async def wait_room(self) -> None:
        """Return once another frame may be read from kas."""
        await self._inbox.wait_room()

    def deliver(self, item: bytes | None, size: int) -> None:
        """Hand `item` (read as a `size`-byte frame) to the handler."""
        if not self.half_closed:  # after our half-close nobody reads: drop instead of holding it
            self._inbox.put(item, size)
        self.first_delivered.set()

    def discard_inbox(self) -> None:
        self._inbox.clear()

    async def send_header(self, meta: Mapping[str, Sequence[str]]) -> None:
        if self.header_sent:
            raise RuntimeError("response header already sent")
        self.header_sent = True
        await self.write(frames.header(meta))

    async def send(self, message: bytes) -> None:
        if not self.header_sent:
            await self.send_header({})
        await self.write(frames.message(message))

    async def write(self, frame: bytes) -> None:
        async with self._write_lock:
            try:
                await self._call.write(frame)
            except _STREAM_OVER as e:  # not a context manager: this runs for every frame of every request
                raise _call_ended(e) from e

    def call_done(self) -> bool:
        return self._call.done()

    async def finish(self, status: Status) -> None:
        """Send the final frames for `status` and half-close."""
        code, text = status
        if self.header_sent or code is StatusCode.OK:
            if not self.header_sent:
                await self.send_header({})
            await self.write(frames.trailer({}))
        if code is not StatusCode.OK:
            await self.write(frames.error(code, text))
        try:
            await self._call.done_writing()
        except _STREAM_OVER as e:
            raise _call_ended(e) from e
        self.half_closed = True


class TunnelAttempt:
    """Runs one Connect call for one pool slot."""

    def __init__(self, ctx: ModuleContext, slot: Slot, metrics: WorkerMetrics, budget: ByteBudget) -> None:
        self._ctx = ctx
        self._slot = slot
        self._metrics = metrics
        self._budget = budget
        self._reader = frames.ResponseReader()
        self._call_ended = asyncio.Event()
        """Set by the call's done callback, so a read waiting for room stops waiting. A call reports its
        end only once no received message is left unread: a reader paused with one pending learns of it when
        the handler makes room (or the worker stops), as with the bounded queue before."""
        self._ended_with: StatusCode | None = None
        """The gRPC code the call failed with (None: it ended OK or was cancelled by us)."""

    async def run(self) -> Outcome:
        """The attempt; never raises except CancelledError. Its outcome is counted by gRPC code."""
        code = StatusCode.CANCELLED  # unless it ends by itself: drain, new token, worker stopping
        try:
            outcome = await self._attempt()
            code = self._outcome_code(outcome)
            return outcome
        finally:
            self._metrics.connection_attempt(self._ctx.worker_id, "Connect", code.name)

    def _outcome_code(self, outcome: Outcome) -> StatusCode:
        if self._ended_with is not None:
            return self._ended_with
        if outcome is Outcome.DONE:
            return StatusCode.OK
        if outcome is Outcome.CANCELLED:
            return StatusCode.CANCELLED
        return StatusCode.UNKNOWN

    async def _attempt(self) -> Outcome:
        ctx = self._ctx
        connect = ctx.kas.channel.stream_stream(ctx.kas.wire.connect_path)
        call: TunnelCall = connect(metadata=ctx.kas.call_metadata(), wait_for_ready=True, gzip=TUNNEL_GZIP)
        call.add_done_callback(lambda _call: self._call_ended.set())
        probe = EstablishedProbe(TUNNEL_ESTABLISHED_AFTER_S, self._established)
        try:
            await call.write(frames.descriptor(ctx.kas.wire))
            probe.start()
            if not self._budget.has_room():
                await self._room_or_end(self._budget.wait_room)
            first = await self._read(call)
            probe.stop()
            self._slot.set_established(False)
            if first is None:
                return Outcome.DONE  # idle stream rotated by kas (max connection age, shutdown)
            info = first.request_info
            return await self._serve(call, info.method_name, frames.request_metadata(info.meta))
        except RpcError as e:
            return self._rpc_failed(e.code(), e.details())
        except StreamOrderError as e:
            await self._fail_stream(call, None, str(e))
            self._ended_with = StatusCode.INVALID_ARGUMENT
            await _linger(call)
            return Outcome.ERROR
        finally:
            probe.stop()
            self._slot.set_established(False)
            if not call.done():
                call.cancel()

    def _established(self) -> None:
        self._slot.set_established(True)
        self._ctx.auth_gate.report_accepted()
        self._ctx.state.ok(Component.TUNNELS)

    async def _read(self, call: _Call) -> ConnectResponse | None:
        raw = await self._read_raw(call)
        return None if raw is None else self._reader.decode(raw)

    async def _read_raw(self, call: _Call) -> bytes | None:
        """The next frame undecoded (its size is what it costs); None at the end of the stream."""
        raw = await call.read()
        if raw is EOF:
            self._reader.end()
            return None
        assert isinstance(raw, bytes)
        return raw

    async def _room_or_end(self, room: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Wait for `room()` (budget.py), or until the call is over (the next read then says so)."""
        if self._call_ended.is_set():
            return
        waits = {
            asyncio.create_task(room(), name="tunnel-room"),
            asyncio.create_task(self._call_ended.wait(), name="tunnel-ended"),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _rpc_failed(self, code: StatusCode, details: str | None) -> Outcome:
        self._ended_with = code
        if is_cancel(code):
            return Outcome.CANCELLED
        error = classify_rpc_error("Connect", code, details)
        if error.reason in CREDENTIAL_REASONS:
            self._ctx.auth_gate.report_rejected()
        self._ctx.logger.warning("Error handling a connection: %s", error.message)
        self._ctx.state.failed(Component.TUNNELS, error)
        return Outcome.ERROR

    def _activated(self) -> None:
        """request_info arrived: this slot serves a call now (the pool may open more tunnels)."""
        self._slot.activate()
        self._ctx.state.ok(Component.TUNNELS)

    async def _serve(self, call: _Call, method: str, meta: dict[str, list[str]]) -> Outcome:
        stream = _Stream(call, method, meta, self._budget)
        handler = self._ctx.handlers.lookup(method)
        if handler is None:
            self._activated()
            # Handlers count their own requests (with a finer result); nobody else sees this one.
            self._metrics.tunnel_request_done(self._ctx.worker_id, method, "UNIMPLEMENTED", 0.0)
            await self._finish(stream, (StatusCode.UNIMPLEMENTED, f"unknown method {method}"))
            return await self._drain(call, stream)
        work = asyncio.create_task(self._invoke(handler, stream), name=f"tunnel-call {method}")
        pump = asyncio.create_task(self._pump(call, stream, work), name="tunnel-reader")
        try:
            # Latency: the handler gets the request's first message before the bookkeeping. The (empty)
            # response header goes out with the first response message, in the same send: sent on its
            # own while the handler waited for the API server, it cost a send, and GitLab kas's ping
            # after it an answer, per request (docs/benchmarks.md, CPU per request).
            await stream.first_delivered.wait()
            self._activated()
            try:
                status = await work
            except asyncio.CancelledError:
                fault = pump.result() if pump.done() and not pump.cancelled() else None
                if fault is None or _current_task_cancelling():
                    raise
                status = fault
            await self._finish(stream, status)
            stream.discard_inbox()
            fault = await pump
        finally:
            for task in (work, pump):
                task.cancel()
            await asyncio.gather(work, pump, return_exceptions=True)
            stream.discard_inbox()  # whatever is still queued goes back to the agent's budget
        if fault is not None:
            self._ended_with = fault[0]
            await _linger(call)
            return Outcome.ERROR
        return Outcome.DONE

    async def _invoke(self, handler: LocalHandler, stream: _Stream) -> Status:
        status = await self._handle(handler, stream)
        # Here, not after the switch back to the attempt's task: the final frames are queued in the same
        # turn of the loop as the handler's last message and leave in the same send (one send less per
        # request, and one read less for kas). `_serve` finishes a stream this did not (idempotent).
        await self._finish(stream, status)
        return status

    async def _handle(self, handler: LocalHandler, stream: _Stream) -> Status:
        try:
            await handler(stream)
        except RpcStatusError as e:
            return e.code, e.message
        except CallEndedError as e:
            self._ctx.logger.debug("tunnelled call %s ended by kas: %s", stream.method, e)
            return StatusCode.CANCELLED, str(e)
        except Exception as e:
            self._ctx.logger.exception("tunnelled call %s failed", stream.method)
            return StatusCode.INTERNAL, f"internal error: {type(e).__name__}"
        return StatusCode.OK, ""

    async def _pump(self, call: _Call, stream: _Stream, work: asyncio.Task[Status]) -> Status | None:
        """Feed request messages to the handler until the call ends; returns a fault status, if any."""
        try:
            return await self._feed(call, stream, work)
        finally:
            stream.first_delivered.set()  # whatever happened, the attempt must not wait for it any more

    async def _feed(self, call: _Call, stream: _Stream, work: asyncio.Task[Status]) -> Status | None:
        try:
            while True:
                if not stream.has_room():
                    await self._room_or_end(stream.wait_room)
                raw = await self._read_raw(call)
                if raw is None:
                    if not stream.half_closed:
                        work.cancel()  # kas ended the call: the caller went away
                    stream.deliver(None, 0)
                    return None
                frame = self._reader.decode(raw)
                which = frame.WhichOneof("msg")
                if which == "message":
                    stream.deliver(frame.message.data, len(raw))
                elif which == "close_send":
                    stream.deliver(None, 0)
        except StreamOrderError as e:
            work.cancel()
            return StatusCode.INVALID_ARGUMENT, str(e)
        except RpcError as e:
            work.cancel()
            stream.discard_inbox()
            stream.deliver(None, 0)
            if e.code() is StatusCode.RESOURCE_EXHAUSTED:
                # The transport refused a frame above the receive limit and ended this call (only).
                self._ctx.logger.warning("kas sent a frame over the size limit: %s", e.details())
                return e.code(), e.details() or ""
            return None

    async def _finish(self, stream: _Stream, status: Status) -> None:
        if stream.half_closed or stream.call_done():
            return
        with contextlib.suppress(CallEndedError):
            await stream.finish(status)

    async def _drain(self, call: _Call, stream: _Stream) -> Outcome:
        """Read until kas ends the call (after our half-close)."""
        try:
            while await self._read(call) is not None:
                pass
        except StreamOrderError:
            self._ended_with = StatusCode.INVALID_ARGUMENT
            return Outcome.ERROR
        except RpcError as e:
            return self._rpc_failed(e.code(), e.details())
        return Outcome.DONE

    async def _fail_stream(self, call: _Call, stream: _Stream | None, text: str) -> None:
        self._ctx.logger.warning("invalid frame from kas: %s", text)
        target = stream or _Stream(call, "", {}, self._budget)
        await self._finish(target, (StatusCode.INVALID_ARGUMENT, text))


async def _linger(call: _Call) -> None:
    """After our error frame and half-close, give kas a moment to end the call before we reset it: a
    reset right behind the frames may make kas drop them unread (bounded: a hostile kas never ends it)."""
    with contextlib.suppress(TimeoutError, *_STREAM_OVER):
        async with asyncio.timeout(_LINGER_S):
            while await call.read() is not EOF:
                pass


def _call_ended(e: BaseException) -> CallEndedError:
    """What a write to a call that has ended raises, as CallEndedError."""
    return CallEndedError(f"the tunnel stream ended: {_describe(e)}")


def _describe(e: BaseException) -> str:
    if isinstance(e, RpcError):
        return f"{e.code().name}: {e.details()}"
    return str(e) or type(e).__name__


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
