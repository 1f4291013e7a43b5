"""The StatusWriter tests' common part: a writer running for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from agent_operator.status_writer import StatusWriter


@contextlib.asynccontextmanager
async def running(writer: StatusWriter) -> AsyncIterator[StatusWriter]:
    """`writer.run()` in a task of its own for the block; cancelled and awaited after it."""
    task = asyncio.create_task(writer.run(), name="test-status-writer")
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
