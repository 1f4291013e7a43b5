"""Watches the agent's configuration: one GetConfiguration server stream, reopened forever (§6.1).

- request: last applied commit, AgentMeta with an empty kubernetes_version, skip_register=true, gzip,
  wait-for-ready;
- every response is validated (commit_id non-empty) or the call fails with INVALID_ARGUMENT;
- the first agent id is pinned; a configuration with another id is skipped and the commit not advanced;
- clean end → reopen at once; error → backoff 10 s → 5 min (x2, jitter 1.0, reset after 10 min);
- accepted configurations are published as the latest value.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2
from agent_runtime.backoff import CONFIG_BACKOFF, Backoff
from agent_runtime.constants import TUNNEL_ESTABLISHED_AFTER_S
from agent_runtime.environment import NoMetrics, WorkerMetrics
from agent_runtime.errors import CREDENTIAL_REASONS, classify_rpc_error
from agent_runtime.grpc_calls import GZIP, EstablishedProbe, wait_either
from agent_runtime.module_context import ModuleContext
from agent_runtime.rpc_status import EOF, RpcError, StatusCode
from agent_runtime.spec import ErrorReason, WorkerError
from agent_runtime.worker_state import Component

_RPC = "GetConfiguration"


class InvalidResponseError(Exception):
    """kas sent a response that fails validation (agentk: INVALID_ARGUMENT "invalid server response")."""


class ConfigRejectedError(Exception):
    """The pre-processor refused a configuration; it is skipped (§6.1 step 2)."""


@dataclass
class _Progress:
    commit: str = ""
    agent_id: int | None = None


class ConfigurationModule:
    """Runs the configuration watch until cancelled."""

    def __init__(self, ctx: ModuleContext, metrics: WorkerMetrics) -> None:
        self._ctx = ctx
        self._metrics = metrics
        self._progress = _Progress()
        self._backoff = Backoff(CONFIG_BACKOFF, clock=ctx.clock)

    async def run(self) -> None:
        """Open, read, reopen; never returns normally."""
        while True:
            await self._ctx.auth_gate.wait_open()
            reconnect = self._ctx.reconnect.event()
            stream = asyncio.create_task(self._one_stream(), name=f"{self._ctx.worker_id}/get-configuration")
            try:
                if await wait_either(stream, reconnect):
                    continue  # new token: the finally cancels the old stream, reopen at once
                failed = stream.result()
            finally:
                stream.cancel()
                await asyncio.gather(stream, return_exceptions=True)
            if failed:
                await self._backoff.sleep(wake=self._ctx.reconnect.event())

    async def _one_stream(self) -> bool:
        """One GetConfiguration call; returns True when it failed (back off), False on a clean end."""
        code = "CANCELLED"  # unless the call ends by itself: a new token or the worker stopping
        try:
            failed, code = await self._call()
            return failed
        finally:
            self._metrics.connection_attempt(self._ctx.worker_id, _RPC, code)

    async def _call(self) -> tuple[bool, str]:
        """The call; returns (failed, gRPC code of its outcome)."""
        ctx = self._ctx
        request = rpc_pb2.ConfigurationRequest(
            commit_id=self._progress.commit, agent_meta=ctx.agent.meta(), skip_register=True
        )
        method = ctx.kas.channel.unary_stream(ctx.kas.wire.get_configuration_path)
        call = method(
            request.SerializeToString(),
            metadata=ctx.kas.call_metadata(),
            wait_for_ready=True,
            gzip=GZIP,
        )
        probe = EstablishedProbe(TUNNEL_ESTABLISHED_AFTER_S, lambda: ctx.state.ok(Component.CONFIGURATION))
        try:
            ctx.kas.note_response_metadata(await call.initial_metadata())
            # Only now: with wait_for_ready, a call waits for the channel as long as kas is unreachable,
            # and surviving a moment while it waits proves nothing.
            probe.start()
            while True:
                raw = await call.read()
                if raw is EOF:
                    return False, "OK"
                assert isinstance(raw, bytes)
                self._handle(self._parse(raw))
        except RpcError as e:
            self._report_rpc_error(e.code(), e.details())
            return True, e.code().name
        except InvalidResponseError as e:
            call.cancel()
            ctx.state.failed(
                Component.CONFIGURATION,
                WorkerError(
                    ErrorReason.PROTOCOL_ERROR, f"{_RPC}: INVALID_ARGUMENT: invalid server response: {e}"
                ),
            )
            return True, StatusCode.INVALID_ARGUMENT.name
        finally:
            probe.stop()

    def _report_rpc_error(self, code: StatusCode, details: str | None) -> None:
        ctx = self._ctx
        if code is StatusCode.UNIMPLEMENTED:
            # The Plural fork compiles the configuration server out (§6.1): nothing to show as an error.
            ctx.logger.info("kas does not serve GetConfiguration; retrying with backoff")
            ctx.state.not_applicable(Component.CONFIGURATION)
            return
        error = classify_rpc_error(_RPC, code, details)
        if error.reason in CREDENTIAL_REASONS:
            ctx.auth_gate.report_rejected()
        ctx.logger.warning("GetConfiguration failed: %s", error.message)
        ctx.state.failed(Component.CONFIGURATION, error)

    @staticmethod
    def _parse(raw: bytes) -> rpc_pb2.ConfigurationResponse:
        try:
            response = rpc_pb2.ConfigurationResponse.FromString(raw)
        except DecodeError as e:
            raise InvalidResponseError(f"cannot decode ConfigurationResponse: {e}") from e
        if not response.commit_id:
            raise InvalidResponseError("ConfigurationResponse.commit_id must not be empty")
        return response

    def _handle(self, response: rpc_pb2.ConfigurationResponse) -> None:
        ctx = self._ctx
        try:
            agent_id = self._preprocess(response)
        except ConfigRejectedError as e:
            ctx.logger.warning("Failed to preprocess configuration: %s", e)
            ctx.state.failed(
                Component.CONFIGURATION,
                WorkerError(ErrorReason.CONFIGURATION_REJECTED, f"configuration {response.commit_id}: {e}"),
            )
            return
        self._progress.commit = response.commit_id
        ctx.auth_gate.report_accepted()
        ctx.configuration.set(response.configuration)
        ctx.state.configuration_applied(agent_id, response.commit_id)
        ctx.logger.info("configuration applied", extra={"agent_id": agent_id, "commit": response.commit_id})

    def _preprocess(self, response: rpc_pb2.ConfigurationResponse) -> int:
        config = response.configuration
        agent_id = config.agent_id
        if self._progress.agent_id is not None and agent_id != self._progress.agent_id:
            raise ConfigRejectedError(
                f"agent id {agent_id}: value is already set to a different value ({self._progress.agent_id})"
            )
        if config.gitlab_external_url:
            try:
                urllib.parse.urlsplit(config.gitlab_external_url)
            except ValueError as e:
                raise ConfigRejectedError(f"gitlab_external_url: {e}") from e
        self._progress.agent_id = agent_id
        return agent_id


def build(ctx: ModuleContext, metrics: WorkerMetrics | None = None) -> ConfigurationModule:
    """Factory used by the composition root; `metrics` counts attempts by outcome."""
    return ConfigurationModule(ctx, metrics if metrics is not None else NoMetrics())
