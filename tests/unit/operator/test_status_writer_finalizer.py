"""StatusWriter with `finalizer_wait` (the operator): a new resource's first status waits until kopf's
finalizer is on it, at most that long; a resource with a stored status, or once finalized, does not wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry

from agent_operator.metrics import OperatorMetrics
from agent_operator.status_writer import StatusWriter
from agent_runtime.spec import Phase as WorkerPhase
from agent_runtime.spec import WorkerSnapshot
from tests.unit.operator.test_status_writer import FACTS, KEY, NOW, REF, _Events, _Snapshots
from tests.unit.operator.test_status_writer_retry import _ScriptedApi, _until
from tests.unit.operator.writer_support import running


@contextlib.asynccontextmanager
async def writer(wait: float) -> AsyncIterator[tuple[StatusWriter, _ScriptedApi]]:
    api = _ScriptedApi()
    snapshots = _Snapshots()
    snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTED, connected_since=NOW)
    fake_api: Any = api
    fake_events: Any = _Events()
    status = StatusWriter(
        fake_api,
        fake_events,
        snapshots,
        OperatorMetrics(CollectorRegistry()),
        debounce=0.0,
        clock=lambda: NOW,
        finalizer_wait=wait,
    )
    async with running(status):
        yield status, api


async def test_the_first_status_waits_for_the_finalizer_and_goes_out_when_it_is_on() -> None:
    async with writer(wait=5.0) as (status, api):
        status.track(KEY, REF, FACTS, None)
        await asyncio.sleep(0.2)
        assert api.phases == []  # Connected, but kopf's finalizer is not on the resource yet

        status.finalized(KEY)

        await _until(lambda: api.phases == ["Connected"], within=1.0)


async def test_without_the_finalizer_the_first_status_goes_out_after_the_wait() -> None:
    async with writer(wait=0.3) as (status, api):
        status.track(KEY, REF, FACTS, None)
        await asyncio.sleep(0.1)
        assert api.phases == []
        await _until(lambda: api.phases == ["Connected"], within=2.0)


async def test_a_resource_finalized_before_it_is_tracked_does_not_wait() -> None:
    async with writer(wait=5.0) as (status, api):
        status.finalized(KEY)
        status.track(KEY, REF, FACTS, None)
        await _until(lambda: api.phases == ["Connected"], within=1.0)
