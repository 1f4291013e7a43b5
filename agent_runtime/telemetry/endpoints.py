"""The observability listener (agentk's `:8080`): /metrics, /liveness, /readiness (PROTOCOL.md §12.5)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent_runtime.version import AGENT_PRODUCT

log = logging.getLogger(__name__)

ReadinessProbe = Callable[[], bool]
"""Returns True when the process is ready; called on every /readiness request, so keep it cheap."""

_METRICS_TIMEOUT_S: Final = 15.0
"""agentk's /metrics handler timeout (§12.5)."""


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """`:8080` → (None, 8080) (all interfaces); `127.0.0.1:0`; `[::1]:8080`. Raises ValueError."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {address!r} must be host:port or :port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {address!r} has a non-numeric port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {address!r} has a port outside 0-65535")
    return (host or None), port


def build_app(registry: CollectorRegistry, readiness: ReadinessProbe) -> web.Application:
    """The aiohttp application; exposed for tests and for embedding in another server."""

    async def metrics(_: web.Request) -> web.Response:
        # Collection walks every family under the registry lock: keep it off the event loop.
        body = await asyncio.wait_for(asyncio.to_thread(generate_latest, registry), _METRICS_TIMEOUT_S)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def liveness(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def readiness_handler(_: web.Request) -> web.Response:
        try:
            ready = readiness()
        except Exception:
            log.exception("readiness probe raised")
            ready = False
        return web.Response(status=200 if ready else 503)

    @web.middleware
    async def server_header(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["Server"] = AGENT_PRODUCT
        return response

    app = web.Application(middlewares=[server_header])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/liveness", liveness)
    app.router.add_get("/readiness", readiness_handler)
    return app


class ObservabilityServer:
    """Serves the endpoints on one TCP address; `start()`/`stop()`, or `run()` until cancelled."""

    def __init__(self, address: str, registry: CollectorRegistry, readiness: ReadinessProbe) -> None:
        self._host, self._port = parse_listen_address(address)
        self._runner = web.AppRunner(build_app(registry, readiness), access_log=None, shutdown_timeout=1.0)
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); only valid after start()."""
        addresses = self._runner.addresses
        if self._site is None or not addresses:
            raise RuntimeError("observability server is not started")
        port: int = addresses[0][1]
        return port

    async def start(self) -> None:
        """Bind and serve."""
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port)
        await self._site.start()
        log.info("observability endpoint listening", extra={"address": f"{self._host or ''}:{self.port}"})

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        await self._runner.cleanup()
        self._site = None

    async def run(self) -> None:
        """Serve until cancelled."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
