"""One tunnel worker: one kas connection plus the agent modules, with a published snapshot.

This is the composition root of the agent modules: it builds the ModuleContext, the modules from their
factories, and runs them side by side in one TaskGroup. Modules start independently: tunnels and Register
never wait for the first configuration (PROTOCOL.md §12.2).

Public API (the WorkerManager is built on it; keep it stable):
    Worker(spec, env)
    await worker.run()          runs until cancelled or stop()
    worker.snapshot             latest WorkerSnapshot
    worker.subscribe(callback)  callback(snapshot) on every change, called on the event loop
    worker.update_token(token)  new RPCs use the new token; streams reopen
    await worker.stop(grace)    lets in-flight tunnel requests finish for up to `grace` seconds
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from agent_proto.flavor import WireNames, wire_names
from agent_runtime.auth_gate import AuthGate
from agent_runtime.clock import SYSTEM_CLOCK
from agent_runtime.environment import NoMetrics, WorkerEnvironment
from agent_runtime.grpc_calls import KasChannel
from agent_runtime.kube import PrivatePool
from agent_runtime.latest import LatestValue, Signal
from agent_runtime.local_rpc import HandlerTable
from agent_runtime.module_context import AgentInfo, ModuleContext
from agent_runtime.modules import agent_configuration, agent_registrar, flux, kubernetes_api, reverse_tunnel
from agent_runtime.secret import Secret
from agent_runtime.spec import (
    ErrorReason,
    FluxState,
    FluxStatus,
    Phase,
    WorkerError,
    WorkerSnapshot,
    WorkerSpec,
)
from agent_runtime.tenancy import TenantShare
from agent_runtime.transport.channel import KasConnection, open_kas_connection
from agent_runtime.transport.config_error import TransportConfigError
from agent_runtime.transport.errors import CHANNEL_LOST_MESSAGE
from agent_runtime.version import AGENT_COMMIT, AGENT_PRODUCT, AGENT_VERSION
from agent_runtime.worker_state import Component, WorkerState

SnapshotCallback = Callable[[WorkerSnapshot], None]

_CLOSE_GRACE_S = 1.0
"""Grace for closing the channel once every module has stopped."""


class _KasLink:
    """The ModuleContext's view of the KasConnection."""

    def __init__(self, connection: KasConnection, wire: WireNames) -> None:
        self._connection = connection
        self._wire = wire

    @property
    def channel(self) -> KasChannel:
        return self._connection.channel

    @property
    def wire(self) -> WireNames:
        return self._wire

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._connection.call_metadata()

    def note_response_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        self._connection.note_response_metadata(metadata)


class Worker:
    """Runs one GitLab agent: configuration stream, Register heartbeat, reverse-tunnel pool."""

    def __init__(self, spec: WorkerSpec, env: WorkerEnvironment) -> None:
        self._spec = spec
        self._env = env
        self._log = logging.LoggerAdapter(env.logger.getChild("worker"), {"worker": spec.id})
        self._subscribers: list[SnapshotCallback] = []
        self._connection: KasConnection | None = None
        self._state = WorkerState(
            WorkerSnapshot(id=spec.id, phase=Phase.CONNECTING, agent_version=AGENT_VERSION),
            self._publish,
            refine=self._refine,
        )
        self._auth_gate = AuthGate()
        self._reconnect = Signal()
        self._draining = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._grace = 0.0
        self._running = False
        self.configuration: LatestValue[Any] = LatestValue(None)
        """The latest agent configuration (agentcfg.AgentConfiguration) accepted from kas."""
        self.agent = AgentInfo.for_this_process(AGENT_VERSION, AGENT_COMMIT)
        """AgentMeta contents; pod_id is random per worker."""

    @property
    def spec(self) -> WorkerSpec:
        """The spec this worker runs (the token is the latest one set)."""
        return self._spec

    @property
    def snapshot(self) -> WorkerSnapshot:
        """The latest snapshot."""
        return self._state.snapshot

    def subscribe(self, callback: SnapshotCallback) -> Callable[[], None]:
        """Call `callback` with every new snapshot; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def update_token(self, token: Secret) -> None:
        """Use `token` from now on: new RPCs carry it, long-lived idle streams reopen with it."""
        self._spec = dataclasses.replace(self._spec, token=token)
        if self._connection is not None:
            self._connection.set_token(token)
        self._state.clear_errors()
        self._auth_gate.reopen()
        self._reconnect.fire()

    async def run(self) -> None:
        """Run until cancelled or stop() is called."""
        if self._running:
            raise RuntimeError(f"worker {self._spec.id} is already running")
        self._running = True
        try:
            try:
                connection = await open_kas_connection(
                    self._spec,
                    user_agent=self._env.user_agent or AGENT_PRODUCT,
                    policy=self._env.policy.destinations,
                    settings=self._env.channel,
                )
            except TransportConfigError as e:
                self._state.failed(Component.TUNNELS, e.as_worker_error())
                self._state.set_phase_override(Phase.FAILED)
                await self._stop_requested.wait()
                return
            self._connection = connection
            try:
                await self._run_modules(connection)
            finally:
                self._connection = None
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(_CLOSE_GRACE_S))
        finally:
            self._stopped.set()

    async def stop(self, grace: float) -> None:
        """Stop: no new tunnel requests; in-flight ones get up to `grace` seconds; then cancel."""
        self._grace = grace
        self._stop_requested.set()
        if self._running:
            await self._stopped.wait()

    # --- composition ----------------------------------------------------------------------------------
    def _context(
        self, connection: KasConnection, api_pool: PrivatePool, tenant: TenantShare
    ) -> ModuleContext:
        return ModuleContext(
            worker_id=self._spec.id,
            kas=_KasLink(connection, wire_names(self._spec.flavor)),
            agent=self.agent,
            kube=self._env.kube,
            api_pool=api_pool,
            identity=self._spec.identity,
            tunnels=self._spec.tunnels,
            policy=self._env.policy,
            tenant=tenant,
            state=self._state,
            auth_gate=self._auth_gate,
            reconnect=self._reconnect,
            draining=self._draining,
            configuration=self.configuration,
            handlers=HandlerTable(),
            clock=SYSTEM_CLOCK,
            logger=self._log,
            informers=self._env.informers,
        )

    async def _run_modules(self, connection: KasConnection) -> None:
        api_pool = PrivatePool(self._env.kube, self._env.policy.budget.max_inflight_requests)
        try:
            with self._env.tenants.joined(self._spec.tenant, self._env.policy.tenant_budget) as tenant:
                await self._run_module_group(connection, self._context(connection, api_pool, tenant))
        finally:
            await asyncio.shield(api_pool.close())

    async def _run_module_group(self, connection: KasConnection, ctx: ModuleContext) -> None:
        self._state.set_kas_version(connection.kas_version)
        connection.on_kas_version(self._state.set_kas_version)
        metrics = self._env.metrics if self._env.metrics is not None else NoMetrics()
        k8s = kubernetes_api.build(ctx, metrics)
        tunnel_ctx = dataclasses.replace(ctx, handlers=HandlerTable((k8s.service,)))
        name = self._spec.id
        async with asyncio.TaskGroup() as tg:

            def start(module: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
                return tg.create_task(coro, name=f"{name}/{module}")

            others = [
                start("kubernetes_api", k8s.run()),
                start("agent_registrar", agent_registrar.build(ctx, metrics).run()),
                start("agent_configuration", agent_configuration.build(ctx, metrics).run()),
            ]
            if connection.grpc_channel is None:
                connection.on_kas_lost(self._kas_lost)
            else:
                others.append(start("channel_watch", self._watch_channel(connection)))
            if self._spec.flux_enabled:
                others.append(
                    start("flux", flux.build(ctx, self._env.flux, metrics, self._spec.flux_mode).run())
                )
            else:
                self._state.flux(FluxStatus(FluxState.DISABLED, "spec.flux.enabled is false"))
            tunnels = start("reverse_tunnel", reverse_tunnel.build(tunnel_ctx, metrics).run())
            start("stopper", self._stopper(others, tunnels))

    def _kas_lost(self) -> None:
        """A connection to kas could not be made: the tunnels are unreachable until kas accepts one again
        (the transport's diagnosis replaces the generic message, `_refine`)."""
        self._state.failed(Component.TUNNELS, WorkerError(ErrorReason.KAS_UNREACHABLE, CHANNEL_LOST_MESSAGE))

    async def _watch_channel(self, connection: KasConnection) -> None:
        """The grpc.aio channel's own watch (GAO_KAS_TRANSPORT=grpc): kas lost, kas moved."""
        # Imported here only: grpc costs every process about 8.6 MiB, and the default transport needs none.
        from agent_runtime.transport.grpc_channel import watch_channel

        await watch_channel(connection, lost=self._kas_lost, moved=self._kas_moved)

    def _kas_moved(self) -> None:
        """kas's name resolves to other addresses: a new channel, to which the modules move their calls."""
        self._log.info("kas resolves to other addresses: new channel")
        self._reconnect.fire()

    async def _stopper(self, others: list[asyncio.Task[None]], tunnels: asyncio.Task[None]) -> None:
        await self._stop_requested.wait()
        self._state.set_phase_override(Phase.SUSPENDED)
        for task in others:
            task.cancel()
        self._draining.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(tunnels), timeout=self._grace)
        tunnels.cancel()

    # --- state ----------------------------------------------------------------------------------------
    def _refine(self, error: WorkerError) -> WorkerError:
        """A generic "unreachable" gets the transport's diagnosis (policy, TLS, handshake, proxy, ...).

        Its "cannot connect to kas at host:port" too: grpc's own details name the bridge's socket and,
        behind it, nothing a tenant should read (docs/operations.md, Destinations).
        """
        connection = self._connection
        return connection.refine(error) if connection is not None else error

    def _publish(self, snapshot: WorkerSnapshot) -> None:
        for callback in list(self._subscribers):
            try:
                callback(snapshot)
            except Exception:  # noqa: BLE001 - a faulty subscriber must not break the worker
                self._log.exception("snapshot subscriber failed")
