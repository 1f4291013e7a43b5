"""The grpc.aio path's boundary (GAO_KAS_TRANSPORT=grpc): grpc.aio's calls with the runtime's own errors.

The modules know the runtime's own status types only (agent_runtime.rpc_status), so that a process on
the default transport never imports grpc. Here grpc.aio's calls are wrapped to raise RpcError and
UsageError and to return EOF, and `gzip=` becomes grpc's compression. Only the grpc path imports this
module.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import grpc
import grpc.aio

from agent_runtime.rpc_status import EOF, EndOfStream, RpcError, StatusCode, UsageError


def rpc_error(error: grpc.aio.AioRpcError) -> RpcError:
    """grpc.aio's error as the runtime's (the codes share their names)."""
    return RpcError(StatusCode[error.code().name], error.details() or "")


_StreamingCall = grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes]

_CALL_OVER = (grpc.aio.UsageError, grpc.aio.InternalError)
"""What grpc.aio raises besides AioRpcError on a write or half-close of a call that is over. InternalError:
a half-close racing kas's end of the call fails as ExecuteBatchError (SendCloseFromClientOperation)."""


def _compression(gzip: bool) -> grpc.Compression:
    # NoCompression rather than None: the tunnel says so itself (grpc_calls.TUNNEL_GZIP), as it did before.
    return grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression


class _Call:
    """What every kind of call offers; `call` is grpc.aio's."""

    def __init__(self, call: grpc.aio.Call) -> None:
        self._call = call

    async def initial_metadata(self) -> grpc.aio.Metadata:
        """kas's response headers."""
        try:
            return await self._call.initial_metadata()
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e) from e

    def cancel(self) -> bool:
        """End the call from our side; False when it was already over."""
        return self._call.cancel()

    def done(self) -> bool:
        """The call is over."""
        return self._call.done()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Call `callback(self)` once the call is done."""
        self._call.add_done_callback(lambda _call: callback(self))


class UnaryCall(_Call):
    """A unary call: awaiting it gives the response."""

    def __init__(self, call: grpc.aio.UnaryUnaryCall[bytes, bytes]) -> None:
        super().__init__(call)
        self._unary = call

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._response().__await__()

    async def _response(self) -> bytes:
        try:
            return await self._unary
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e) from e


class StreamCall(_Call):
    """A server-streaming call."""

    def __init__(self, call: _StreamingCall) -> None:
        super().__init__(call)
        self._stream = call

    async def read(self) -> bytes | EndOfStream:
        """The next message; EOF after the last one of a call that ended OK, else RpcError."""
        try:
            message = await self._stream.read()
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e) from e
        if message is grpc.aio.EOF:
            return EOF
        assert isinstance(message, bytes)
        return message


class BidiCall(StreamCall):
    """A bidirectional-streaming call (the reverse tunnel's Connect)."""

    def __init__(self, call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        super().__init__(call)
        self._bidi = call

    async def write(self, message: bytes) -> None:
        """Send one message; RpcError or UsageError once the call is over."""
        try:
            await self._bidi.write(message)
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e) from e
        except _CALL_OVER as e:
            raise UsageError(str(e)) from e

    async def done_writing(self) -> None:
        """Half-close; RpcError or UsageError once the call is over."""
        try:
            await self._bidi.done_writing()
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e) from e
        except _CALL_OVER as e:
            raise UsageError(str(e)) from e


class GrpcChannel:
    """A grpc.aio channel with the KasChannel surface (agent_runtime.grpc_calls)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.raw = channel
        """grpc.aio's channel (its state is watched, `transport/grpc_channel.py`)."""

    def unary_unary(self, method: str) -> Callable[..., UnaryCall]:
        """A factory of unary calls: `(request, metadata=, timeout=, wait_for_ready=, gzip=)`."""
        multi: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.raw.unary_unary(method)

        def start(request: bytes, *, gzip: bool = False, **options: Any) -> UnaryCall:
            return UnaryCall(multi(request, compression=_compression(gzip), **options))

        return start

    def unary_stream(self, method: str) -> Callable[..., StreamCall]:
        """A factory of server-streaming calls: `(request, metadata=, wait_for_ready=, gzip=)`."""
        multi: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = self.raw.unary_stream(method)

        def start(request: bytes, *, gzip: bool = False, **options: Any) -> StreamCall:
            return StreamCall(multi(request, compression=_compression(gzip), **options))

        return start

    def stream_stream(self, method: str) -> Callable[..., BidiCall]:
        """A factory of bidirectional calls: `(metadata=, wait_for_ready=, gzip=)`."""
        multi: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = self.raw.stream_stream(method)

        def start(*, gzip: bool = False, **options: Any) -> BidiCall:
            return BidiCall(multi(compression=_compression(gzip), **options))

        return start

    async def close(self, grace: float | None) -> None:
        """Close grpc.aio's channel, letting calls finish for up to `grace` seconds."""
        await self.raw.close(grace)
