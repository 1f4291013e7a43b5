"""Register heartbeat (§6.2): refresh the cluster version, call Register, wait 5 min; back off on errors.

Register does not use wait-for-ready (§3.5): while kas is unreachable it fails fast and backs off.
"""

from __future__ import annotations

import asyncio

from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2
from agent_proto.gitlab.agent.entity import entity_pb2
from agent_runtime.backoff import REGISTER_BACKOFF, Backoff
from agent_runtime.constants import REGISTER_INTERVAL_S
from agent_runtime.environment import NoMetrics, WorkerMetrics
from agent_runtime.errors import CREDENTIAL_REASONS, classify_rpc_error
from agent_runtime.grpc_calls import GZIP
from agent_runtime.module_context import ModuleContext
from agent_runtime.rpc_status import RpcError, StatusCode
from agent_runtime.worker_state import Component

_RPC = "Register"
_REGISTER_TIMEOUT_S = 60.0
"""Our bound on one Register call, so a silent network cannot stall the heartbeat."""


class RegistrarModule:
    """Runs the heartbeat until cancelled."""

    def __init__(self, ctx: ModuleContext, metrics: WorkerMetrics) -> None:
        self._ctx = ctx
        self._metrics = metrics
        self._backoff = Backoff(REGISTER_BACKOFF, clock=ctx.clock)
        self._kubernetes_version = entity_pb2.KubernetesVersion()

    async def run(self) -> None:
        """Register forever."""
        while True:
            await self._ctx.auth_gate.wait_open()
            wake = self._ctx.reconnect.event()
            await self._refresh_kubernetes_version()
            if await self._register_once():
                try:
                    async with asyncio.timeout(REGISTER_INTERVAL_S):
                        await wake.wait()  # a new token registers again at once
                except TimeoutError:
                    pass
            else:
                await self._backoff.sleep(wake=wake)

    async def _register_once(self) -> bool:
        code = "CANCELLED"  # unless the call ends by itself: the worker is stopping
        try:
            code = await self._call()
            return code == "OK"
        finally:
            self._metrics.connection_attempt(self._ctx.worker_id, _RPC, code)

    async def _call(self) -> str:
        """One Register call; returns the gRPC code of its outcome."""
        ctx = self._ctx
        request = rpc_pb2.RegisterRequest(
            agent_meta=ctx.agent.meta(self._kubernetes_version), pod_id=ctx.agent.pod_id
        )
        try:
            method = ctx.kas.channel.unary_unary(ctx.kas.wire.register_path)
            call = method(
                request.SerializeToString(),
                metadata=ctx.kas.call_metadata(),
                gzip=GZIP,
                timeout=_REGISTER_TIMEOUT_S,
            )
            await call
            ctx.kas.note_response_metadata(await call.initial_metadata())
        except RpcError as e:
            self._report_error(e.code(), e.details())
            return e.code().name
        ctx.auth_gate.report_accepted()
        ctx.state.registered(True, self._kubernetes_version.git_version or None)
        ctx.state.ok(Component.REGISTRAR)
        return "OK"

    def _report_error(self, code: StatusCode, details: str | None) -> None:
        ctx = self._ctx
        ctx.state.registered(False, None)
        if code is StatusCode.UNIMPLEMENTED:
            # kas < 16.5 has no Register and registers us from GetConfiguration instead (§6.2).
            ctx.state.not_applicable(Component.REGISTRAR)
            return
        error = classify_rpc_error(_RPC, code, details)
        if error.reason in CREDENTIAL_REASONS:
            ctx.auth_gate.report_rejected()
        ctx.logger.warning(
            "Failed to register agent pod. Please make sure the agent version matches the server version: %s",
            error.message,
        )
        ctx.state.failed(Component.REGISTRAR, error)

    async def _refresh_kubernetes_version(self) -> None:
        # One read of /version serves every worker of the process (KubeAccess caches it); on failure
        # the last known version is sent, as agentk does.
        version = await self._ctx.kube.server_version()
        if version is not None:
            self._kubernetes_version = entity_pb2.KubernetesVersion(
                major=version["major"],
                minor=version["minor"],
                git_version=version["gitVersion"],
                platform=version["platform"],
            )


def build(ctx: ModuleContext, metrics: WorkerMetrics | None = None) -> RegistrarModule:
    """Factory used by the composition root; `metrics` counts Register calls by outcome."""
    return RegistrarModule(ctx, metrics if metrics is not None else NoMetrics())
