"""The GitLabFlux/ReconcileProjects stream (PROTOCOL.md §17.2): the project set in, pushed projects out.

Opened with the latest non-empty project set; reopened at once when the set changes (the old call is
cancelled first) or the token changes; a clean end reopens at once (unless it came sooner than
`min_stream_life_s`), anything else backs off 10 s → 5 min. UNIMPLEMENTED (the Plural fork, or a kas
without the Flux module) is a state, not an error: no crash, the same backoff. Every response is
untrusted: it must decode, carry a well-formed project path, and name a project the agent asked for;
anything else is counted and dropped (a response that does not decode ends the call, as agentk's
validating client does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from google.protobuf.message import DecodeError

from agent_proto.flavor import WireFlavor
from agent_proto.gitlab.agent.flux.rpc import rpc_pb2
from agent_runtime.backoff import Backoff
from agent_runtime.environment import WorkerMetrics
from agent_runtime.errors import CREDENTIAL_REASONS, classify_rpc_error
from agent_runtime.flux_settings import FluxTuning
from agent_runtime.grpc_calls import GZIP
from agent_runtime.latest import LatestValue
from agent_runtime.module_context import ModuleContext
from agent_runtime.rpc_status import EOF, RpcError, StatusCode
from agent_runtime.spec import FluxState

RPC: Final = "ReconcileProjects"
_SERVICE: Final = rpc_pb2.DESCRIPTOR.services_by_name["GitLabFlux"]

Projects = frozenset[str]
OnProject = Callable[[str], None]
OnState = Callable[[FluxState, str], None]


def method_path(flavor: WireFlavor) -> str:
    """The method's path in the wire flavour (the Plural fork would prefix `plural.`; it has no server)."""
    name: str = _SERVICE.full_name
    service = flavor.value + name.removeprefix(WireFlavor.GITLAB.value)
    return f"/{service}/{RPC}"


class ProjectStream:
    """Keeps one ReconcileProjects call open for the latest project set; `run()` until cancelled."""

    def __init__(
        self,
        ctx: ModuleContext,
        tuning: FluxTuning,
        metrics: WorkerMetrics,
        projects: LatestValue[Projects],
        on_project: OnProject,
        on_state: OnState,
    ) -> None:
        self._ctx = ctx
        self._tuning = tuning
        self._metrics = metrics
        self._projects = projects
        self._on_project = on_project
        self._on_state = on_state
        self._backoff = Backoff(tuning.stream_backoff, clock=ctx.clock)
        self.opened = 0
        """How many calls were opened (tests and logs)."""

    async def run(self) -> None:
        """Open, read, reopen on change; never returns normally."""
        current, version = self._projects.value, self._projects.version
        while True:
            if not current:
                current, version = await self._projects.wait_newer(version)
                continue
            await self._ctx.auth_gate.wait_open()
            reconnect = self._ctx.reconnect.event()
            call = asyncio.create_task(self._one_call(current), name=f"{self._ctx.worker_id}/flux-stream")
            change = asyncio.create_task(
                self._changed(current, version), name=f"{self._ctx.worker_id}/flux-set"
            )
            token = asyncio.create_task(reconnect.wait(), name=f"{self._ctx.worker_id}/flux-token")
            try:
                await asyncio.wait({call, change, token}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (call, change, token):
                    task.cancel()
                results = await asyncio.gather(call, change, token, return_exceptions=True)
            if change.done() and not change.cancelled() and isinstance(results[1], tuple):
                current, version = results[1]
                continue  # a new set: reopen at once
            if token.done() and not token.cancelled():
                continue  # a new token: reopen at once
            if call.done() and not call.cancelled() and results[0] is True:
                await self._backoff.sleep(wake=self._ctx.reconnect.event())

    async def _changed(self, current: Projects, version: int) -> tuple[Projects, int]:
        """Wait until the set differs from `current` (a new version with equal contents is no change)."""
        while True:
            value, version = await self._projects.wait_newer(version)
            if value != current:
                return value, version

    async def _one_call(self, projects: Projects) -> bool:
        """One call; True when it failed (back off)."""
        ctx = self._ctx
        request = rpc_pb2.ReconcileProjectsRequest(project=[rpc_pb2.Project(id=p) for p in sorted(projects)])
        method = ctx.kas.channel.unary_stream(method_path(ctx.kas.wire.flavor))
        self.opened += 1
        opened_at = ctx.clock.now()
        call = method(
            request.SerializeToString(),
            metadata=ctx.kas.call_metadata(),
            wait_for_ready=True,
            gzip=GZIP,
        )
        self._on_state(FluxState.WATCHING, f"stream open for {len(projects)} project(s)")
        code = "CANCELLED"
        try:
            while True:
                raw = await call.read()
                if raw is EOF:
                    code = "OK"
                    lived = ctx.clock.now() - opened_at
                    return lived < self._tuning.min_stream_life_s
                assert isinstance(raw, bytes)
                self._handle(raw)
                self._backoff.reset()
        except RpcError as e:
            code = e.code().name
            self._report(e.code(), e.details())
            return True
        except DecodeError as e:
            code = StatusCode.INVALID_ARGUMENT.name
            self._on_state(FluxState.STREAM_FAILED, f"{RPC}: kas sent a response that does not decode: {e}")
            return True
        finally:
            call.cancel()
            self._metrics.connection_attempt(ctx.worker_id, RPC, code)

    def _handle(self, raw: bytes) -> None:
        response = rpc_pb2.ReconcileProjectsResponse.FromString(raw)
        project = response.project.id if response.HasField("project") else ""
        self._on_project(project)

    def _report(self, code: StatusCode, details: str | None) -> None:
        ctx = self._ctx
        if code is StatusCode.UNIMPLEMENTED:
            ctx.logger.info("kas does not serve %s; retrying with backoff", RPC)
            self._on_state(
                FluxState.NOT_SERVED,
                "kas does not serve GitLabFlux/ReconcileProjects (the Plural fork, or a kas without the "
                "Flux module): pushes do not trigger Flux; Flux's own spec.interval still applies; "
                "retried with backoff",
            )
            return
        error = classify_rpc_error(RPC, code, details)
        if error.reason in CREDENTIAL_REASONS:
            ctx.auth_gate.report_rejected()
        ctx.logger.warning("Failed to receive project to reconcile: %s", error.message)
        text = f"{error.message}; {error.hint}" if error.hint else error.message
        self._on_state(FluxState.STREAM_FAILED, text)
