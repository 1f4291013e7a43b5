"""MakeRequest handler: kas's HttpRequest stream → an HTTP request to the API server → HttpResponse frames.

The module offers one local service (advertised by reverse_tunnel through the HandlerTable) and has no
background work of its own; `run()` just waits so that the module lifecycle is uniform.
"""

from __future__ import annotations

import asyncio
import json

import yarl

from agent_proto.flavor import HeaderExtraError, ImpersonationConfig
from agent_runtime.constants import GRPC_TO_HTTP_ERROR_PREFIX, NESTED_IMPERSONATION_ERROR, SAR_CACHE_TTL_S
from agent_runtime.environment import NoMetrics, WorkerMetrics
from agent_runtime.local_rpc import CallEndedError, LocalCall, LocalService, RpcStatusError
from agent_runtime.module_context import ModuleContext
from agent_runtime.modules.kubernetes_api import frames, http_exchange, upgrade
from agent_runtime.modules.kubernetes_api.access_review import AccessReviewer, AccessReviewError
from agent_runtime.modules.kubernetes_api.hygiene import RequestRejectedError, clean_request
from agent_runtime.modules.kubernetes_api.identity import (
    checks_for,
    impersonation_headers,
    policy_refusal,
)
from agent_runtime.modules.kubernetes_api.outgoing import build_request, response_via
from agent_runtime.rpc_status import StatusCode


class ImpersonationForbiddenError(Exception):
    """The agent's ServiceAccount may not impersonate what kas asked for: the client gets a 403."""


class KubernetesApiModule:
    """Serves MakeRequest."""

    def __init__(self, ctx: ModuleContext, metrics: WorkerMetrics) -> None:
        self._ctx = ctx
        self._metrics = metrics
        self._reviewer = AccessReviewer(ctx.kube, ctx.clock, SAR_CACHE_TTL_S)
        self.service = LocalService(
            name=ctx.kas.wire.kubernetes_api_service, methods={"MakeRequest": self.make_request}
        )
        """What this module serves through the tunnel."""

    async def run(self) -> None:
        """Nothing runs in the background; wait until cancelled."""
        await asyncio.Event().wait()

    async def make_request(self, call: LocalCall) -> None:
        """One tunnelled HTTP exchange (§7.3); metrics count body bytes as they pass, requests at the end."""
        started = self._ctx.clock.now()
        worker, metrics = self._ctx.worker_id, self._metrics
        request_frames = frames.RequestFrames(call, lambda n: metrics.bytes_received(worker, n))
        response = frames.ResponseWriter(call, lambda n: metrics.bytes_sent(worker, n))
        code = StatusCode.CANCELLED  # unless it ends by itself (kas cancelled, worker stopping)
        try:
            await self._exchange(request_frames, response)
            code = StatusCode.OK
        except RpcStatusError as e:
            code = e.code
            raise
        except CallEndedError:
            raise  # counted as CANCELLED: kas ended the call, the client went away
        except Exception:
            code = StatusCode.INTERNAL  # what the tunnel makes of an unexpected error
            raise
        finally:
            # A completed exchange counts by its HTTP status; a failed one by its gRPC code.
            ok = code is StatusCode.OK and response.status_code is not None
            result = str(response.status_code) if ok else code.name
            metrics.tunnel_request_done(worker, "MakeRequest", result, self._ctx.clock.now() - started)

    async def _exchange(self, request_frames: frames.RequestFrames, call: frames.ResponseWriter) -> None:
        first = await request_frames.next()
        if first is None:
            raise RpcStatusError(StatusCode.INVALID_ARGUMENT, "empty HttpRequest stream")
        header = first.header
        imp = self._impersonation(header)
        try:
            clean = clean_request(header.request)
        except RequestRejectedError as e:
            self._ctx.logger.warning("refused a request from kas: %s", e)
            await send_status(call, 400, "BadRequest", f"refused by the agent: {e}")
            return
        try:
            identity = await self._identity_headers(imp, clean.impersonates)
        except ImpersonationForbiddenError as e:
            await send_status(call, 403, "ImpersonationForbiddenError", str(e))
            return
        kube = self._ctx.kube
        req = build_request(
            clean,
            header.request.query,
            base_path=yarl.URL(kube.base_url).path,
            content_length=header.content_length if header.HasField("content_length") else None,
            identity_headers=identity,
            auth_headers=kube.auth_headers(),
        )
        if req.upgrade:
            await upgrade.exchange(call, request_frames, kube, req)
        else:
            await http_exchange.exchange(call, request_frames, kube, self._ctx.api_pool.session, req)

    def _impersonation(self, header: frames.HttpRequest.Header) -> ImpersonationConfig | None:
        if not header.HasField("extra"):
            return None
        try:
            imp = self._ctx.kas.wire.unpack_header_extra(header.extra)
        except HeaderExtraError as e:
            raise RpcStatusError(StatusCode.INVALID_ARGUMENT, f"HeaderExtra: {e}") from e
        return None if imp.is_empty() else imp

    async def _identity_headers(
        self, imp: ImpersonationConfig | None, client_impersonates: bool
    ) -> list[tuple[str, str]]:
        """Impersonate-* headers to send (§7.5 plus the per-agent ServiceAccount)."""
        sa = self._ctx.identity
        nested = RpcStatusError(
            StatusCode.UNAVAILABLE, GRPC_TO_HTTP_ERROR_PREFIX + NESTED_IMPERSONATION_ERROR
        )
        if sa is None:
            if imp is not None and client_impersonates:
                raise nested
            if imp is None:
                return []
            self._check_policy(imp)
            return impersonation_headers(imp)
        if client_impersonates:
            raise nested
        if imp is None:
            # The name alone: the API server adds a ServiceAccount's groups itself, and a name without
            # groups is what constrained impersonation (KEP-5284, `impersonate:serviceaccount`) can grant,
            # so the operator's own role can be confined to the tenants' namespaces.
            return impersonation_headers(ImpersonationConfig(username=sa.username))
        self._check_policy(imp)
        for check in checks_for(imp):
            try:
                verdict = await self._reviewer.check(sa, check)
            except AccessReviewError as e:
                raise RpcStatusError(StatusCode.UNAVAILABLE, f"{GRPC_TO_HTTP_ERROR_PREFIX}{e}") from e
            if not verdict.allowed:
                why = f": {verdict.reason}" if verdict.reason else ""
                who = f'agent ServiceAccount "{sa.namespace}/{sa.name}"'
                raise ImpersonationForbiddenError(f"{who} may not impersonate {check.describe()}{why}")
        return impersonation_headers(imp)

    def _check_policy(self, imp: ImpersonationConfig) -> None:
        refusal = policy_refusal(imp, self._ctx.policy.impersonation)
        if refusal is not None:
            raise ImpersonationForbiddenError(refusal)


async def send_status(call: frames.ResponseWriter, code: int, reason: str, message: str) -> None:
    """Answer the client with a Kubernetes `Status` of our own, without asking the API server."""
    body = json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "details": {},
            "code": code,
        }
    ).encode()
    header = {
        "Content-Type": ["application/json"],
        "Content-Length": [str(len(body))],
        "Via": [response_via(1, 1)],
    }
    await call.header(code, f"{code} {reason}", header)
    await call.data(body)
    await call.trailer()


def build(ctx: ModuleContext, metrics: WorkerMetrics | None = None) -> KubernetesApiModule:
    """Factory used by the composition root; `metrics` counts requests and body bytes."""
    return KubernetesApiModule(ctx, metrics if metrics is not None else NoMetrics())
