"""Runtime: the one object the operator (or the standalone CLI) holds.

It owns, in one TaskGroup: the WorkerManager, the shared informers, the Kubernetes token refresher and the
observability listener. The operator calls `await runtime.start()` at start-up, `runtime.apply(spec)` /
`await runtime.remove(id)` from its handlers, reads snapshots (`updates()` or `subscribe()`), and calls
`await runtime.stop(grace)` at clean-up; the CLI simply awaits `runtime.run()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.flux_settings import FluxTuning
from agent_runtime.informer import (
    IndexFunc,
    Informer,
    ResourceKind,
    SharedInformers,
    Transform,
    strip_managed_fields,
)
from agent_runtime.kube import KubeAccess
from agent_runtime.manager import SnapshotCallback, WorkerFactory, WorkerManager
from agent_runtime.policy import TenantPolicy
from agent_runtime.spec import Phase, WorkerSnapshot, WorkerSpec
from agent_runtime.telemetry.endpoints import ObservabilityServer, ReadinessProbe
from agent_runtime.telemetry.metrics import RuntimeMetrics
from agent_runtime.transport.channel import ChannelSettings
from agent_runtime.transport.limits import raise_nofile_limit
from agent_runtime.version import AGENT_COMMIT, AGENT_VERSION

log = logging.getLogger(__name__)

_READY_PHASES = frozenset({Phase.CONNECTED, Phase.DEGRADED})


@dataclass(frozen=True)
class RuntimeSettings:
    """Process-level settings of the runtime."""

    observability_address: str | None = ":8080"
    """`host:port` of /metrics, /liveness, /readiness; None = no listener (the owner serves them)."""
    stop_grace: float = 10.0
    """Default drain time for a removed or restarted worker, in seconds."""
    user_agent: str = ""
    """User agent towards kas; empty = the runtime's default (`gitlab-agent/<version>/<commit>`)."""
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    """What each tenant's agent may do in this process (destinations, budgets, impersonation)."""
    channel: ChannelSettings = field(default_factory=ChannelSettings)
    """Tuning of every worker's kas channel; agentk's defaults. Tests shorten the keepalive with it."""
    flux: FluxTuning = field(default_factory=FluxTuning)
    """Tuning of every worker's Flux module; upstream's constants. Tests shorten the debounce with it."""


class Runtime:
    """Workers + informers + telemetry, with one lifecycle."""

    def __init__(
        self,
        kube: KubeAccess,
        settings: RuntimeSettings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        readiness: ReadinessProbe | None = None,
        worker_factory: WorkerFactory | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        """The settings this runtime was built with."""
        self.kube = kube
        """Kubernetes API access shared by workers and informers."""
        self.registry = registry if registry is not None else CollectorRegistry()
        """The registry /metrics serves (inject the operator's to add its own families)."""
        self.metrics = RuntimeMetrics(self.registry, version=AGENT_VERSION, commit=AGENT_COMMIT)
        """Per-agent metrics."""
        self.informers = SharedInformers(kube)
        """One list+watch per resource type for the whole process (the workers' modules use it too)."""
        env = WorkerEnvironment(
            kube=kube,
            metrics=self.metrics,
            logger=logger or logging.getLogger("agent_runtime"),
            user_agent=self.settings.user_agent,
            policy=self.settings.policy,
            channel=self.settings.channel,
            informers=self.informers,
            flux=self.settings.flux,
        )
        self.manager = WorkerManager(env, worker_factory=worker_factory, stop_grace=self.settings.stop_grace)
        """The workers."""
        self.manager.subscribe(self.metrics.observe_snapshot)
        self.manager.subscribe_removed(self.metrics.forget)
        self._readiness = readiness or self.all_workers_connected
        self._server: ObservabilityServer | None = None
        if self.settings.observability_address is not None:
            self._server = ObservabilityServer(self.settings.observability_address, self.registry, self.ready)
        self._started = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stop_grace: float | None = None
        self._finished = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until `stop()` (drains workers) or cancellation (hard stop)."""
        # Every ws/wss agent holds four descriptors; hundreds of agents exceed the usual soft limit of 1024.
        log.info("open-files limit: %d", raise_nofile_limit())
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.manager.run(), name="worker-manager")
                background = [
                    tg.create_task(self.informers.run(), name="shared-informers"),
                    tg.create_task(self.kube.run_token_refresher(), name="kube-token-refresher"),
                ]
                if self._server is not None:
                    await self._server.start()
                await self.manager.wait_started()
                await self.informers.wait_started()
                self._started.set()
                log.info("agent runtime started")
                await self._stop_requested.wait()
                await self.manager.stop(self._stop_grace)
                for task in background:
                    task.cancel()
        finally:
            if self._server is not None:
                await self._server.stop()
            self._finished.set()
            log.info("agent runtime stopped")

    async def start(self) -> None:
        """Start `run()` in a task this object owns; returns when apply() is accepted (or run failed)."""
        if self._task is not None:
            raise RuntimeError("Runtime.start() was already called")
        self._task = asyncio.create_task(self.run(), name="agent-runtime")
        started = asyncio.create_task(self._started.wait(), name="agent-runtime-started")
        try:
            await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if self._task.done():
            self._task.result()  # raises what made run() fail (e.g. the listen address is taken)
            raise RuntimeError("the agent runtime stopped during start-up")

    async def stop(self, grace: float | None = None) -> None:
        """Drain every worker (each gets `grace` seconds, default `settings.stop_grace`) and stop."""
        self._stop_grace = grace
        self._stop_requested.set()
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
        elif self._started.is_set():
            await self._finished.wait()

    async def close(self) -> None:
        """Hard stop: cancel `start()`'s task without draining (use `stop()` normally)."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_started(self) -> None:
        """Return once the runtime accepts apply()."""
        await self._started.wait()

    @property
    def observability_port(self) -> int | None:
        """The bound port of the observability listener (None when there is none)."""
        return self._server.port if self._server is not None else None

    # --- workers -----------------------------------------------------------------------------------
    def apply(self, spec: WorkerSpec) -> None:
        """Desired state of worker `spec.id` (see WorkerManager.apply); returns at once."""
        self.manager.apply(spec)

    async def remove(self, worker_id: str, grace: float | None = None) -> None:
        """Drain and forget worker `worker_id`; returns when it has stopped."""
        await self.manager.remove(worker_id, grace)

    def snapshot(self, worker_id: str) -> WorkerSnapshot | None:
        """Latest snapshot of one worker."""
        return self.manager.snapshot(worker_id)

    def snapshots(self) -> dict[str, WorkerSnapshot]:
        """Latest snapshot of every worker."""
        return self.manager.snapshots()

    def subscribe(self, callback: SnapshotCallback) -> Callable[[], None]:
        """callback(snapshot) on every change; returns an unsubscribe function."""
        return self.manager.subscribe(callback)

    def updates(self) -> AsyncGenerator[WorkerSnapshot, None]:
        """Latest-value-per-worker stream of snapshots (see WorkerManager.updates)."""
        return self.manager.updates()

    # --- informers ---------------------------------------------------------------------------------
    def informer(
        self,
        kind: ResourceKind,
        *,
        indexers: Mapping[str, IndexFunc] | None = None,
        transform: Transform = strip_managed_fields,
    ) -> Informer:
        """The process-wide informer of `kind` (started on first use)."""
        return self.informers.get(kind, indexers=indexers, transform=transform)

    # --- probes ------------------------------------------------------------------------------------
    def all_workers_connected(self) -> bool:
        """The default readiness: every worker that should run is connected (true with no workers)."""
        return all(s.phase in _READY_PHASES for s in self.manager.snapshots().values())

    def ready(self) -> bool:
        """What /readiness answers: started, not stopping, and the readiness probe passes."""
        return self._started.is_set() and not self._stop_requested.is_set() and self._readiness()
