"""The local bridge between a grpc.aio channel and kas: every connection the channel opens goes through it.

grpcio takes no custom dialer, so the worker's channel dials a Unix socket owned by the bridge; for each
accepted connection the bridge dials kas (`dialer.dial`, which applies the destination policy every time)
and pipes bytes both ways, gRPC's bytes leaving as masked binary WebSocket messages for ws/wss. The socket
lives in a directory only this process's user can enter (mode 0700), and kas addresses are TCP only: no
tenant can point its kas address at another worker's bridge and borrow that worker's headers, proxy
credentials and TLS settings (a loopback TCP port could be). Both sides are asyncio.Protocols with
backpressure: when one side's write buffer passes the high-water mark the other side stops reading.
Bytes that still arrive after pause_reading() (uvloop may deliver some) are kept in the paused-for
transport's write buffer, never dropped.

The same bridge, with `websocket=False`, is a raw pipe: plain TCP for grpc:// and verified grpcs:// (grpc
does TLS inside it), or TLS without verification for grpcs + insecure-skip-verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Final

from agent_proto import wstunnel
from agent_runtime.spec import ErrorReason, WorkerError
from agent_runtime.transport.dialer import Dialed, DialPlan, KasStream, dial
from agent_runtime.transport.errors import TransportError
from agent_runtime.transport.ws_framing import WsClientFraming

_log = logging.getLogger(__name__)

HIGH_WATER: Final = 1 << 20
"""Write-buffer size (bytes) above which the opposite side stops reading."""
_LOW_WATER: Final = HIGH_WATER // 4
_MAX_DIRECTORY: Final = 90
"""Longest socket directory path (bytes): a Unix socket path must fit in 108 bytes with "/kas.sock"."""


class _LocalSide(asyncio.Protocol):
    """The connection accepted from the worker's own grpc channel."""

    def __init__(self, bridge: WsBridge) -> None:
        self._bridge = bridge
        self.transport: asyncio.Transport | None = None
        self.pending = bytearray()
        self.pipe: _Pipe | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=_LOW_WATER)
        self._bridge.accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.pipe is not None:
            self.pipe.from_local(data)
            return
        # Before kas answered: hold gRPC's preface; stop reading if it ever grows (it never should).
        self.pending += data
        if len(self.pending) > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.pipe is not None:
            self.pipe.local_lost()
        else:
            self._bridge.local_gone(self)

    def pause_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.local_pause_writing()

    def resume_writing(self) -> None:
        if self.pipe is not None:
            self.pipe.local_resume_writing()


class _Pipe:
    """Copies bytes between one local connection and its kas connection."""

    def __init__(self, bridge: WsBridge, local: _LocalSide, dialed: Dialed, websocket: bool) -> None:
        assert local.transport is not None
        self._bridge = bridge
        self._local = local
        self._local_transport: asyncio.Transport = local.transport
        self._kas: asyncio.Transport = dialed.transport
        self._stream: KasStream = dialed.stream
        self._ws = WsClientFraming(dialed.transport) if websocket else None
        self._close_sent = False
        self._finished = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        self._kas.set_write_buffer_limits(high=HIGH_WATER, low=_LOW_WATER)
        leftover = self._stream.attach(self)
        self._local.pipe = self
        pending = bytes(self._local.pending)
        self._local.pending.clear()
        if pending:
            self.from_local(pending)
        self._local_transport.resume_reading()
        if leftover:
            self.kas_data(leftover)
        if self._stream.lost:
            self.kas_lost()

    # local → kas
    def from_local(self, data: bytes) -> None:
        if self._close_sent or self._kas.is_closing():
            return
        if self._ws is not None:
            self._ws.send(data)
        else:
            self._kas.write(data)

    def local_lost(self) -> None:
        self.shutdown(wstunnel.CloseCode.NORMAL, "")

    def local_pause_writing(self) -> None:
        self._kas.pause_reading()

    def local_resume_writing(self) -> None:
        self._kas.resume_reading()

    # kas → local
    def kas_data(self, data: bytes) -> None:
        if self._ws is None:
            self._local_transport.write(data)
            return
        try:
            payloads, close = self._ws.receive(data)
        except wstunnel.WebSocketProtocolError as e:
            self._bridge.record(
                WorkerError(ErrorReason.PROTOCOL_ERROR, f"kas broke the WebSocket protocol: {e}")
            )
            self.shutdown(e.code, str(e))
            return
        for payload in payloads:
            self._local_transport.write(payload)
        if close is not None:
            self.shutdown(close.code, "")

    def kas_lost(self) -> None:
        self._close_sent = True
        self._local_transport.close()  # flushes what kas sent, then gRPC sees the connection end
        self._finish()

    def kas_pause_writing(self) -> None:
        self._local_transport.pause_reading()

    def kas_resume_writing(self) -> None:
        self._local_transport.resume_reading()

    def shutdown(self, code: int | None, reason: str) -> None:
        """Close both sides, telling kas why (a close frame) when we still can."""
        if not self._close_sent:
            self._close_sent = True
            if self._ws is not None:
                self._ws.close(code, reason)
        self._kas.close()
        self._local_transport.close()
        if self._stream.lost:
            self._finish()

    def abort(self) -> None:
        """Drop both connections now."""
        self._kas.abort()
        self._local_transport.abort()
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.done.set_result(None)
            self._bridge.pipe_done(self)


class WsBridge:
    """Unix-socket listener whose every connection becomes one connection to kas.

    Records the last connection failure (`last_error`, cleared by the next successful handshake) and
    the kas version from the `Server: gitlab-kas/<version>/<commit>` response header.
    """

    def __init__(self, plan: DialPlan, *, name: str) -> None:
        self._plan = plan
        self._name = name
        self._server: asyncio.Server | None = None
        self._directory: str | None = None
        self._path = ""
        self._dials: dict[_LocalSide, asyncio.Task[None]] = {}
        self._pipes: set[_Pipe] = set()
        self._counter = itertools.count(1)
        self._last_error: WorkerError | None = None
        self._kas_version: str | None = None
        self.on_kas_version: Callable[[str], None] | None = None
        """Called when a handshake announces a kas version different from the last one."""
        self._handshakes = 0
        self._closing = False

    async def start(self) -> None:
        """Listen on a Unix socket in a fresh private directory."""
        loop = asyncio.get_running_loop()
        self._directory = tempfile.mkdtemp(prefix="gao-kas-")  # mode 0700: this user only
        if len(os.fsencode(self._directory)) > _MAX_DIRECTORY:  # a long $TMPDIR: sun_path has 108 bytes
            os.rmdir(self._directory)
            self._directory = tempfile.mkdtemp(prefix="gao-kas-", dir="/tmp")
        self._path = os.path.join(self._directory, "kas.sock")
        try:
            self._server = await loop.create_unix_server(lambda: _LocalSide(self), self._path)
            os.chmod(self._path, 0o600)
        except BaseException:
            self._remove_directory()
            raise

    @property
    def path(self) -> str:
        """The Unix socket the grpc channel dials."""
        return self._path

    @property
    def grpc_target(self) -> str:
        """The grpc target of the socket."""
        return f"unix:{self._path}"

    def _remove_directory(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    @property
    def last_error(self) -> WorkerError | None:
        """The latest failure to reach kas, or None since the last successful handshake."""
        return self._last_error

    @property
    def kas_version(self) -> str | None:
        """kas's version from its last handshake response, if it announced one."""
        return self._kas_version

    @property
    def handshakes(self) -> int:
        """Successful connections to kas so far."""
        return self._handshakes

    @property
    def open_connections(self) -> int:
        """Bridged connections currently open."""
        return len(self._pipes)

    def record(self, error: WorkerError) -> None:
        """Remember `error` as the latest failure (logged once per distinct error)."""
        if error != self._last_error:
            _log.warning("kas connection %s: %s", self._name, error.message)
        self._last_error = error

    def note_dialed(self, kas_version: str | None) -> None:
        """A connection to kas is up (ours, or the own HTTP/2 channel's): no error now; its kas version."""
        self._handshakes += 1
        self._last_error = None
        if kas_version:
            self.note_kas_version(kas_version)

    def note_kas_version(self, version: str) -> None:
        """A handshake (ours, or another connection's to the same kas) announced `version`."""
        if version != self._kas_version:
            self._kas_version = version
            if self.on_kas_version is not None:
                self.on_kas_version(version)

    # Called by _LocalSide / _Pipe

    def accepted(self, local: _LocalSide) -> None:
        if self._closing:
            assert local.transport is not None
            local.transport.abort()
            return
        task_name = f"ws-bridge:{self._name}:dial-{next(self._counter)}"
        self._dials[local] = asyncio.get_running_loop().create_task(self._connect(local), name=task_name)

    def local_gone(self, local: _LocalSide) -> None:
        task = self._dials.get(local)
        if task is not None:
            task.cancel()

    def pipe_done(self, pipe: _Pipe) -> None:
        self._pipes.discard(pipe)

    async def _connect(self, local: _LocalSide) -> None:
        assert local.transport is not None
        try:
            dialed = await dial(self._plan)
        except TransportError as e:
            self.record(e.error)
            local.transport.abort()
            return
        except asyncio.CancelledError:
            local.transport.abort()
            raise
        except Exception as e:  # noqa: BLE001 - any other failure must still end this connection visibly
            _log.exception("kas connection %s: unexpected dial failure", self._name)
            self.record(
                WorkerError(ErrorReason.INTERNAL, f"unexpected failure dialing kas: {type(e).__name__}")
            )
            local.transport.abort()
            return
        finally:
            self._dials.pop(local, None)
        if local.lost or self._closing:
            dialed.transport.abort()
            return
        self.note_dialed(dialed.kas_version)
        pipe = _Pipe(self, local, dialed, self._plan.websocket)
        self._pipes.add(pipe)
        pipe.start()

    async def close(self, grace: float) -> None:
        """Stop listening, let open connections end by themselves for `grace` seconds, then drop them."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._dials.values()):
            task.cancel()
        dials = list(self._dials.values())
        if dials:
            await asyncio.wait(dials, timeout=grace)
        pipes = [p.done for p in self._pipes]
        if pipes:
            await asyncio.wait(pipes, timeout=max(grace, 0.001))
        for pipe in list(self._pipes):
            pipe.shutdown(wstunnel.CloseCode.GOING_AWAY, "shutting down")
            pipe.abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(grace, 1.0)):
                    await self._server.wait_closed()
        self._remove_directory()
