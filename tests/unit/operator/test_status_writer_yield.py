"""StatusWriter in a burst: a later status that keeps its resource's phase waits while other resources
wait for their first status (at most FOLLOW_UPS_YIELD_S), a phase change does not, and `wait_idle` (what
Events and watch labels wait for) waits for every first status too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent_operator import status_writer
from agent_operator.events import ObjectRef
from agent_operator.kube_api import ApiResponse
from agent_operator.mapping import AgentKey
from agent_operator.metrics import OperatorMetrics
from agent_operator.status_mapping import AgentFacts, EventSpec
from agent_operator.status_writer import StatusWriter
from agent_runtime.spec import Phase as WorkerPhase
from agent_runtime.spec import WorkerSnapshot
from tests.unit.operator.writer_support import running

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
FACTS = AgentFacts(generation=1, kas_address="grpc://kas:8150")
EARLY, LATE = AgentKey("ns", "early"), AgentKey("ns", "late")


class _Api:
    """Records (resource name, phase, kas version) per status patch; every patch succeeds."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, str, str | None]] = []

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        name = path.rsplit("/", 2)[-2]
        self.patches.append((name, body["status"]["phase"], body["status"].get("kasVersion")))
        return ApiResponse(200, {})


class _Events:
    async def emit(self, ref: ObjectRef, event: EventSpec, at: datetime | None = None) -> None:
        return None


class _Snapshots:
    def __init__(self) -> None:
        self.current: dict[str, WorkerSnapshot] = {}

    def set(self, key: AgentKey, phase: WorkerPhase, kas_version: str | None = None) -> WorkerSnapshot:
        since = NOW if phase is WorkerPhase.CONNECTED else None
        snapshot = WorkerSnapshot(
            id=key.worker_id, phase=phase, connected_since=since, kas_version=kas_version
        )
        self.current[key.worker_id] = snapshot
        return snapshot

    def __call__(self, worker_id: str) -> WorkerSnapshot | None:
        return self.current.get(worker_id)


Parts = tuple[StatusWriter, _Api, _Snapshots]


def _writer(api: _Api, snapshots: _Snapshots) -> StatusWriter:
    fake_api: Any = api  # a double with the one method the writer calls
    fake_events: Any = _Events()
    metrics = OperatorMetrics(CollectorRegistry())
    return StatusWriter(fake_api, fake_events, snapshots, metrics, debounce=0.0, clock=lambda: NOW)


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    api, snapshots = _Api(), _Snapshots()
    writer = _writer(api, snapshots)
    async with running(writer):
        yield writer, api, snapshots


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _track(writer: StatusWriter, key: AgentKey) -> None:
    writer.track(key, ObjectRef(key.namespace, key.name, f"uid-{key.name}"), FACTS, None)


async def _early_written_late_connecting(writer: StatusWriter, api: _Api, snapshots: _Snapshots) -> None:
    """EARLY has its first status (Connected); LATE waits for its first (held while Connecting)."""
    snapshots.set(EARLY, WorkerPhase.CONNECTED)
    _track(writer, EARLY)
    await _settle()
    snapshots.set(LATE, WorkerPhase.CONNECTING)
    _track(writer, LATE)
    await _settle()
    assert api.patches == [("early", "Connected", None)]


async def test_a_later_status_waits_for_the_first_statuses_of_the_others(parts: Parts) -> None:
    writer, api, snapshots = parts
    await _early_written_late_connecting(writer, api, snapshots)

    writer.on_snapshot(snapshots.set(EARLY, WorkerPhase.CONNECTED, kas_version="v18.6.0"))
    await _settle()
    assert api.patches == [("early", "Connected", None)]  # the same phase: it waits for LATE's first

    writer.on_snapshot(snapshots.set(LATE, WorkerPhase.CONNECTED))
    await _settle()
    assert api.patches == [
        ("early", "Connected", None),
        ("late", "Connected", None),
        ("early", "Connected", "v18.6.0"),
    ]


async def test_a_phase_change_does_not_wait(parts: Parts) -> None:
    writer, api, snapshots = parts
    await _early_written_late_connecting(writer, api, snapshots)

    writer.on_snapshot(snapshots.set(EARLY, WorkerPhase.CONNECTING))
    await _settle()
    assert api.patches == [("early", "Connected", None), ("early", "Connecting", None)]


async def test_a_later_status_waits_at_most_the_yield(parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_writer, "FOLLOW_UPS_YIELD_S", 0.05)
    writer, api, snapshots = parts
    await _early_written_late_connecting(writer, api, snapshots)

    writer.on_snapshot(snapshots.set(EARLY, WorkerPhase.CONNECTED, kas_version="v18.6.0"))
    await asyncio.sleep(0.3)  # six yields
    assert api.patches == [("early", "Connected", None), ("early", "Connected", "v18.6.0")]  # LATE still held


async def test_wait_idle_waits_for_every_first_status(parts: Parts) -> None:
    writer, api, snapshots = parts
    await _early_written_late_connecting(writer, api, snapshots)
    idle = asyncio.create_task(writer.wait_idle(), name="test-wait-idle")
    await _settle()
    assert not idle.done()  # no write in flight, but LATE has a first status to come

    writer.on_snapshot(snapshots.set(LATE, WorkerPhase.CONNECTED))
    async with asyncio.timeout(5):
        await idle
    assert api.patches[-1] == ("late", "Connected", None)


async def test_a_forgotten_resource_is_not_waited_for(parts: Parts) -> None:
    writer, api, snapshots = parts
    await _early_written_late_connecting(writer, api, snapshots)
    writer.forget(LATE)
    async with asyncio.timeout(5):
        await writer.wait_idle()
    writer.on_snapshot(snapshots.set(EARLY, WorkerPhase.CONNECTED, kas_version="v18.6.0"))
    await _settle()
    assert api.patches[-1] == ("early", "Connected", "v18.6.0")


class _RejectingApi(_Api):
    """Rejects every status of LATE (422), as the API server does a status its schema refuses."""

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        if path.rsplit("/", 2)[-2] == LATE.name:
            return ApiResponse(422, {"message": "status.phase: Unsupported value"})
        return await super().merge_patch(path, body, decode=decode)


async def test_a_rejected_first_status_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_writer, "FOLLOW_UPS_YIELD_S", 60.0)
    api, snapshots = _RejectingApi(), _Snapshots()
    writer = _writer(api, snapshots)
    async with running(writer), asyncio.timeout(5):
        snapshots.set(EARLY, WorkerPhase.CONNECTED)
        _track(writer, EARLY)
        snapshots.set(LATE, WorkerPhase.CONNECTED)
        _track(writer, LATE)
        await writer.wait_idle()  # LATE's first status was refused: none is coming until it changes
        writer.on_snapshot(snapshots.set(EARLY, WorkerPhase.CONNECTED, kas_version="v18.6.0"))
        await _settle()
    assert api.patches == [("early", "Connected", None), ("early", "Connected", "v18.6.0")]


async def _early_written_late_expected(writer: StatusWriter, api: _Api, snapshots: _Snapshots) -> None:
    """EARLY has its first status (Connected); LATE was seen, and its reconciliation has not tracked it."""
    snapshots.set(EARLY, WorkerPhase.CONNECTED)
    _track(writer, EARLY)
    writer.expect(LATE)
    await _settle()
    assert api.patches == [("early", "Connected", None)]
    writer.on_snapshot(snapshots.set(EARLY, WorkerPhase.CONNECTED, kas_version="v18.6.0"))
    await _settle()
    assert api.patches == [("early", "Connected", None)]  # the same phase: it waits for LATE's first


async def test_a_later_status_waits_for_a_resource_seen_and_not_tracked_yet(parts: Parts) -> None:
    writer, api, snapshots = parts
    await _early_written_late_expected(writer, api, snapshots)

    snapshots.set(LATE, WorkerPhase.CONNECTED)
    _track(writer, LATE)
    writer.unexpect(LATE)  # the reconciliation ends after it tracked the resource
    await _settle()
    assert api.patches == [
        ("early", "Connected", None),
        ("late", "Connected", None),
        ("early", "Connected", "v18.6.0"),
    ]
    async with asyncio.timeout(5):
        await writer.wait_idle()  # LATE was counted once


@pytest.mark.parametrize("ended", ["unexpect", "forget"])
async def test_a_resource_expected_and_never_tracked_is_not_waited_for(parts: Parts, ended: str) -> None:
    """Its reconciliation wrote nothing (it waits for admission, or the API server failed), or the
    resource went away."""
    writer, api, snapshots = parts
    await _early_written_late_expected(writer, api, snapshots)

    getattr(writer, ended)(LATE)
    await _settle()
    assert api.patches == [("early", "Connected", None), ("early", "Connected", "v18.6.0")]
    async with asyncio.timeout(5):
        await writer.wait_idle()
