"""The composition root: everything the operator process runs, built once and wired here.

    kopf (handlers.py) ─► AgentController ─► Runtime (workers, informers, /metrics /liveness /readiness)
                               │                 │ snapshots
                               ▼                 ▼
                          Sources ◄─ informers  StatusWriter ─► status subresource, Events

`start()` runs in kopf's startup handler, `stop()` in its cleanup handler: the status writer and the
background re-mappings stop first (so draining workers are not reported as Suspended), then the runtime
drains every worker within `drain_grace`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

import kopf
from prometheus_client import CollectorRegistry, ProcessCollector
from pydantic import ValidationError

from agent_operator.agent_watch import FINALIZER, AgentWatch
from agent_operator.api import GitLabAgentSpec
from agent_operator.controller import AgentController, WorkerRuntime
from agent_operator.events import EventRecorder
from agent_operator.kube_api import KubeApi, ListError
from agent_operator.label_sweep import list_agents_in_scope, sweep_periodically
from agent_operator.mapping import AgentKey, SourceUses, add_uses
from agent_operator.metrics import OperatorMetrics
from agent_operator.service_accounts import ServiceAccounts
from agent_operator.settings import OperatorSettings
from agent_operator.sharding import Sharding
from agent_operator.sources import Sources
from agent_operator.status_writer import FINALIZER_WAIT_S, StatusWriter
from agent_runtime.kube import KubeAccess
from agent_runtime.manager import STOP_MARGIN_S
from agent_runtime.runtime import Runtime, RuntimeSettings

log = logging.getLogger(__name__)

ANNOTATION_PREFIX: Final = "agentk.dev"
"""kopf's bookkeeping (the delete handler's progress, while it retries) lives in annotations under this
prefix."""
EXIT_MARGIN_S: Final = 20.0
"""kopf's last-resort SIGKILL comes this long after the drain time (kopf's own shutdown steps)."""
KOPF_WORKER_IDLE_S: Final = 0.2
"""kopf ends a resource's event worker after this long without events (kopf's default: 5 s). An idle
worker still holds the last event's whole body (managedFields included, about 20 KiB of Python objects):
with 1000 resources applied at once, 5 s kept hundreds of them alive together, and the small-object
heap they left behind stayed fragmented (docs/benchmarks.md, Density). Events of one resource that come
further apart than this just start a new worker."""
KOPF_WORKER_LIMIT: Final = 64
"""At most this many GitLabAgents are processed by kopf at once (kopf's default: no limit); the others'
events wait in kopf's per-resource queues. Each one in flight holds kopf's processing state and the
operator's reconciliation: with 1000 resources applied at once all were in flight together, and the
small-object heap they left behind stayed fragmented (docs/benchmarks.md, Density). 64 still connects
1000 agents within the 30 s target."""
LIST_WAIT_S: Final = 30.0
"""At start, how long the operator waits for its GitLabAgent informer's first list before it starts
without it (our choice; the informer keeps trying, and admission then goes in the order of delivery)."""
READINESS_METRIC_INTERVAL_S: Final = 5.0
"""How often agentk_operator_ready is refreshed (our choice; Prometheus scrapes every 30 s by default).
The value is computed on the event loop, never during a scrape: /metrics collects in a thread, and the
controller's records are not safe to walk from one."""


class Composition:
    """Owns the Runtime and the operator's own tasks."""

    def __init__(self, settings: OperatorSettings, kube: KubeAccess, cluster_version: str | None) -> None:
        self.settings = settings
        self.kube = kube
        self.registry = CollectorRegistry()
        """Served on /metrics: the runtime's per-agent families and the operator's own."""
        self.metrics = OperatorMetrics(self.registry)
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds: the dashboard's CPU/RSS
        # panels work without cAdvisor (outside a cluster too).
        ProcessCollector(registry=self.registry)
        self.api = KubeApi(kube)
        self.events = EventRecorder(self.api, settings.instance)
        self.runtime = Runtime(
            kube,
            RuntimeSettings(
                observability_address=settings.observability_address,
                stop_grace=settings.drain_grace,
                policy=settings.policy,
            ),
            registry=self.registry,
            readiness=self._ready,
        )
        self.sharding = (
            Sharding(
                settings.sharding,
                settings.instance,
                kube,
                self.runtime,
                self.registry,
                drain_grace=settings.drain_grace,
            )
            if settings.sharding is not None
            else None
        )
        """With --sharding: runs only this replica's share of the agents (agent_operator/sharding/)."""
        workers: WorkerRuntime = self.runtime
        finalizer = FINALIZER if settings.peering is not None else None
        finalizer_wait = FINALIZER_WAIT_S if finalizer is not None else 0.0
        if self.sharding is None:
            self.writer = StatusWriter(
                self.api, self.events, self.runtime.snapshot, self.metrics, finalizer_wait=finalizer_wait
            )
        else:
            workers = self.sharding.gate
            self.writer = self.sharding.writer(
                self.api, self.events, workers.snapshot, self.metrics, finalizer_wait=finalizer_wait
            )
        self.sources = Sources(self.api, settings.namespaces)
        self.service_accounts = ServiceAccounts(settings.namespaces)
        self.controller = AgentController(
            workers,
            self.sources,
            self.writer,
            self.events,
            self.metrics,
            kubernetes_support=settings.kubernetes_support,
            cluster_version=cluster_version,
            drain_grace=settings.drain_grace,
            service_accounts=self.service_accounts,
            limits=settings.limits,
            finalizer=finalizer,
        )
        self.agent_watch = (
            AgentWatch(self.api, settings.namespaces, self.controller.observe, self.controller.gone)
            if settings.peering is None
            else None
        )
        """Without peering: the GitLabAgents' events, from the operator's own informer (agent_watch.py);
        with peering kopf's handlers deliver them (handlers.py)."""
        self._task: asyncio.Task[None] | None = None

    def _ready(self) -> bool:
        if self._task is None or self._task.done():
            return False
        return self.controller.ready() if self.sharding is None else self.sharding.ready()

    async def start(self) -> None:
        """Start the runtime, the secret watches and the operator's tasks."""
        await self.runtime.start()
        if self.agent_watch is not None:
            self.agent_watch.start(self.runtime.informer)
            listed = await self.agent_watch.listed(LIST_WAIT_S)
        else:
            listed = await self._list_agents()
        if listed is None:
            log.warning("agents are admitted in the order they are handed over: the list did not come")
        else:
            self._expect(listed)
        if self.sharding is not None:
            self.sharding.start()
        self.runtime.subscribe(self.writer.on_snapshot)
        self.runtime.subscribe(self.controller.on_snapshot)
        self.sources.start(self.runtime.informer, self.controller.source_changed)
        self.service_accounts.start(self.runtime.informer, self.controller.service_account_changed)
        self._task = asyncio.create_task(self._supervise(), name="operator-supervisor")
        log.info("operator started", extra={"instance": self.settings.instance})

    async def _list_agents(self) -> list[Mapping[str, Any]] | None:
        """Every GitLabAgent in scope (with peering, where kopf watches them), None when the list failed."""
        try:
            return [item async for item in list_agents_in_scope(self.api, self.settings.namespaces)]
        except ListError as exc:
            log.warning("%s", exc)
            return None

    def _expect(self, listed: Iterable[Mapping[str, Any]]) -> None:
        """Tell the controller which GitLabAgents exist before they are handed over, in any order (see
        admission.py), and the Secret caches what to keep of the objects they refer to."""
        created: dict[AgentKey, str] = {}
        uses: SourceUses = {}
        for item in listed:
            meta = item.get("metadata") or {}
            key = AgentKey(str(meta.get("namespace", "")), str(meta.get("name", "")))
            created[key] = str(meta.get("creationTimestamp", ""))
            with contextlib.suppress(ValidationError):  # the controller reports it
                add_uses(uses, key, GitLabAgentSpec.model_validate(item.get("spec") or {}))
        self.sources.expect(uses)
        self.controller.expect(created)

    async def _supervise(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.writer.run(), name="status-writer")
            tg.create_task(self.controller.run(), name="agent-remapper")
            tg.create_task(self._sweep_labels(), name="label-sweep")
            tg.create_task(self.sources.label_deferred(self.writer.wait_idle), name="deferred-labels")
            tg.create_task(self._publish_readiness(), name="readiness-metric")
            if self.agent_watch is not None:
                tg.create_task(self._deliver_agents(self.agent_watch), name="agent-watch")
                tg.create_task(self.agent_watch.run(), name="agent-finalizers")
            if self.sharding is not None:
                tg.create_task(self.sharding.run(), name="sharding")

    async def _publish_readiness(self) -> None:
        """Keep agentk_operator_ready equal to what /readiness would answer, until cancelled."""
        while True:
            self.metrics.ready.set(1 if self._ready() else 0)
            await asyncio.sleep(READINESS_METRIC_INTERVAL_S)

    async def _deliver_agents(self, watch: AgentWatch) -> None:
        """Hand the GitLabAgents to the controller once the Secret caches are synced: a restart's agents
        then start at once, their Secrets read from the caches; a first start's from one list per
        namespace (secret_prefetch.py)."""
        await self.sources.wait_synced()
        await self.sources.prefetch()
        await watch.deliver()

    async def _sweep_labels(self) -> None:
        """At start and then periodically (see label_sweep.py): unlabel what no GitLabAgent uses, drain
        agents whose resource is gone; a failed pass is logged and retried later."""
        await sweep_periodically(self.api, self.sources, self.controller.forget_unlisted)

    async def stop(self) -> None:
        """Stop writing, drain every worker, close the API session."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("draining agents", extra={"grace_seconds": self.settings.drain_grace})
        await self.runtime.stop(self.settings.drain_grace)
        if self.sharding is not None:
            await self.sharding.release()  # only now: every worker here has stopped
        await self.api.close()
        await self.kube.close()
        log.info("operator stopped")


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection, switched off: the handlers see every event and the controller tells what
    is new (handlers.py). kopf would otherwise copy each event's body to compare it with the last handled
    one, and PATCH that one into an annotation after every handled change."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        del body, extra_fields
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        del body
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        del body, patch, essence


def configure_kopf(settings: kopf.OperatorSettings, operator: OperatorSettings) -> None:
    """kopf's settings: no change detection, progress (of the delete handler) in annotations (status is
    ours), quiet events, exit timing."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.finalizer = FINALIZER
    # kopf turns log lines of handlers into Events; the operator records its own, meaningful ones.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "gitlab-agent-operator"
    settings.posting.reporting_instance = operator.instance
    settings.peering.priority = operator.peering_priority
    settings.peering.stealth = True
    # Cleanup drains every worker (drain_grace + the manager's stop margin); SIGKILL only after that.
    settings.process.ultimate_exiting_timeout = operator.drain_grace + STOP_MARGIN_S + EXIT_MARGIN_S
    settings.queueing.idle_timeout = KOPF_WORKER_IDLE_S
    settings.queueing.worker_limit = KOPF_WORKER_LIMIT
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    settings.watching.connect_timeout = 10
    settings.networking.connect_timeout = 10


def daemon_cancellation_timeout(operator: OperatorSettings) -> float:
    """How long kopf lets a peering daemon drain its worker before cancelling it."""
    return operator.drain_grace + STOP_MARGIN_S + 5.0


def kopf_kwargs(operator: OperatorSettings) -> dict[str, Any]:
    """Arguments of kopf.operator(): namespaces or cluster-wide, peering or standalone, no liveness."""
    kwargs: dict[str, Any] = {"liveness_endpoint": None}
    if operator.namespaces is None:
        kwargs["clusterwide"] = True
    else:
        kwargs["namespaces"] = list(operator.namespaces)
    if operator.peering is None:
        kwargs["standalone"] = True
    else:
        kwargs["peering_name"] = operator.peering
        kwargs["priority"] = operator.peering_priority
        kwargs["identity"] = operator.instance
    return kwargs
