"""ShardGate: the WorkerRuntime the AgentController drives when the operator is sharded.

Every replica reconciles every GitLabAgent (so admission, which looks at all agents' tokens, decides the
same everywhere), and hands the desired workers to this gate instead of the Runtime. The gate runs a
worker only for the agents this replica owns (agent_runtime.sharding.assign over the live members) and
only under the agent's claim (agent_runtime.sharding.handover): drained and released by the old owner
before the new one starts it.

One task per agent at a time (KeyedTasks) settles it; `remove()` takes the same per-agent lock. Nothing
waits for another agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp

from agent_operator.keyed import KeyedTasks
from agent_operator.sharding.leases import LeaseError, LeaseView, newer
from agent_operator.sharding.metrics import Handover, ShardMetrics
from agent_runtime.manager import STOP_MARGIN_S
from agent_runtime.sharding.assign import owner
from agent_runtime.sharding.handover import Action, Situation, decide
from agent_runtime.spec import Phase, WorkerSnapshot, WorkerSpec

log = logging.getLogger(__name__)

RETRY_S: Final = 2.0
"""After a failed claim request, the agent is settled again this much later."""
_READY_PHASES: Final = frozenset({Phase.CONNECTED, Phase.DEGRADED})
RELEASE_POLL_S: Final = 0.2
"""How often `remove()` on a replica that does not run the agent looks whether its owner released it."""


class Workers(Protocol):
    """What the gate needs of agent_runtime.Runtime."""

    def apply(self, spec: WorkerSpec) -> None: ...

    async def remove(self, worker_id: str, grace: float | None = None) -> None: ...

    def snapshot(self, worker_id: str) -> WorkerSnapshot | None: ...


class Claims(Protocol):
    """What the gate needs of LeaseApi: the claim requests of this replica."""

    @property
    def me(self) -> str: ...

    async def claim(self, agent: str) -> str | None: ...

    async def take_over(self, agent: str, version: str) -> str | None: ...

    async def release(self, agent: str, version: str) -> None: ...


class MemberView(Protocol):
    """What the gate needs of Members."""

    @property
    def live(self) -> frozenset[str] | None: ...

    async def confirm_dead(self, holder: str) -> bool: ...


@dataclass
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    """Tasks holding or waiting for it: the entry goes when the last one leaves."""


class ShardGate:
    """Runs the workers this replica owns, each under its claim."""

    def __init__(
        self,
        runtime: Workers,
        leases: Claims,
        members: MemberView,
        metrics: ShardMetrics,
        *,
        drain_grace: float,
    ) -> None:
        self._runtime = runtime
        self._leases = leases
        self._members = members
        self._metrics = metrics
        self._grace = drain_grace
        self._me = leases.me
        self._desired: dict[str, WorkerSpec] = {}
        self._running: set[str] = set()
        self._held: dict[str, str] = {}
        """Claims this replica holds (agent → resourceVersion), from its own writes: ahead of the watch."""
        self._claims: dict[str, LeaseView] = {}
        """Every claim of the group, as the watch last delivered it (agent → claim)."""
        self._locks: dict[str, _Lock] = {}
        self._settle = KeyedTasks("shard", self._settle_one)
        self._retry_handles: set[asyncio.TimerHandle] = set()

    async def run(self) -> None:
        """Own the per-agent tasks until cancelled."""
        try:
            await self._settle.run()
        finally:
            for handle in self._retry_handles:
                handle.cancel()

    # --- ownership ---------------------------------------------------------------------------------
    def owner(self, agent: str) -> str | None:
        """The replica that owns `agent` now (None while membership is unknown)."""
        live = self._members.live
        return owner(agent, live) if live is not None else None

    def owns(self, agent: str) -> bool:
        """This replica owns `agent` now."""
        return self.owner(agent) == self._me

    def settle_all(self) -> None:
        """Membership changed (or a periodic check): settle every agent known here."""
        for agent in self._desired.keys() | self._running | self._held.keys():
            self._settle.kick(agent)

    # --- WorkerRuntime, for the AgentController ----------------------------------------------------
    def apply(self, spec: WorkerSpec) -> None:
        """The worker the controller wants for `spec.id` (updated in place when it runs here)."""
        self._desired[spec.id] = spec
        if spec.id in self._running:
            self._runtime.apply(spec)
        else:
            self._settle.kick(spec.id)

    async def remove(self, worker_id: str, grace: float | None = None) -> None:
        """No worker is wanted any more: drain it here, or wait until the replica that runs it has (so
        that the next agent with the same token waits for the drain)."""
        self._desired.pop(worker_id, None)
        async with self._exclusive(worker_id):
            if worker_id in self._running:
                await self._stop(worker_id, grace, Handover.HANDED_OFF)
                return
            if worker_id in self._held:
                await self._release(worker_id)
                return
        await self._wait_released(worker_id, (self._grace if grace is None else grace) + STOP_MARGIN_S + 5)

    def snapshot(self, worker_id: str) -> WorkerSnapshot | None:
        """The worker's snapshot, when it runs here."""
        return self._runtime.snapshot(worker_id) if worker_id in self._running else None

    # --- claims, from the informer -----------------------------------------------------------------
    def claim_changed(self, claim: LeaseView, deleted: bool) -> None:
        """A claim Lease was added, changed or deleted."""
        agent = claim.agent
        if not agent:
            return
        if deleted:
            if not newer(self._claims.get(agent, claim).version, claim.version):
                self._claims.pop(agent, None)  # unless re-created since
        else:
            self._claims[agent] = claim
        held = self._held.get(agent)
        if held is not None and newer(claim.version, held):
            if deleted or claim.holder != self._me:
                self._held.pop(agent, None)  # somebody else took or removed it: the worker must stop
            else:
                self._held[agent] = claim.version
        self._settle.kick(agent)

    def _holder(self, agent: str) -> str | None:
        if agent in self._held:
            return self._me
        claim = self._claims.get(agent)
        return claim.holder if claim is not None else None

    # --- settling one agent ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _exclusive(self, agent: str) -> AsyncIterator[None]:
        """One settle or removal of `agent` at a time."""
        entry = self._locks.get(agent)
        if entry is None:
            entry = self._locks[agent] = _Lock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[agent]

    async def _settle_one(self, agent: str) -> None:
        async with self._exclusive(agent):
            try:
                await self._act(agent)
            except (aiohttp.ClientError, TimeoutError, LeaseError) as exc:
                log.warning("claim request failed; retrying: %s", exc, extra={"agent": agent})
                self._retry_later(agent)

    async def _act(self, agent: str) -> None:
        holder = self._holder(agent)
        live = self._members.live
        situation = Situation(
            me=self._me,
            owner=self.owner(agent),
            wanted=agent in self._desired,
            running=agent in self._running,
            holder=holder,
            holder_live=holder is not None and live is not None and holder in live,
        )
        action = decide(situation)
        if action is Action.STOP:
            lost = holder != self._me
            await self._stop(agent, 0.0 if lost else None, Handover.LOST if lost else Handover.HANDED_OFF)
        elif action is Action.RELEASE:
            await self._release(agent)
        elif action is Action.CLAIM:
            version = await self._leases.claim(agent)
            if version is not None:
                self._held[agent] = version
                self._start(agent, Handover.CLAIMED)
        elif action is Action.TAKE_OVER:
            await self._take_over(agent, holder or "")
        elif action is Action.START:
            await self._start_held(agent)

    async def _start_held(self, agent: str) -> None:
        """Start under a claim that names us. Unless we wrote it in this run, the watch may lag behind
        (another replica took it while we were fenced, say): write it again, on the version we saw."""
        if agent not in self._held:
            claim = self._claims.get(agent)
            version = await self._leases.take_over(agent, claim.version) if claim is not None else None
            if version is None:
                self._retry_later(agent)
                return
            self._held[agent] = version
        self._start(agent, Handover.CLAIMED)

    async def _take_over(self, agent: str, holder: str) -> None:
        claim = self._claims.get(agent)
        if claim is None or not await self._members.confirm_dead(holder):
            self._retry_later(agent)
            return
        version = await self._leases.take_over(agent, claim.version)
        if version is not None:
            log.info("taking over an agent of a dead replica", extra={"agent": agent, "from": holder})
            self._held[agent] = version
            self._start(agent, Handover.TAKEN_OVER)

    def _start(self, agent: str, kind: Handover) -> None:
        spec = self._desired.get(agent)
        if spec is None:
            return
        if self._members.live is None:
            # Fenced while the claim was in flight: the fence stopped what ran then, and nothing would
            # stop this one. The next settle gives the claim back.
            self._settle.kick(agent)
            return
        self._runtime.apply(spec)
        self._running.add(agent)
        self._metrics.owned.set(len(self._running))
        self._metrics.handovers.labels(kind=kind.value).inc()

    async def _stop(self, agent: str, grace: float | None, kind: Handover) -> None:
        self._running.discard(agent)  # first: an apply() meanwhile must not restart the draining worker
        self._metrics.owned.set(len(self._running))
        await self._runtime.remove(agent, self._grace if grace is None else grace)
        self._metrics.handovers.labels(kind=kind.value).inc()
        if agent in self._held:
            await self._release(agent)
        self._settle.kick(agent)  # it may be ours again, or wanted again, meanwhile

    async def _release(self, agent: str) -> None:
        version = self._held.get(agent)
        if version is not None:
            await self._leases.release(agent, version)
            self._held.pop(agent, None)
            claim = self._claims.get(agent)
            if claim is not None and claim.version == version:
                del self._claims[agent]  # gone: the watch's DELETED event may come later

    def _retry_later(self, agent: str) -> None:
        loop = asyncio.get_running_loop()

        def kick() -> None:
            self._retry_handles.discard(handle)
            self._settle.kick(agent)

        handle = loop.call_later(RETRY_S, kick)
        self._retry_handles.add(handle)

    async def _wait_released(self, agent: str, limit_s: float) -> None:
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    holder = self._holder(agent)
                    live = self._members.live or frozenset()
                    if holder is None or holder == self._me or holder not in live:
                        return
                    await asyncio.sleep(RELEASE_POLL_S)
        except TimeoutError:
            log.warning("the replica running the agent has not released it in time", extra={"agent": agent})

    # --- stopping ----------------------------------------------------------------------------------
    async def fence(self) -> None:
        """This replica is no member for now: stop every worker at once (the claims stay; whoever takes
        over does so only after our member Lease expired)."""

        async def stop(agent: str) -> None:
            async with self._exclusive(agent):
                self._held.pop(agent, None)
                if agent in self._running:
                    await self._stop(agent, 0.0, Handover.LOST)

        await asyncio.gather(*(stop(agent) for agent in sorted(self._running)))

    def ready(self) -> bool:
        """Readiness of a sharded replica: it is a member, and every wanted agent it owns runs here and
        is connected (agents that cannot run are the controller's business, and never count)."""
        if self._members.live is None:
            return False
        for agent in self._desired:
            if not self.owns(agent):
                continue
            snapshot = self.snapshot(agent)
            if snapshot is None or snapshot.phase not in _READY_PHASES:
                return False
        return True

    def held(self) -> int:
        """Claims held now."""
        return len(self._held)
