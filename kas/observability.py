"""kas's observability listener: /metrics, /liveness, /readiness, and as JSON /api/connected_agents and
/api/agent_streams (kas/agent_streams.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kas.agent_streams import StreamLog
from kas.agent_tracker import AgentTracker, info_as_json
from kas.metrics import KasMetrics
from kas.version import server_header


class ObservabilityServer:
    def __init__(
        self,
        metrics: KasMetrics,
        tracker: AgentTracker,
        ready: Callable[[], Awaitable[str | None]],
        before_scrape: Callable[[], Awaitable[None]],
        *,
        streams: StreamLog | None = None,
    ) -> None:
        self._metrics = metrics
        self._streams = streams if streams is not None else StreamLog()
        self._tracker = tracker
        self._ready = ready
        self._before_scrape = before_scrape
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._scrape)
        app.router.add_get("/liveness", self._liveness)
        app.router.add_get("/readiness", self._readiness)
        app.router.add_get("/api/connected_agents", self._connected_agents)
        app.router.add_get("/api/agent_streams", self._agent_streams)
        app.on_response_prepare.append(self._server_header)
        return app

    async def _server_header(self, _request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = server_header()

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _scrape(self, _request: web.Request) -> web.Response:
        await self._before_scrape()
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _liveness(self, _request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _readiness(self, _request: web.Request) -> web.Response:
        problem = await self._ready()
        if problem is not None:
            return web.Response(status=503, text=problem + "\n")
        return web.Response(text="")

    async def _connected_agents(self, request: web.Request) -> web.Response:
        agent_id: int | None = None
        if "agent_id" in request.query:
            try:
                agent_id = int(request.query["agent_id"])
            except ValueError:
                return web.json_response({"error": "agent_id must be an integer"}, status=400)
        infos = await self._tracker.connected(agent_id)
        return web.json_response({"agents": [info_as_json(i) for i in infos]})

    async def _agent_streams(self, request: web.Request) -> web.Response:
        agent_id: int | None = None
        if "agent_id" in request.query:
            try:
                agent_id = int(request.query["agent_id"])
            except ValueError:
                return web.json_response({"error": "agent_id must be an integer"}, status=400)
        return web.json_response(self._streams.as_json(agent_id))
