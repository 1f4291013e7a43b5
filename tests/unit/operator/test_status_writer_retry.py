"""StatusWriter: a failed status patch is retried with backoff (and only when retrying can help), and a new
resource's first status is held while it would only say Connecting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from agent_operator import status_writer
from agent_operator.kube_api import ApiResponse
from agent_operator.metrics import OperatorMetrics
from agent_operator.status_writer import StatusWriter
from agent_runtime.spec import Phase as WorkerPhase
from agent_runtime.spec import WorkerSnapshot
from tests.unit.operator.test_status_writer import FACTS, KEY, NOW, REF, _Events, _Snapshots
from tests.unit.operator.writer_support import running as running_writer


class _ScriptedApi:
    """Answers status patches with the scripted codes (an exception: a transport failure), then 200."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.phases: list[str] = []

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        self.phases.append(body["status"]["phase"])
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return ApiResponse(answer, {"message": "scripted"})


class Parts:
    def __init__(self, api: _ScriptedApi) -> None:
        self.api = api
        self.snapshots = _Snapshots()
        self.registry = CollectorRegistry()
        fake_api: Any = api
        fake_events: Any = _Events()
        self.writer = StatusWriter(
            fake_api,
            fake_events,
            self.snapshots,
            OperatorMetrics(self.registry),
            debounce=0.0,
            clock=lambda: NOW,
        )

    def patches(self, result: str) -> float | None:
        """Patches counted with `result`; None while that series does not exist."""
        return self.registry.get_sample_value("agentk_operator_status_patches_total", {"result": result})


@contextlib.asynccontextmanager
async def running(api: _ScriptedApi) -> AsyncIterator[Parts]:
    parts = Parts(api)
    async with running_writer(parts.writer):
        yield parts


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_writer, "RETRY_DELAYS_S", (0.01, 0.01, 0.01))


async def _until(predicate: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - the writer has no event to await
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("failure", [503, 409, 429, aiohttp.ClientConnectionError("reset")])
async def test_a_failed_patch_is_retried_until_it_is_written(failure: int | Exception) -> None:
    async with running(_ScriptedApi(failure, failure)) as parts:
        parts.writer.track(KEY, REF, FACTS, None)
        await _until(lambda: parts.writer.status(KEY) is not None)
        assert parts.api.phases == ["Connected"] * 3
        assert parts.patches("2xx") == 1
        label = "error" if isinstance(failure, Exception) else f"{failure // 100}xx"
        assert parts.patches(label) == 2


async def test_a_rejected_patch_is_not_retried() -> None:
    async with running(_ScriptedApi(422)) as parts:
        parts.writer.track(KEY, REF, FACTS, None)
        await _until(lambda: parts.patches("4xx") == 1)
        await asyncio.sleep(0.1)  # several retry delays
        assert parts.api.phases == ["Connected"]
        assert parts.writer.status(KEY) is None


async def test_retries_are_bounded_then_wait_for_the_next_change() -> None:
    async with running(_ScriptedApi(*[503] * 10)) as parts:
        parts.writer.track(KEY, REF, FACTS, None)
        await _until(lambda: parts.patches("5xx") == 4)  # the first try and one per retry delay
        await asyncio.sleep(0.1)
        assert len(parts.api.phases) == 4
        parts.writer.on_snapshot(parts.snapshots.current)  # the next change (or kick) tries again,
        await _until(lambda: len(parts.api.phases) == 8)  # with the whole retry schedule
        await asyncio.sleep(0.1)
        assert len(parts.api.phases) == 8


async def test_a_new_resource_that_connects_within_the_hold_never_shows_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_writer, "FIRST_CONNECTING_HOLD_S", 0.3)
    async with running(_ScriptedApi()) as parts:
        parts.snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTING)
        parts.writer.track(KEY, REF, FACTS, None)
        await asyncio.sleep(0.1)
        assert parts.api.phases == []  # held
        parts.snapshots.current = WorkerSnapshot(
            id=KEY.worker_id, phase=WorkerPhase.CONNECTED, connected_since=NOW
        )
        parts.writer.on_snapshot(parts.snapshots.current)
        await _until(lambda: parts.api.phases == ["Connected"])
        await asyncio.sleep(0.4)  # past the hold: nothing more to write
        assert parts.api.phases == ["Connected"]


async def test_a_resource_still_connecting_after_the_hold_shows_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_writer, "FIRST_CONNECTING_HOLD_S", 0.2)
    async with running(_ScriptedApi()) as parts:
        parts.snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTING)
        parts.writer.track(KEY, REF, FACTS, None)
        await asyncio.sleep(0.1)
        assert parts.api.phases == []
        await _until(lambda: parts.api.phases == ["Connecting"], within=2.0)
