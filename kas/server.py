"""KasServer: the reference kas's composition root (agent listener, private API, API listener for Rails,
git push events, observability, proxy)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

from agent_proto.flavor import wire_names
from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as config_rpc
from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2 as registrar_rpc
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_proto.gitlab.agent.flux.rpc import rpc_pb2 as flux_rpc
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from kas import jwt
from kas.agent_configuration import AgentConfigurationServer, ConfigStore
from kas.agent_server.connections import ConnectionTable
from kas.agent_server.front import FrontListener, agent_ssl_context
from kas.agent_server.grpc_server import build_agent_server, counted, server_options
from kas.agent_streams import StreamLog
from kas.agent_tracker import AgentRegistrarServer, AgentTracker, RedisAgentTracker
from kas.agents import AgentDirectory, AgentInfo
from kas.agents_secret import AgentsSecretWatcher
from kas.api_server import build_api_server
from kas.auth import AgentAuthInterceptor
from kas.config import KasConfig, ListenConfig
from kas.flux import RECONCILE_PROJECTS_PATH, FluxServer
from kas.git_push import GitPushBus
from kas.metrics import KasMetrics
from kas.observability import ObservabilityServer
from kas.rate_limit import MemoryTokenLimiter, RedisTokenLimiter, TokenRateLimiter
from kas.tasks import TaskSupervisor
from kas.tunnels.connect import ReverseTunnelServer
from kas.tunnels.private_api import PrivateApiGateway
from kas.tunnels.registry import TunnelRegistry
from kas.tunnels.router import KasRouter
from kas.tunnels.tunnel_index import RedisTunnelIndex

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"listen address must be host:port, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an empty host means all interfaces


def _server_ssl(listen: ListenConfig) -> ssl.SSLContext | None:
    if listen.certificate_file is None or listen.key_file is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(listen.certificate_file), str(listen.key_file))
    return context


class KasServer:
    """Start with `await start()` (or `async with`), stop with `await stop()`."""

    def __init__(self, config: KasConfig, *, directory: AgentDirectory | None = None) -> None:
        self.config = config
        self.directory = directory or AgentDirectory(config.agents.file, config.agents.reload_period)
        self.metrics = KasMetrics()
        self.names = wire_names(config.wire_flavor)
        listen = config.agent.listen
        self.connections = ConnectionTable(listen.age_context, "grpcs" if listen.tls else "grpc")
        self._redis: aioredis.Redis | None = None
        self._index: RedisTunnelIndex | None = None
        self.registry = TunnelRegistry(self._first_tunnel, self._last_tunnel)
        self.config_store = ConfigStore(
            config.agent_configuration.directory,
            config.agent_configuration.max_configuration_file_size,
            config.agent_configuration.poll_period,
        )
        self.tracker: AgentTracker = AgentTracker(config.agent_tracker.register_ttl)
        self.stream_log = StreamLog()
        """The agents' GetConfiguration streams, live and ended (/api/agent_streams)."""
        self.router: KasRouter = KasRouter(self.registry, self.metrics)
        self._tasks = TaskSupervisor("kas")
        self._agent_server: grpc.aio.Server | None = None
        self._private_server: grpc.aio.Server | None = None
        self._front: FrontListener | None = None
        self._observability: ObservabilityServer | None = None
        self._config_server: AgentConfigurationServer | None = None
        self._flux_server: FluxServer | None = None
        self._api_server: grpc.aio.Server | None = None
        self.bus = GitPushBus(on_invalid=self.metrics.git_push_events_invalid.inc)
        self._proxy: Any = None
        self._agents_secret: AgentsSecretWatcher | None = None
        self.agent_host, self.agent_port = "", 0
        self.private_api_url: str | None = None
        self.api_address: str | None = None
        """host:port of the API listener (Rails' side), when kas.yaml has `api`."""
        self.proxy_url: str | None = None
        self._running = False

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def agent_address(self) -> str:
        return f"{self.agent_host}:{self.agent_port}"

    def agent_url(self, scheme: str = "grpc") -> str:
        """grpc://, grpcs://, ws:// or wss:// URL of the agent listener."""
        return f"{scheme}://{self.agent_address}"

    @property
    def observability_url(self) -> str:
        assert self._observability is not None
        host = split_address(self.config.observability.listen.address)[0]
        return f"http://{host}:{self._observability.port}"

    # -- presence callbacks for the Redis tunnel index ---------------------------------------------

    def _first_tunnel(self, agent_id: int) -> None:
        if self._index is not None:
            self._index.on_first_tunnel(agent_id)

    def _last_tunnel(self, agent_id: int) -> None:
        if self._index is not None:
            self._index.on_last_tunnel(agent_id)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> KasServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self._running = True
        log.info(
            "kas started",
            extra={
                "agent_address": self.agent_address,
                "private_api": self.private_api_url,
                "api_address": self.api_address,
            },
        )

    async def _start(self) -> None:
        config = self.config
        if config.agents.secret is not None:  # agents first: nothing is served without them
            self._agents_secret = AgentsSecretWatcher(config.agents.secret, self.directory)
            await self._agents_secret.start()
        if config.redis is not None:
            self._redis = aioredis.from_url(config.redis.url)
            self.tracker = RedisAgentTracker(
                self._redis,
                config.redis.key_prefix,
                config.agent_tracker.register_ttl,
                config.redis.conn_info_refresh,
            )
            self.bus = GitPushBus(
                self._redis, config.redis.events_channel, self.metrics.git_push_events_invalid.inc
            )
        await self.bus.start()  # subscribed before any listener accepts a stream or a push
        self.bus.subscribe(self.config_store.on_git_push)
        await self._start_private_api()
        await self._start_agent_listener()
        await self._start_api()
        await self._start_observability()
        await self._start_proxy()
        if config.agents.file is not None:
            self._tasks.spawn("agents-reload", self.directory.watch())
        if self._agents_secret is not None:
            self._tasks.spawn("agents-secret-watch", self._agents_secret.run())
        self._tasks.spawn("config-poll", self.config_store.run())
        self._tasks.spawn("git-push-events", self.bus.run())
        self._tasks.spawn("agent-tracker", self.tracker.run())
        if self._index is not None:
            self._tasks.spawn("tunnel-index", self._index.run())

    async def _start_private_api(self) -> None:
        config = self.config
        if config.private_api is None or config.redis is None or self._redis is None:
            return
        secret_file = Path(config.private_api.authentication_secret_file)
        secret = jwt.load_secret(await asyncio.to_thread(secret_file.read_bytes))
        gateway = PrivateApiGateway(self.registry, secret)
        server = grpc.aio.server(options=server_options(config.agent))
        server.add_generic_rpc_handlers((gateway.generic_handler(),))
        host, port = split_address(config.private_api.listen.address)
        bound = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        self._private_server = server
        self.private_api_url = config.private_api.own_url or f"grpc://{host}:{bound}"
        redis_config = config.redis
        self._index = RedisTunnelIndex(
            self._redis,
            prefix=redis_config.key_prefix,
            own_url=self.private_api_url,
            ttl=redis_config.conn_info_ttl,
            refresh=redis_config.conn_info_refresh,
            unregister_delay=redis_config.tunnel_unregister_delay,
        )
        self.router = KasRouter(
            self.registry,
            self.metrics,
            index=self._index,
            secret=secret,
            poll_period=redis_config.poll_period,
        )

    async def _start_agent_listener(self) -> None:
        config = self.config
        names = self.names
        tunnels = ReverseTunnelServer(self.directory, self.registry, self.connections)
        self._config_server = AgentConfigurationServer(
            self.directory,
            self.config_store,
            self.tracker,
            self.connections,
            config.gitlab_external_url,
            stream_log=self.stream_log,
        )
        registrar = AgentRegistrarServer(self.directory, self.tracker)
        m = self.metrics
        self._flux_server = FluxServer(self.directory, self.bus, self.connections, m)
        routes: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            names.connect_path: grpc.stream_stream_rpc_method_handler(
                counted(m, names.connect_path, tunnels.connect, announce_version=False),
                response_serializer=tunnel_rpc.ConnectResponse.SerializeToString,
            ),
            names.get_configuration_path: grpc.unary_stream_rpc_method_handler(
                counted(m, names.get_configuration_path, self._config_server.get_configuration),
                response_serializer=config_rpc.ConfigurationResponse.SerializeToString,
            ),
            names.register_path: grpc.unary_unary_rpc_method_handler(
                counted(m, names.register_path, registrar.register),
                response_serializer=registrar_rpc.RegisterResponse.SerializeToString,
            ),
            # GitLab's path whatever the wire flavour: the Plural fork has no Flux module (§17).
            RECONCILE_PROJECTS_PATH: grpc.unary_stream_rpc_method_handler(
                counted(m, RECONCILE_PROJECTS_PATH, self._flux_server.reconcile_projects),
                response_serializer=flux_rpc.ReconcileProjectsResponse.SerializeToString,
            ),
        }
        interceptor = AgentAuthInterceptor(self.directory, self._rate_limiter(), m.rate_limited.inc)
        server = build_agent_server(config.agent, interceptor, routes)
        listen = config.agent.listen
        if not listen.websocket:
            # gRPC only: the agents talk to grpc.aio directly, with no splice (one hop less per message).
            self.agent_host, self.agent_port = await _serve_directly(server, listen)
            self._agent_server = server
            return
        internal_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._agent_server = server
        context = None
        if listen.certificate_file is not None and listen.key_file is not None:
            context = agent_ssl_context(str(listen.certificate_file), str(listen.key_file))
        self._front = FrontListener(
            table=self.connections,
            internal_port=internal_port,
            ssl_context=context,
        )
        self.agent_host, self.agent_port = await self._front.start(*split_address(listen.address))

    async def _start_api(self) -> None:
        api = self.config.api
        if api is None:
            return
        secret_file = Path(api.authentication_secret_file)
        secret = jwt.load_secret(await asyncio.to_thread(secret_file.read_bytes))
        server = build_api_server(secret, self.bus, self.metrics)
        host, bound = await _serve_directly(server, api.listen)
        self._api_server = server
        self.api_address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"

    def _rate_limiter(self) -> TokenRateLimiter:
        limit = self.config.agent.listen.connections_per_token_per_minute
        if self._redis is not None and self.config.redis is not None:
            return RedisTokenLimiter(self._redis, self.config.redis.key_prefix, limit)
        return MemoryTokenLimiter(limit)

    async def _start_observability(self) -> None:
        self._observability = ObservabilityServer(
            self.metrics, self.tracker, self._readiness, self._update_gauges, streams=self.stream_log
        )
        await self._observability.start(*split_address(self.config.observability.listen.address))

    async def _start_proxy(self) -> None:
        proxy_config = self.config.agent.kubernetes_api
        if proxy_config.listen is None:
            return
        # Imported here: the proxy is optional and lives in its own package.
        from kas.k8s_proxy.access import parse_access_config
        from kas.k8s_proxy.memo import IdentityMemo
        from kas.k8s_proxy.server import KubernetesApiProxy
        from kas.k8s_proxy.settings import ProxyDependencies, ProxySettings
        from kas.version import COMMIT, VERSION

        def configuration(agent: AgentInfo) -> agentcfg_pb2.ConfigurationFile | None:
            return self.config_store.current(agent).file

        settings = ProxySettings(
            flavor=self.names.flavor,
            url_path_prefix=proxy_config.url_path_prefix,
            allowed_origins=frozenset({self.config.gitlab_external_url.rstrip("/")}),
            kas_version=VERSION,
            kas_commit=COMMIT,
            routing_timeout=self.config.agent.tunnel_find_timeout,
        )
        access = IdentityMemo(parse_access_config)
        deps = ProxyDependencies(
            router=self.router,
            find_agent=self.directory.by_id,
            agent_configuration=configuration,
            access=lambda: access(None, self.directory.document()),
        )
        host, port = split_address(proxy_config.listen.address)
        self._proxy = KubernetesApiProxy(
            settings, deps, host=host, port=port, ssl_context=_server_ssl(proxy_config.listen)
        )
        await self._proxy.start()
        self.proxy_url = self._proxy.url

    async def _readiness(self) -> str | None:
        if not self._running:
            return "kas is not running"
        if self._redis is not None:
            try:
                await self._redis.ping()
            except Exception as err:  # noqa: BLE001 - any failure means not ready
                return f"redis: {err}"
            if not self.bus.subscribed:
                return "redis: not subscribed to the git push events channel"
        return None

    async def _update_gauges(self) -> None:
        ready, total, waiting = self.registry.counts()
        self.metrics.tunnels.labels(state="idle").set(ready)
        self.metrics.tunnels.labels(state="active").set(total - ready)
        self.metrics.waiting_requests.set(waiting)
        try:
            self.metrics.connected_agents.set(await self.tracker.count_agents())
        except Exception as err:  # noqa: BLE001 - a scrape must not fail because Redis does
            log.warning("cannot count connected agents: %s", err)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: waiting requests get UNAVAILABLE, idle streams end OK, in-flight calls get `grace`."""
        grace = self.config.agent.listen.listen_grace_period if grace is None else grace
        self._running = False
        if self._front is not None:
            self._front.stop_accepting()
        self.registry.shutdown()
        if self._config_server is not None:
            self._config_server.shutdown()
        if self._flux_server is not None:
            self._flux_server.shutdown()
        if self._proxy is not None:
            await self._proxy.stop()
            self._proxy = None
        servers = [s for s in (self._agent_server, self._private_server, self._api_server) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))
        self._agent_server = self._private_server = self._api_server = None
        if self._front is not None:
            await self._front.close()
            self._front = None
        self.connections.close_all()
        await self._tasks.close(grace=2.0)
        await self.bus.close()
        if self._agents_secret is not None:
            await self._agents_secret.close()
            self._agents_secret = None
        if self._index is not None:
            try:
                await self._index.remove_all()
            except Exception as err:  # noqa: BLE001 - best effort on the way out
                log.warning("could not remove this kas from the tunnel index: %s", err)
        await self.router.close()
        if self._observability is not None:
            await self._observability.stop()
            self._observability = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


async def _serve_directly(server: grpc.aio.Server, listen: ListenConfig) -> tuple[str, int]:
    """Bind a gRPC server itself to its listen address (TLS when configured); returns host and port."""
    host, port = split_address(listen.address)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if listen.certificate_file is not None and listen.key_file is not None:
        credentials = grpc.ssl_server_credentials(
            [(listen.key_file.read_bytes(), listen.certificate_file.read_bytes())]
        )
        bound = server.add_secure_port(target, credentials)
    else:
        bound = server.add_insecure_port(target)
    await server.start()
    return host, bound
