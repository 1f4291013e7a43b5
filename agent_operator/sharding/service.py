"""Sharding: the composition of membership, the gate and the sharded status writer, and its lifecycle.

    Lease informer ─► Members (live set) ─► ShardGate.settle_all, ShardedStatusWriter.ownership_changed
                  └─► ShardGate.claim_changed (claims)

`start()` after the Runtime started (it owns the informers) also starts the membership, which outlives
`run()` (under the composition's supervisor, cancelled first at shutdown): the member Lease is renewed
while the runtime drains every worker, however long the drain grace, so the others do not start this
replica's agents meanwhile. `release()`, after the drain, stops renewing, gives up the claims, then the
membership, so the others start this replica's agents at once instead of after the Lease expired.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import aiohttp
from prometheus_client import CollectorRegistry

from agent_operator.sharding.gate import ShardGate
from agent_operator.sharding.leases import CLAIM, LEASES_API, MEMBER, LeaseApi, kept_of_lease, view
from agent_operator.sharding.members import Members
from agent_operator.sharding.metrics import ShardMetrics
from agent_operator.sharding.settings import ShardingSettings
from agent_operator.sharding.writer import ShardedStatusWriter
from agent_runtime.informer import EventType, KubeObject, ResourceKind
from agent_runtime.kube import KubeAccess
from agent_runtime.runtime import Runtime

log = logging.getLogger(__name__)

RESYNC_INTERVAL_S: Final = 30.0
"""Our choice: every agent is settled again this often, whatever the events said (a missed event heals)."""


class Sharding:
    """Everything a sharded replica adds to the composition."""

    def __init__(
        self,
        settings: ShardingSettings,
        instance: str,
        kube: KubeAccess,
        runtime: Runtime,
        registry: CollectorRegistry,
        *,
        drain_grace: float,
    ) -> None:
        self.settings = settings
        self._runtime = runtime
        self.metrics = ShardMetrics(registry)
        self.leases = LeaseApi(kube, settings.namespace, settings.group, instance, settings.lease_duration)
        self.members = Members(
            self.leases,
            settings.lease_duration,
            self.metrics,
            on_change=self._membership_changed,
            on_fence=self._fence,
        )
        self.gate = ShardGate(runtime, self.leases, self.members, self.metrics, drain_grace=drain_grace)
        """The controller's WorkerRuntime."""
        self._writer: ShardedStatusWriter | None = None
        self._membership: asyncio.Task[None] | None = None

    def writer(self, *args: Any, **kwargs: Any) -> ShardedStatusWriter:
        """The status writer of this replica (StatusWriter's arguments)."""
        self._writer = ShardedStatusWriter(*args, replica=self.leases.me, owns=self.gate.owns, **kwargs)
        return self._writer

    def start(self) -> None:
        """Watch the group's Leases (the runtime must have started)."""
        kind = ResourceKind(
            LEASES_API, "leases", namespace=self.settings.namespace, label_selector=self.leases.selector
        )
        informer = self._runtime.informer(kind, transform=kept_of_lease)
        informer.add_handler(self._lease_changed)
        self._informer = informer
        self._membership = asyncio.create_task(self.members.run(), name="shard-membership")
        log.info(
            "sharding",
            extra={"group": self.settings.group, "lease_namespace": self.settings.namespace},
        )

    async def run(self) -> None:
        """Membership, claims and the periodic resync, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.gate.run(), name="shard-gate")
            tg.create_task(self._membership_failures(), name="shard-membership-failures")
            tg.create_task(self._wait_synced(), name="shard-leases-synced")
            tg.create_task(self._resync(), name="shard-resync")

    def ready(self) -> bool:
        """This replica's readiness (see ShardGate.ready)."""
        return self.gate.ready()

    async def release(self) -> None:
        """After every worker here stopped: stop renewing, release the claims, then leave (best effort)."""
        await self._stop_membership()
        try:
            await self.leases.release_all()
            await self.leases.leave()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot release the sharding Leases (they expire): %s", type(exc).__name__)
        finally:
            await self.leases.close()

    async def _membership_failures(self) -> None:
        """Wait on the membership without owning it: its failure (a bug) fails the supervisor; the
        supervisor's end leaves it running (see the module docstring)."""
        if self._membership is not None:
            await asyncio.shield(self._membership)

    async def _stop_membership(self) -> None:
        task, self._membership = self._membership, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:  # the supervisor failed on it already; the release goes on
            log.debug("the membership had failed", exc_info=True)

    async def _wait_synced(self) -> None:
        await self._informer.wait_synced()
        self.members.synced()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(RESYNC_INTERVAL_S)
            self.gate.settle_all()
            await self.members.forget_long_dead()

    def _lease_changed(self, event: EventType, old: KubeObject | None, new: KubeObject | None) -> None:
        obj = new if new is not None else old
        if obj is None:
            return
        lease = view(obj)
        deleted = event is EventType.DELETED
        if lease.role == MEMBER:
            if deleted:
                self.members.forget(lease)
            else:
                self.members.observe(lease)
        elif lease.role == CLAIM:
            self.gate.claim_changed(lease, deleted)

    def _membership_changed(self) -> None:
        self.gate.settle_all()
        if self._writer is not None:
            self._writer.ownership_changed()

    async def _fence(self) -> None:
        await self.gate.fence()
