"""StatusWriter: one merge patch per change of the computed status, none while nothing changed, and
changes of the tunnel counts alone at most once per interval."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent_operator import status_writer
from agent_operator.api import Phase
from agent_operator.events import ObjectRef
from agent_operator.kube_api import ApiResponse
from agent_operator.mapping import AgentKey
from agent_operator.metrics import OperatorMetrics
from agent_operator.status_mapping import AgentFacts, EventSpec, compute_status
from agent_operator.status_writer import WRITES_IN_FLIGHT, StatusWriter
from agent_runtime.spec import FluxState, FluxStatus, WorkerSnapshot
from agent_runtime.spec import Phase as WorkerPhase
from tests.unit.operator.writer_support import running

KEY = AgentKey("ns", "a")
REF = ObjectRef("ns", "a", "uid-1")
NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
FACTS = AgentFacts(generation=1, kas_address="grpc://kas:8150")


class _Api:
    """Records status patches; every patch succeeds."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        assert path.endswith("/namespaces/ns/gitlabagents/a/status")
        assert not decode, "the writer needs only the outcome"
        self.patches.append(body["status"])
        return ApiResponse(200, {})


class _Events:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def emit(self, ref: ObjectRef, event: EventSpec, at: datetime | None = None) -> None:
        self.reasons.append(event.reason)


class _Snapshots:
    def __init__(self) -> None:
        self.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTED, connected_since=NOW)

    def __call__(self, worker_id: str) -> WorkerSnapshot | None:
        return self.current if worker_id == KEY.worker_id else None


@pytest.fixture
async def parts() -> AsyncIterator[tuple[StatusWriter, _Api, _Events, _Snapshots]]:
    api, events, snapshots = _Api(), _Events(), _Snapshots()
    metrics = OperatorMetrics(CollectorRegistry())
    fake_api: Any = api  # a double with the one method the writer calls
    fake_events: Any = events
    writer = StatusWriter(fake_api, fake_events, snapshots, metrics, debounce=0.0, clock=lambda: NOW)
    async with running(writer):
        yield writer, api, events, snapshots


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_writes_once_per_change_and_remembers_what_it_wrote(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots],
) -> None:
    writer, api, events, snapshots = parts
    writer.track(KEY, REF, FACTS, None)
    await _settle()
    assert [p["phase"] for p in api.patches] == ["Connected"]
    written = writer.status(KEY)
    assert written is not None
    assert written == compute_status(FACTS, snapshots.current, None, NOW)
    assert "Connected" in events.reasons

    writer.on_snapshot(snapshots.current)  # nothing changed: the remembered status matches
    writer.track(KEY, REF, FACTS, None)
    await _settle()
    assert len(api.patches) == 1

    snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTING)
    writer.on_snapshot(snapshots.current)
    await _settle()
    assert [p["phase"] for p in api.patches] == ["Connected", "Connecting"]
    status = writer.status(KEY)
    assert status is not None
    assert status.phase is Phase.CONNECTING


async def test_a_stored_status_equal_to_the_computed_one_is_not_written_again(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots],
) -> None:
    writer, api, _, snapshots = parts
    stored = compute_status(FACTS, snapshots.current, None, NOW)
    writer.track(KEY, REF, FACTS, stored)
    await _settle()
    assert api.patches == []
    assert writer.status(KEY) == stored


async def test_a_restart_keeps_a_stored_connected_while_the_worker_reconnects(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last run left Connected; this run's worker is still connecting: no Connecting in between
    (one patch per agent, not two, and no Event), unless it takes longer than the hold."""
    monkeypatch.setattr(status_writer, "RESTART_CONNECTED_HOLD_S", 0.3)
    writer, api, events, snapshots = parts
    stored = compute_status(FACTS, snapshots.current, None, NOW)
    snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTING)
    writer.track(KEY, REF, FACTS, stored)
    await _settle()
    assert api.patches == []

    later = NOW.replace(second=30)
    snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTED, connected_since=later)
    writer.on_snapshot(snapshots.current)
    await _settle()
    assert [p["phase"] for p in api.patches] == ["Connected"]
    assert api.patches[0]["connectedSince"] == "2026-05-01T12:00:30Z"
    assert events.reasons == []


async def test_a_held_status_is_not_computed_again_while_the_worker_still_connects(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a first status is held as Connecting, the worker's further Connecting snapshots compute
    nothing; its Connected snapshot computes and writes at once."""
    computed: list[Phase | None] = []

    def counting(*args: Any) -> Any:
        status = compute_status(*args)
        computed.append(status.phase)
        return status

    monkeypatch.setattr(status_writer, "compute_status", counting)
    writer, api, _, snapshots = parts
    stored = compute_status(FACTS, snapshots.current, None, NOW)
    snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTING)
    writer.track(KEY, REF, FACTS, stored)
    await _settle()
    for attempt in range(5):
        snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTING, agent_id=attempt)
        writer.on_snapshot(snapshots.current)
        await _settle()
    assert computed == [Phase.CONNECTING]
    assert api.patches == []

    later = NOW.replace(second=30)  # this run's connection
    snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTED, connected_since=later)
    writer.on_snapshot(snapshots.current)
    await _settle()
    assert computed == [Phase.CONNECTING, Phase.CONNECTED]
    assert [p["phase"] for p in api.patches] == ["Connected"]


async def test_a_restart_writes_connecting_once_the_hold_is_over(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(status_writer, "RESTART_CONNECTED_HOLD_S", 0.3)
    writer, api, _, snapshots = parts
    stored = compute_status(FACTS, snapshots.current, None, NOW)
    snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTING)
    writer.track(KEY, REF, FACTS, stored)
    await asyncio.sleep(0.1)
    assert api.patches == []
    await asyncio.sleep(0.4)
    assert [p["phase"] for p in api.patches] == ["Connecting"]


async def test_kicks_with_the_inputs_of_the_last_decision_compute_nothing(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer, api, _, snapshots = parts
    computed: list[str] = []

    def counting(*args: Any) -> Any:
        computed.append("status")
        return compute_status(*args)

    monkeypatch.setattr(status_writer, "compute_status", counting)
    writer.track(KEY, REF, FACTS, None)
    await _settle()
    assert len(api.patches) == 1
    assert len(computed) == 1
    for _ in range(5):
        writer.on_snapshot(snapshots.current)
        writer.track(KEY, REF, AgentFacts(generation=1, kas_address="grpc://kas:8150"), None)  # equal facts
        await asyncio.sleep(0.01)
    await _settle()
    assert len(computed) == 1, "same facts, same snapshot: nothing to compute"
    snapshots.current = WorkerSnapshot(id=KEY.worker_id, phase=WorkerPhase.CONNECTING)
    writer.on_snapshot(snapshots.current)
    await _settle()
    assert len(computed) == 2
    assert [p["phase"] for p in api.patches] == ["Connected", "Connecting"]


class _SlowApi:
    """Holds every patch until released; counts how many are in flight at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most = 0
        self.done = 0

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        del path, body, decode
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        self.done += 1
        return ApiResponse(200, {})


async def test_at_most_writes_in_flight_statuses_are_computed_and_sent_at_once() -> None:
    api: Any = _SlowApi()
    events: Any = _Events()
    agents = [AgentKey("ns", f"a{i}") for i in range(3 * WRITES_IN_FLIGHT)]

    def snapshot(worker_id: str) -> WorkerSnapshot:
        return WorkerSnapshot(id=worker_id, phase=WorkerPhase.CONNECTED, connected_since=NOW)

    metrics = OperatorMetrics(CollectorRegistry())
    writer = StatusWriter(api, events, snapshot, metrics, debounce=0.0, clock=lambda: NOW)
    async with running(writer):
        for key in agents:
            writer.track(key, ObjectRef(key.namespace, key.name, f"uid-{key.name}"), FACTS, None)
        await _settle()
        assert api.most == WRITES_IN_FLIGHT
        api.release.set()
        async with asyncio.timeout(5):
            while api.done < len(agents):  # noqa: ASYNC110 - observing the writer from outside
                await asyncio.sleep(0.01)
        assert api.most == WRITES_IN_FLIGHT


def _counts(idle: int, active: int, phase: WorkerPhase = WorkerPhase.CONNECTED) -> WorkerSnapshot:
    return WorkerSnapshot(
        id=KEY.worker_id, phase=phase, connected_since=NOW, tunnels_idle=idle, tunnels_active=active
    )


async def test_tunnel_counts_alone_are_written_at_most_once_per_interval(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_writer, "TUNNEL_COUNTS_INTERVAL_S", 0.3)
    writer, api, _, snapshots = parts
    snapshots.current = _counts(1, 0)
    writer.track(KEY, REF, FACTS, None)
    await _settle()
    assert len(api.patches) == 1

    for idle, active in ((1, 1), (2, 0), (1, 1)):  # requests come and go: nothing is written yet
        snapshots.current = _counts(idle, active)
        writer.on_snapshot(snapshots.current)
        await _settle()
    assert len(api.patches) == 1

    await asyncio.sleep(0.4)  # the interval is over: the latest counts, once
    await _settle()
    assert [p.get("tunnelsSummary") for p in api.patches[1:]] == ["1 idle/1 active"]

    snapshots.current = _counts(2, 0)
    writer.on_snapshot(snapshots.current)
    await _settle()
    assert len(api.patches) == 2, "counts again within the interval: wait"
    snapshots.current = _counts(0, 2, WorkerPhase.CONNECTING)
    writer.on_snapshot(snapshots.current)
    await _settle()
    assert [(p["phase"], p.get("tunnelsSummary")) for p in api.patches[2:]] == [
        ("Connecting", "0 idle/2 active")
    ], "any other change is written at once, with the counts of the moment"


async def test_the_first_tunnels_after_connecting_are_written_at_once_then_churn_waits(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: `0 idle` stayed on the resource for 10 s after the agent connected."""
    monkeypatch.setattr(status_writer, "TUNNEL_COUNTS_INTERVAL_S", 0.3)
    writer, api, _, snapshots = parts
    writer.track(KEY, REF, FACTS, None)  # connected, no tunnel open yet
    await _settle()
    assert [p.get("tunnelsSummary") for p in api.patches] == ["0 idle/0 active"]

    # The first tunnels, then requests: each takes a tunnel, which closes and is replaced, so the
    # counts pass through none at every request; that is churn, written at most once per interval.
    for idle, active in ((2, 0), (1, 1), (1, 0), (2, 0), (0, 1), (0, 0), (1, 0)):
        snapshots.current = _counts(idle, active)
        writer.on_snapshot(snapshots.current)
        await _settle()
    assert [p.get("tunnelsSummary") for p in api.patches] == ["0 idle/0 active", "2 idle/0 active"]

    await asyncio.sleep(0.4)
    await _settle()
    assert [p.get("tunnelsSummary") for p in api.patches[2:]] == ["1 idle/0 active"]


def _flux(triggered: int, state: FluxState = FluxState.WATCHING, watched: int = 2) -> WorkerSnapshot:
    flux = FluxStatus(state, "m", watched=watched, projects=1, triggered=triggered, last_trigger=NOW)
    return WorkerSnapshot(
        id=KEY.worker_id, phase=WorkerPhase.CONNECTED, connected_since=NOW, tunnels_idle=2, flux=flux
    )


async def test_flux_triggers_are_batched_with_the_counts_and_other_flux_changes_are_not(
    parts: tuple[StatusWriter, _Api, _Events, _Snapshots], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_writer, "TUNNEL_COUNTS_INTERVAL_S", 0.3)
    writer, api, _, snapshots = parts
    snapshots.current = _flux(0)
    writer.track(KEY, REF, FACTS, None)
    await _settle()
    assert [p["flux"]["triggeredReconciles"] for p in api.patches] == [0]

    for triggered in (1, 2, 3):  # a push each: not one write per push
        snapshots.current = _flux(triggered)
        writer.on_snapshot(snapshots.current)
        await _settle()
    assert len(api.patches) == 1

    await asyncio.sleep(0.4)
    await _settle()
    assert [p["flux"]["triggeredReconciles"] for p in api.patches[1:]] == [3]

    snapshots.current = _flux(4, watched=5)  # the scope changed: written at once
    writer.on_snapshot(snapshots.current)
    await _settle()
    assert [
        (p["flux"]["watchedGitRepositories"], p["flux"]["triggeredReconciles"]) for p in api.patches[2:]
    ] == [(5, 4)]
    snapshots.current = _flux(4, FluxState.STREAM_FAILED, watched=5)
    writer.on_snapshot(snapshots.current)
    await _settle()
    assert [p["flux"]["state"] for p in api.patches[3:]] == ["StreamFailed"]


class _GatedApi:
    """Status patches of `held` resources wait for `gate`; the others succeed at once."""

    def __init__(self, held: str) -> None:
        self.held = held
        self.gate = asyncio.Event()
        self.written: list[str] = []

    async def merge_patch(self, path: str, body: Any, *, decode: bool = True) -> ApiResponse:
        name = path.rsplit("/", 2)[-2]
        if name == self.held:
            await self.gate.wait()
        self.written.append(name)
        return ApiResponse(200, {})


class _TimedEvents:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, datetime | None]] = []

    async def emit(self, ref: ObjectRef, event: EventSpec, at: datetime | None = None) -> None:
        self.recorded.append((ref.name, event.reason, at))


@contextlib.asynccontextmanager
async def _gated_writer(held: str) -> AsyncIterator[tuple[StatusWriter, _GatedApi, _TimedEvents]]:
    api, events = _GatedApi(held), _TimedEvents()
    connected = WorkerSnapshot(id="", phase=WorkerPhase.CONNECTED, connected_since=NOW)
    fake_api: Any = api
    fake_events: Any = events
    writer = StatusWriter(
        fake_api,
        fake_events,
        lambda worker_id: replace(connected, id=worker_id),
        OperatorMetrics(CollectorRegistry()),
        debounce=0.0,
        clock=lambda: NOW,
    )
    async with running(writer):
        yield writer, api, events


async def test_events_wait_while_statuses_wait_to_be_written() -> None:
    """Statuses first: the Connected Event of one resource waits while another's status is being
    written, and keeps the time of its transition."""
    async with _gated_writer(held="slow") as (writer, api, events):
        writer.track(AgentKey("ns", "slow"), ObjectRef("ns", "slow", "u1"), FACTS, None)
        writer.track(AgentKey("ns", "quick"), ObjectRef("ns", "quick", "u2"), FACTS, None)
        await asyncio.sleep(0.1)
        assert api.written == ["quick"]
        assert events.recorded == []  # "slow" is still being written

        api.gate.set()
        await asyncio.sleep(0.1)
        assert sorted(name for name, _, _ in events.recorded) == ["quick", "slow"]
        assert {(reason, at) for _, reason, at in events.recorded} == {("Connected", NOW)}


async def test_an_event_yields_to_the_writes_only_so_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_writer, "EVENTS_YIELD_TO_WRITES_S", 0.2)
    async with _gated_writer(held="stuck") as (writer, _, events):
        writer.track(AgentKey("ns", "stuck"), ObjectRef("ns", "stuck", "u1"), FACTS, None)
        writer.track(AgentKey("ns", "quick"), ObjectRef("ns", "quick", "u2"), FACTS, None)
        await asyncio.sleep(0.1)
        assert events.recorded == []
        await asyncio.sleep(0.3)  # the status of "stuck" never gets written; the Event goes anyway
        assert [(name, reason) for name, reason, _ in events.recorded] == [("quick", "Connected")]
