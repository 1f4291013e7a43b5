"""A unary call on the HTTP/2 client: awaiting it gives the one response message, as grpc.aio's
UnaryUnaryCall does (with `initial_metadata`, `cancel`, `done`, and RpcError for every failure)."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any, Final

from agent_runtime.rpc_status import EOF, StatusCode
from agent_runtime.transport.h2.call import H2Call
from agent_runtime.transport.h2.wire import Status

DEADLINE_EXCEEDED: Final = Status(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
NO_RESPONSE: Final = Status(StatusCode.INTERNAL, "kas ended a unary call without a response message")
SECOND_RESPONSE: Final = Status(StatusCode.INTERNAL, "kas sent more than one response to a unary call")


class H2UnaryCall:
    """One request, one response; `timeout` (seconds) bounds the whole call, the wait for kas included."""

    def __init__(self, call: H2Call, timeout: float | None) -> None:
        self._call = call
        self._timeout = timeout

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._response().__await__()

    async def _response(self) -> bytes:
        call = self._call
        try:
            async with asyncio.timeout(self._timeout):
                response = await call.read()
                extra = None if response is EOF else await call.read()
        except TimeoutError:
            call.fail(DEADLINE_EXCEEDED)
            raise call.error() from None
        if response is EOF:
            raise NO_RESPONSE.error()
        if extra is not EOF:
            call.fail(SECOND_RESPONSE)
            raise SECOND_RESPONSE.error()
        assert isinstance(response, bytes)
        return response

    async def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        """kas's response headers (empty when the call failed before any)."""
        return await self._call.initial_metadata()

    def cancel(self) -> bool:
        """End the call from our side; False when it was already over."""
        return self._call.cancel()

    def done(self) -> bool:
        """The call has its status."""
        return self._call.done()
