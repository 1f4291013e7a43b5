"""outside_kopf: the controller runs without kopf's context variables, as the caller's own task."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from agent_operator.handlers import outside_kopf

HANDLER_CAUSE: contextvars.ContextVar[str | None] = contextvars.ContextVar("handler_cause", default=None)
"""Stands in for kopf's context variables (its cause holds the resource's whole body)."""


async def test_the_work_and_the_tasks_it_starts_see_none_of_the_callers_context() -> None:
    seen: list[str | None] = []

    async def long_lived() -> None:
        seen.append(HANDLER_CAUSE.get())

    async def work() -> str:
        seen.append(HANDLER_CAUSE.get())
        await asyncio.create_task(long_lived(), name="test-started-below")
        return "done"

    HANDLER_CAUSE.set("the whole resource body")
    assert await outside_kopf(work(), "test-work") == "done"
    assert seen == [None, None]
    assert HANDLER_CAUSE.get() == "the whole resource body", "the caller's own context is untouched"


async def test_errors_and_cancellation_reach_the_work() -> None:
    async def failing() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await outside_kopf(failing(), "test-failing")

    started, cancelled = asyncio.Event(), asyncio.Event()

    async def blocked() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.create_task(outside_kopf(blocked(), "test-blocked"), name="test-caller")
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cancelled.is_set(), "cancelling the handler cancels the work"
