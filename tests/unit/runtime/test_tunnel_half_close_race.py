"""A half-close that races kas's end of the call fails inside grpc.aio as ExecuteBatchError; it must end
that one stream (CallEndedError), not escape into the pool's TaskGroup and stop the worker (found by the
live tunnel fuzzing in tests/reliability/test_fuzz.py)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # grpc.aio raises this class; no stubs, not re-exported

from agent_runtime.local_rpc import CallEndedError
from agent_runtime.modules.reverse_tunnel.connection import _Stream
from agent_runtime.rpc_status import StatusCode
from agent_runtime.tenancy import ByteBudget
from agent_runtime.transport.grpc_aio import BidiCall


class _RacingCall:
    """A Connect call whose half-close fails the way grpc.aio's does when kas already ended the call."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, frame: bytes) -> None:
        self.written.append(frame)

    async def done_writing(self) -> None:
        raise cygrpc.ExecuteBatchError('Failed "execute_batch": (SendCloseFromClientOperation,)')

    def done(self) -> bool:
        return False


async def test_a_half_close_racing_the_end_of_the_call_ends_that_stream_only() -> None:
    call = BidiCall(cast(Any, _RacingCall()))  # the grpc path's boundary, as the tunnel gets its calls
    stream = _Stream(call, "/m", {}, ByteBudget(1 << 20))
    with pytest.raises(CallEndedError):
        await stream.finish((StatusCode.OK, ""))
