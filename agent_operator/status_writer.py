"""Writes GitLabAgent status: latest facts + latest snapshot per resource → a debounced merge patch.

One KeyedTasks supervisor, one named task per resource while it has something to write. A write happens
only when the computed status differs from the last one written (or read from the resource), so an idle
agent causes no API traffic. Failures retry with backoff a bounded number of times (409/429/5xx, transport
errors); 404 means the resource is gone and the resource is dropped. Transitions become Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import aiohttp
from pydantic import ValidationError

from agent_operator.api import API_VERSION, PLURAL, GitLabAgentStatus, Phase
from agent_operator.events import EventRecorder, ObjectRef
from agent_operator.keyed import KeyedTasks
from agent_operator.kube_api import CONNECTION_LIMIT, KubeApi, group_path
from agent_operator.logs import resource_extra
from agent_operator.mapping import AgentKey
from agent_operator.metrics import OperatorMetrics
from agent_operator.status_mapping import (
    AgentFacts,
    EventSpec,
    compute_status,
    phase_of,
    transition_events,
)
from agent_runtime.spec import WorkerSnapshot

log = logging.getLogger(__name__)

DEBOUNCE_S: Final = 0.2
"""Snapshots arriving within this window make one patch (Apply → Connected stays well under 1 s)."""
FIRST_CONNECTING_HOLD_S: Final = 2.0
"""A new resource's first status is held this long while it would only say Connecting: the worker usually
connects sooner, and one write saying Connected beats two writes (our choice; Apply -> Connected p99).
0.5 s was too short when a thousand agents started at once: one in eight wrote Connecting, then Connected
(docs/benchmarks.md, Session 12). Until then the resource shows the CRD's default status (InProgress)."""
RESTART_CONNECTED_HOLD_S: Final = 5.0
"""A status stored as Connected (or Degraded) by an earlier run of the operator stays this long while
this run's worker reconnects (our choice): writing Connecting, then Connected again, cost a restart of
a thousand agents two patches and an Event per agent, each a watch event for every client of the
GitLabAgents, and delayed the others (docs/benchmarks.md, Cold start)."""
FINALIZER_WAIT_S: Final = 5.0
"""With `finalizer_wait` (the operator): a new resource's first status waits until kopf's finalizer is on
it (`finalized`), at most this long (our choice). kopf adds the finalizer with a JSON patch that tests the
resourceVersion: a status written first made it fail (422) and kopf try again on the next event, about two
more PATCHes per resource when a thousand were applied at once (docs/benchmarks.md, Fleet bring-up)."""
TUNNEL_COUNTS_INTERVAL_S: Final = 10.0
"""A status that differs from the written one only in its tunnel counts (or its Flux trigger counts and
time: one change per push) is written at most this often
(our choice). Every tunnelled request moves the idle/active counts: without this, a steady stream of CI
requests made a steady stream of status patches, about four a second per busy agent, each a MODIFIED
event for every watcher of GitLabAgents. Any other change is written at once, with the latest counts,
and so are the first tunnels after a status without any (right after connecting, `0 idle` for 10 s
looked like a broken agent), unless counts alone were written within the interval: each tunnel serves
one request and is replaced, so a busy agent's counts pass through none at every request, and that is
churn too. Losing every tunnel for real comes with a disconnect, a phase change written at once."""
RETRY_DELAYS_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Our choice: waits between failed patch attempts; after the last one the writer waits for a change."""
_RETRYABLE: Final = frozenset({409, 429, 500, 502, 503, 504})
WRITES_IN_FLIGHT: Final = CONNECTION_LIMIT
"""Statuses computed and being written at once. More would only wait for one of the API session's
connections, each holding a computed status and its patch: when a thousand agents connect together that
was a burst of short-lived objects that left the small-object heap fragmented (docs/benchmarks.md,
Density). A status computed when a connection is free is also the fresher one."""

FOLLOW_UPS_YIELD_S: Final = 2.0
"""A later status of a resource that keeps its phase (a condition's message, the Flux state, the versions)
waits while resources that this process has not written yet wait for their first status, at most this
long (our choice). When fifty agents were applied at once, the first to connect wrote two or three
statuses more while Flux's CRD was being read (Connected, reading the CRD, Flux not installed), and each
write took API server and operator time from the statuses the later agents waited for
(docs/benchmarks.md, Session 14); the wait merges them into one write with the latest status."""

EVENTS_IN_FLIGHT: Final = 2
"""Events (of status transitions) being recorded at once (our choice). They share the API session's
connections with the status writes and the Secret reads, and are sent after the status, outside the write
slots: when a thousand agents connect together, an Event per agent in each slot made every status wait for
one more request (docs/benchmarks.md, Fleet bring-up); the Events come later instead, best effort."""
EVENTS_YIELD_TO_WRITES_S: Final = 10.0
"""A transition's Event waits while statuses are waiting to be written (`wait_idle`), at most this long
after the transition (our choice). When a thousand agents connected at once, their Connected Events went out
between the status writes and took API server time from them (docs/benchmarks.md, Session 10); an Event
is for people reading `kubectl describe`, and carries the time of the transition however late it goes."""
EVENTS_QUEUED_MAX: Final = 10_000
"""Events waiting to be recorded (our choice: a few per agent when a thousand change at once); past it
the oldest one is dropped and logged (Events are best effort, statuses are not)."""

SnapshotSource = Callable[[str], WorkerSnapshot | None]
Clock = Callable[[], datetime]


def parse_status(raw: object) -> GitLabAgentStatus | None:
    """The status stored on a resource, or None when absent or not ours (e.g. written by hand).

    A status without a phase is the CRD's default for a new resource (api.NEW_RESOURCE_STATUS), never
    one the operator wrote: the resource counts as new (its first Connecting status is held).
    """
    if not isinstance(raw, dict) or "phase" not in raw:
        return None
    try:
        return GitLabAgentStatus.model_validate(raw)
    except ValidationError:
        return None


def _only_counts_differ(written: GitLabAgentStatus, status: GitLabAgentStatus) -> bool:
    """True when `status` is `written` with other tunnel counts or Flux trigger counts (and nothing else
    changed): every push would otherwise be a status write."""
    update: dict[str, object] = {"tunnels": written.tunnels, "tunnels_summary": written.tunnels_summary}
    if status.flux is not None and written.flux is not None:
        update["flux"] = status.flux.model_copy(
            update={
                "triggered_reconciles": written.flux.triggered_reconciles,
                "failed_reconciles": written.flux.failed_reconciles,
                "last_trigger_time": written.flux.last_trigger_time,
            }
        )
    same_counts = status.model_copy(update=update)
    return same_counts == written and status != written


def _has_tunnels(status: GitLabAgentStatus) -> bool:
    counts = status.tunnels
    return counts is not None and counts.idle + counts.active > 0


def _still_held(entry: _Entry, facts: AgentFacts, snapshot: WorkerSnapshot | None) -> bool:
    """This process's first status is held while it says Connecting (see the holds), and it still would:
    nothing to compute until the worker says more or the hold ends (`due`). A connecting worker publishes
    about ten snapshots, and computing the status for each to hold it again was most of the status
    writer's CPU when a thousand agents reconnected after a restart (docs/benchmarks.md, Session 10)."""
    return (
        entry.wake is not None
        and entry.written_at == -math.inf
        and phase_of(facts, snapshot) is Phase.CONNECTING
    )


def _loop_time(deadline: float) -> float:
    """`deadline` (time.monotonic) on the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _to_json(status: GitLabAgentStatus | None) -> str | None:
    return status.model_dump_json() if status is not None else None


def _from_json(text: str | None) -> GitLabAgentStatus | None:
    return GitLabAgentStatus.model_validate_json(text) if text is not None else None


@dataclass
class _Entry:
    ref: ObjectRef
    facts: AgentFacts
    written_json: str | None
    """The status last written (or read from the resource) as JSON: it is needed again only when the
    status is recomputed, and as a model (with a fields set per condition) it cost about 9 KiB per agent,
    as text under 2 KiB (docs/benchmarks.md, Density)."""
    failures: int = 0
    tracked_at: float = field(default_factory=time.monotonic)
    written_at: float = -math.inf
    """When this writer last wrote the status (monotonic)."""
    counts_written_at: float = -math.inf
    """When this writer last wrote a status that differed from the one before only in its tunnel counts."""
    wake: asyncio.TimerHandle | None = None
    """Set while a write is deferred (first Connecting hold, counts-only change) until it is due."""
    decided: tuple[AgentFacts, WorkerSnapshot | None] | None = None
    """The inputs of the last decision that needs no new one while they stay the same (written, equal to
    the written status, or deferred): a kick with the same inputs computes nothing (a thousand agents
    starting kick the writer about ten times each)."""
    due: bool = False
    """Something other than the inputs changed the decision (a deferral is due, the finalizer came)."""
    settled: bool = False
    """This process has decided the resource's first status: written it, or found the stored one current."""
    settled_phase: Phase | None = None
    """phase_of() the inputs of the status last written or found current (a later change of it does not
    yield, see FOLLOW_UPS_YIELD_S)."""


class StatusWriter:
    """Per-resource status writer; `run()` is its supervisor."""

    def __init__(
        self,
        api: KubeApi,
        events: EventRecorder,
        snapshots: SnapshotSource,
        metrics: OperatorMetrics,
        *,
        debounce: float = DEBOUNCE_S,
        clock: Clock = lambda: datetime.now(UTC),
        finalizer_wait: float = 0.0,
    ) -> None:
        """`finalizer_wait`: how long a new resource's first status may wait for `finalized` (0: no wait;
        see FINALIZER_WAIT_S)."""
        self._api = api
        self._events = events
        self._snapshots = snapshots
        self._metrics = metrics
        self._clock = clock
        self._entries: dict[AgentKey, _Entry] = {}
        self._tasks: KeyedTasks[AgentKey] = KeyedTasks("status", self._write, debounce=debounce)
        self._in_flight = asyncio.Semaphore(WRITES_IN_FLIGHT)
        self._writing = 0
        """Statuses being computed or written, or waiting for a slot to be."""
        self._writes_idle = asyncio.Event()
        self._writes_idle.set()
        self._events_queue: deque[tuple[ObjectRef, EventSpec, datetime, float]] = deque()
        """(resource, Event, when it happened, monotonic deadline to stop yielding to writes)."""
        self._events_queued = asyncio.Event()
        self._finalizer_wait = finalizer_wait
        self._finalized: set[AgentKey] = set()
        self._expected: set[AgentKey] = set()
        """Resources seen but not tracked yet: their first reconciliation has not decided their facts."""
        self._unsettled = 0
        """Resources expected, or tracked with no first status decided by this process (`_Entry.settled`)."""
        self._all_settled = asyncio.Event()
        self._all_settled.set()

    async def run(self) -> None:
        """Write statuses and record their Events until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._tasks.run(), name="status-writes")
            for n in range(EVENTS_IN_FLIGHT):
                tg.create_task(self._record_events(), name=f"status-events-{n}")

    async def wait_idle(self) -> None:
        """Return once no status is being written or waits to be, and every resource seen has its first
        one (a resource still connecting, or whose Secrets are still being read, has one to come)."""
        while not (self._writes_idle.is_set() and self._all_settled.is_set()):
            await self._writes_idle.wait()
            await self._all_settled.wait()

    def expect(self, key: AgentKey) -> None:
        """A resource was seen and its first status is to come: until it is tracked (or `unexpect`ed),
        the others' later statuses yield to it as to a tracked one (see FOLLOW_UPS_YIELD_S). Its Secrets
        are read before it is tracked, and when fifty agents were applied at once, the first ones' later
        statuses went out while the others' Secrets were being read (docs/benchmarks.md, Session 15)."""
        if key in self._entries or key in self._expected:
            return
        self._expected.add(key)
        self._unsettled += 1
        self._all_settled.clear()

    def unexpect(self, key: AgentKey) -> None:
        """The resource's reconciliation ended: tracked by now, or no first status is coming from it."""
        if key in self._expected:
            self._expected.discard(key)
            self._settled_one()

    def track(
        self, key: AgentKey, ref: ObjectRef, facts: AgentFacts, stored: GitLabAgentStatus | None
    ) -> None:
        """New facts for a resource; `stored` is its status as last read (used on first sight only)."""
        entry = self._entries.get(key)
        if entry is None or entry.ref.uid != ref.uid:
            self._drop(entry)
            self._entries[key] = _Entry(ref, facts, _to_json(stored))
            if key in self._expected:
                self._expected.discard(key)  # counted as unsettled already
            else:
                self._unsettled += 1
                self._all_settled.clear()
        else:
            entry.facts = facts
        self._tasks.kick(key)

    def finalized(self, key: AgentKey) -> None:
        """kopf's finalizer is on the resource: its first status need not wait any more."""
        if key not in self._finalized:
            self._finalized.add(key)
            entry = self._entries.get(key)
            if entry is not None:
                entry.due = True
                self._tasks.kick(key, now=True)

    def forget(self, key: AgentKey) -> None:
        """Stop writing the status of a resource (deleted, or handed over to another operator)."""
        self._finalized.discard(key)
        self.unexpect(key)
        self._drop(self._entries.pop(key, None))
        self._metrics.forget_agent(key.worker_id)

    def _drop(self, entry: _Entry | None) -> None:
        """`entry` is no longer tracked: no wake-up for it, and no first status to wait for."""
        if entry is None:
            return
        if entry.wake is not None:
            entry.wake.cancel()
        self._settled(entry)

    def _settled(self, entry: _Entry) -> None:
        """No first status of `entry` is waited for any more (written, found current, given up on, or
        no longer tracked); once per entry."""
        if not entry.settled:
            entry.settled = True
            self._settled_one()

    def _settled_one(self) -> None:
        self._unsettled -= 1
        if not self._unsettled:
            self._all_settled.set()

    def on_snapshot(self, snapshot: WorkerSnapshot) -> None:
        """Runtime subscription: a worker changed."""
        try:
            key = AgentKey.parse(snapshot.id)
        except ValueError:
            return
        entry = self._entries.get(key)
        if entry is not None:
            # This process's first status goes out as soon as it may (Apply -> Connected), also while a
            # Connecting status is held (a snapshot that still says Connecting is held again at no cost:
            # `_still_held`); later changes of a busy worker are debounced into one patch.
            self._tasks.kick(key, now=entry.written_at == -math.inf)

    def status(self, key: AgentKey) -> GitLabAgentStatus | None:
        """The status last written for a resource."""
        entry = self._entries.get(key)
        return _from_json(entry.written_json) if entry is not None else None

    def _held(
        self, key: AgentKey, entry: _Entry, status: GitLabAgentStatus, stored: GitLabAgentStatus | None
    ) -> bool:
        """Hold a brand-new resource's first status until kopf's finalizer is on it, and this process's
        first status of any resource while it only says Connecting (see the constants). `stored`: the
        status on the resource (this process has written none yet)."""
        if entry.written_at != -math.inf:
            return False  # written by this process already
        if stored is None:
            waits_for_finalizer = bool(self._finalizer_wait) and key not in self._finalized
            if waits_for_finalizer and self._deferred(key, entry, entry.tracked_at + self._finalizer_wait):
                return True
        if status.phase is not Phase.CONNECTING:
            return False
        connected = stored is not None and stored.phase in (Phase.CONNECTED, Phase.DEGRADED)
        hold = RESTART_CONNECTED_HOLD_S if connected else FIRST_CONNECTING_HOLD_S
        return self._deferred(key, entry, entry.tracked_at + hold)

    def _counts_wait(
        self, key: AgentKey, entry: _Entry, written: GitLabAgentStatus | None, status: GitLabAgentStatus
    ) -> bool:
        """Defer a change of the tunnel counts alone until TUNNEL_COUNTS_INTERVAL_S after the last write;
        the first tunnels after a status without any are written at once (see the constant)."""
        if written is None or not _only_counts_differ(written, status):
            return False
        now = time.monotonic()
        if not _has_tunnels(written) and now - entry.counts_written_at >= TUNNEL_COUNTS_INTERVAL_S:
            return False
        return self._deferred(key, entry, entry.written_at + TUNNEL_COUNTS_INTERVAL_S)

    def _deferred(self, key: AgentKey, entry: _Entry, due: float) -> bool:
        """True when the write must wait until `due` (monotonic); the resource is kicked again then."""
        remaining = due - time.monotonic()
        if remaining <= 0:
            return False
        loop = asyncio.get_running_loop()
        if entry.wake is not None and entry.wake.when() > loop.time() + remaining:
            entry.wake.cancel()  # an earlier due time than the one waited for (finalizer, then Connecting)
            entry.wake = None
        if entry.wake is None:
            entry.wake = loop.call_later(remaining, self._wake, key)
        return True

    def _wake(self, key: AgentKey) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.wake, entry.due = None, True
            self._tasks.kick(key, now=True)  # deferred to this moment already

    async def _write(self, key: AgentKey) -> None:
        events: list[tuple[ObjectRef, EventSpec]] = []
        self._writing += 1
        self._writes_idle.clear()
        try:
            await self._yield_to_first_statuses(key)
            async with self._in_flight:
                retry_in = await self._write_now(key, events)
        finally:
            self._writing -= 1
            if not self._writing:
                self._writes_idle.set()
        self._queue_events(events)  # recorded by `_record_events`, after the statuses (see the constants)
        if retry_in is not None:  # waited for without a slot: a failing resource must not hold one
            await asyncio.sleep(retry_in)
            self._tasks.kick(key)

    async def _yield_to_first_statuses(self, key: AgentKey) -> None:
        """Wait while other resources wait for their first status, if this one's is decided and keeps its
        phase, at most FOLLOW_UPS_YIELD_S (see the constant)."""
        entry = self._entries.get(key)
        if entry is None or not entry.settled or self._all_settled.is_set():
            return
        if phase_of(entry.facts, self._snapshots(key.worker_id)) is not entry.settled_phase:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FOLLOW_UPS_YIELD_S):
                await self._all_settled.wait()

    def _queue_events(self, events: list[tuple[ObjectRef, EventSpec]]) -> None:
        if not events:
            return
        happened, deadline = self._clock(), time.monotonic() + EVENTS_YIELD_TO_WRITES_S
        for ref, event in events:
            if len(self._events_queue) >= EVENTS_QUEUED_MAX:
                dropped, old, _, _ = self._events_queue.popleft()
                extra = {**resource_extra(dropped.namespace, dropped.name), "reason": old.reason}
                log.warning("too many Events waiting: dropped the oldest", extra=extra)
            self._events_queue.append((ref, event, happened, deadline))
        self._events_queued.set()

    async def _record_events(self) -> None:
        """Record queued Events one at a time, each once no status waits to be written (or its deadline
        has come), until cancelled."""
        while True:
            while not self._events_queue:
                self._events_queued.clear()
                await self._events_queued.wait()
            ref, event, happened, deadline = self._events_queue.popleft()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(_loop_time(deadline)):
                    await self.wait_idle()
            await self._events.emit(ref, event, happened)

    def _settle(self, entry: _Entry, inputs: tuple[AgentFacts, WorkerSnapshot | None]) -> None:
        """The status of `inputs` is on the resource now."""
        entry.decided, entry.settled_phase = inputs, phase_of(*inputs)
        self._settled(entry)

    async def _write_now(self, key: AgentKey, events: list[tuple[ObjectRef, EventSpec]]) -> float | None:
        """Compute and write the status if it changed; the delay before a retry, if one is due. The
        Events of the transition are appended to `events`, for the caller to record."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        inputs = (entry.facts, self._snapshots(key.worker_id))
        if (inputs == entry.decided or _still_held(entry, *inputs)) and not entry.due:
            return None
        entry.decided, entry.due = None, False
        written = _from_json(entry.written_json)
        status = compute_status(*inputs, written, self._clock())
        self._metrics.observe_status(key.worker_id, status)  # also when unchanged: e.g. after a restart
        if status == written:
            self._settle(entry, inputs)
            return None
        if self._held(key, entry, status, written) or self._counts_wait(key, entry, written, status):
            entry.decided = inputs
            return None
        extra = resource_extra(key.namespace, key.name)
        path = group_path(API_VERSION, key.namespace, PLURAL, key.name) + "/status"
        try:
            answer = await self._api.merge_patch(path, {"status": status.to_merge_patch()}, decode=False)
            code = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer, code = None, 0
            log.warning("status patch failed: %s", type(exc).__name__, extra=extra)
        self._metrics.status_patches.labels(result=str(code // 100) + "xx" if code else "error").inc()
        if answer is not None and answer.ok:
            transitions = transition_events(written, status, entry.facts)
            entry.written_json, entry.failures = _to_json(status), 0
            entry.written_at = time.monotonic()
            self._settle(entry, inputs)
            if written is not None and _only_counts_differ(written, status):
                entry.counts_written_at = entry.written_at
            events.extend((entry.ref, event) for event in transitions)
            return None
        if code == 404:
            log.info("resource is gone; no more status for it", extra=extra)
            if self._entries.get(key) is entry:
                del self._entries[key]
                self._drop(entry)
                self._metrics.forget_agent(key.worker_id)
            return None
        if answer is not None and code not in _RETRYABLE:
            log.error("status patch rejected: %s", answer.reason(), extra=extra)
            self._settled(entry)  # none is coming until its inputs change: the others stop waiting
            return None
        if entry.failures >= len(RETRY_DELAYS_S):
            log.error("status patch keeps failing; waiting for the next change", extra=extra)
            entry.failures = 0
            self._settled(entry)  # as for a refusal
            return None
        delay = RETRY_DELAYS_S[entry.failures]
        entry.failures += 1
        return delay
