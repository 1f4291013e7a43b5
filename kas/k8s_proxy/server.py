"""The Kubernetes API proxy's HTTPS listener (GitLab's port 8154, `agent.kubernetes_api.listen`).

Each request is admitted (prefix, credentials, agent, ci_access/user_access), then turned into one
`KubernetesApi.MakeRequest` call through the agent's tunnel, streamed both ways (§7.2, §10).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from agent_proto.flavor import ImpersonationConfig, WireFlavor
from kas.k8s_proxy import frames
from kas.k8s_proxy.cors import OriginRefusedError, cors_headers, is_preflight, preflight_headers
from kas.k8s_proxy.errors import NO_TUNNEL_MESSAGE, ProxyError, status_body, text_body, wants_text
from kas.k8s_proxy.exchange import Exchange
from kas.k8s_proxy.gate import Admission, Gate
from kas.k8s_proxy.headers import request_header, request_query
from kas.k8s_proxy.settings import ProxyDependencies, ProxySettings
from kas.tunnel_call import NoTunnelError, TunnelCall

log = logging.getLogger(__name__)

ROUTING_METADATA_KEY: Final = "kas-hop-routing-agent-id"
IDLE_TIMEOUT: Final = 60.0
"""Keep-alive connections without a request are closed after this long (GitLab: IdleTimeout 1 min)."""


class KubernetesApiProxy:
    """The proxy server. `start()` binds, `stop()` drains; or `run()` for both, until cancelled."""

    def __init__(
        self,
        settings: ProxySettings,
        deps: ProxyDependencies,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        shutdown_grace: float = 5.0,
    ) -> None:
        self._settings = settings
        self._deps = deps
        self._gate = Gate(settings, deps)
        self._host, self._port = host, port
        self._ssl = ssl_context
        self._shutdown_grace = shutdown_grace
        self._runner: web.ServerRunner | None = None
        self._bound_port = 0

    @property
    def port(self) -> int:
        """The bound port (after `start()`)."""
        return self._bound_port

    @property
    def url(self) -> str:
        """Base URL clients use, prefix included, e.g. https://127.0.0.1:8154/k8s-proxy/."""
        scheme = "https" if self._ssl is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._bound_port}{self._settings.prefix}"

    async def start(self) -> None:
        server = web.Server(
            self._handle, handler_cancellation=True, access_log=None, keepalive_timeout=IDLE_TIMEOUT
        )
        runner = web.ServerRunner(server, shutdown_timeout=self._shutdown_grace)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        log.info("Kubernetes API proxy listening", extra={"url": self.url})

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def run(self) -> None:
        """Serve until cancelled, then drain (in-flight requests get `shutdown_grace` seconds)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    # -- request handling --------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            cors = cors_headers(request.headers, self._settings.allowed_origins)
        except OriginRefusedError:
            return web.Response(status=403)
        if is_preflight(request.method, request.headers):
            return web.Response(status=200, headers=preflight_headers(request.headers, cors))
        try:
            admission = await self._gate.admit(request.rel_url.path, request.headers)
            response = await self._proxy(request, admission, cors)
        except ProxyError as err:
            log.info("k8s proxy refused a request: %s %s", err.code, err.message)
            return self._error_response(err, cors, request)
        log.debug(
            "k8s proxy request done",
            extra={"agent_id": admission.agent.id, "method": request.method, "status": response.status},
        )
        return response

    async def _proxy(
        self, request: web.BaseRequest, admission: Admission, cors: CIMultiDict[str]
    ) -> web.StreamResponse:
        names = self._settings.names
        upgrade = bool(request.headers.get("Upgrade"))
        content_length = _content_length(request)
        head = frames.RequestHead(
            method=request.method,
            url_path=admission.url_path,
            header=request_header(request.headers.items(), self._settings.via),
            query=request_query(request.rel_url.query.items()),
            content_length=content_length,
            impersonation=self._wire_impersonation(admission.grant.impersonation),
        )
        call = await self._open_call(admission.agent.id)
        exchange = Exchange(
            request,
            call,
            self._settings,
            cors,
            header_frame=frames.header_frame(head, names),
            upgrade=upgrade,
            content_length=content_length,
        )
        return await exchange.run()

    async def _open_call(self, agent_id: int) -> TunnelCall:
        metadata = {ROUTING_METADATA_KEY: [str(agent_id)]}
        try:
            return await self._deps.router.open_call(
                agent_id, self._settings.names.make_request_path, metadata, self._settings.routing_timeout
            )
        except NoTunnelError:
            raise ProxyError.bad_gateway(NO_TUNNEL_MESSAGE) from None
        except Exception as err:  # noqa: BLE001 (any routing failure is a bad gateway for the client)
            log.warning("opening a tunnel call to agent %d failed: %r", agent_id, err)
            raise ProxyError.bad_gateway(
                f"HTTP->gRPC: failed to open the call: {type(err).__name__}"
            ) from None

    def _error_response(
        self, err: ProxyError, cors: CIMultiDict[str], request: web.BaseRequest
    ) -> web.Response:
        headers = CIMultiDict(cors)
        headers.update(err.headers)
        path = request.rel_url.path
        prefix = self._settings.prefix
        api_path = path[len(prefix) - 1 :] if path.startswith(prefix) else path
        if wants_text(request.headers.get("Accept", ""), api_path):
            body, content_type = text_body(err.message), "text/plain"
        else:
            body, content_type = status_body(err.code, err.message), "application/json"
        return web.Response(status=err.code, body=body, content_type=content_type, headers=headers)

    def _wire_impersonation(self, imp: ImpersonationConfig | None) -> ImpersonationConfig | None:
        # The fork's ImpersonationConfig has no `extra` (PROTOCOL.md §7.5): drop it rather than fail.
        if imp is not None and self._settings.flavor is WireFlavor.PLURAL and imp.extra:
            return dataclasses.replace(imp, extra={})
        return imp


def _content_length(request: web.BaseRequest) -> int:
    """-1 for a chunked body, else the declared length (no Content-Length = no body), as Go reports it."""
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return -1
    return request.content_length or 0
