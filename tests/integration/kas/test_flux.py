"""Push events end to end in the reference kas (PROTOCOL.md §17): Rails' GitPushEvent on the API listener
of one replica, Redis pub/sub, GitLabFlux/ReconcileProjects streams on another, over real gRPC."""

from __future__ import annotations

import asyncio
import base64
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import any_pb2

from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_proto.gitlab.agent.event import event_pb2
from agent_proto.gitlab.agent.flux.rpc import rpc_pb2 as flux_rpc
from agent_proto.gitlab.agent.notifications.rpc import rpc_pb2 as notifications_rpc
from kas import jwt
from kas.flux import BUFFER_SIZE, MAX_PROJECTS, RECONCILE_PROJECTS_PATH
from kas.k8s_proxy.certs import self_signed_serving_certificate
from kas.push_client import GIT_PUSH_EVENT_PATH, as_secret
from kas.server import KasServer
from kas.testing import TestAgent, running_kas, send_git_push_event, write_agent_config, write_agents_file
from tests.integration.kas.agentk import auth, get_configuration, read_config
from tests.support.redis_server import RedisServer, find_redis_server
from tests.support.require import require

APP = TestAgent(
    id=11,
    name="app-agent",
    project_path="group/agents",
    token="app-token-" + "a" * 40,
    projects=("group/app",),
)
"""May see group/app (granted) and group/agents (its configuration project)."""
OTHER = TestAgent(id=12, name="other-agent", project_path="group/other-agents", token="other-" + "b" * 40)
"""May see its configuration project only."""
PUBLIC = "group/public"
"""Listed in the agents file's public_projects: every agent may see it."""


def reconcile_projects(channel: grpc.aio.Channel, token: str, *paths: str) -> Any:
    request = flux_rpc.ReconcileProjectsRequest(project=[flux_rpc.Project(id=p) for p in paths])
    stream = channel.unary_stream(
        RECONCILE_PROJECTS_PATH,
        request_serializer=flux_rpc.ReconcileProjectsRequest.SerializeToString,
        response_deserializer=flux_rpc.ReconcileProjectsResponse.FromString,
    )
    return stream(request, metadata=auth(token))


async def next_project(call: Any, within: float = 5.0) -> str:
    response = await asyncio.wait_for(call.read(), within)
    assert isinstance(response, flux_rpc.ReconcileProjectsResponse), response
    return str(response.project.id)


async def wait_subscribed(kas: KasServer, streams: int) -> None:
    """The streams' handlers are subscribed (an event published before that is not theirs to see)."""
    for _ in range(500):
        if len(kas.bus) == streams + 1:  # + the configuration store
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{streams} ReconcileProjects streams did not subscribe on {kas.agent_address}")


@asynccontextmanager
async def two_replicas(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[KasServer, KasServer]]:
    """Replica 1 has the API listener, replica 2 the agents' streams; they share Redis (and channel)."""
    common: dict[str, Any] = {"redis_url": redis_url, "key_prefix": f"kas-test-{secrets.token_hex(4)}"}
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(running_kas(tmp_path / "one", [APP, OTHER], api=True, **common))
        two = await stack.enter_async_context(running_kas(tmp_path / "two", [APP, OTHER], **common))
        for kas in (one, two):
            set_agents(kas, APP, OTHER)
        yield one, two


def set_agents(kas: KasServer, *agents: TestAgent) -> None:
    """Rewrite the agents file (with PUBLIC in public_projects) and load it now."""
    agents_file = kas.config.agents.file
    assert agents_file is not None
    write_agents_file(agents_file, agents, extra={"public_projects": [PUBLIC]})
    kas.directory.reload()


def api_secret(kas: KasServer) -> Path:
    assert kas.config.api is not None
    return kas.config.api.authentication_secret_file


async def test_push_on_one_replica_reaches_the_streams_on_another_filtered(
    tmp_path: Path, redis_url: str
) -> None:
    async with (
        two_replicas(tmp_path, redis_url) as (one, two),
        grpc.aio.insecure_channel(two.agent_address) as ch,
    ):
        assert one.api_address is not None
        # The agent's spelling comes back (paths compare case-insensitively, as GitLab's routes do).
        app = reconcile_projects(ch, APP.token, "Group/App", "group/forbidden", PUBLIC, "group/agents")
        other = reconcile_projects(ch, OTHER.token, "group/app", "group/other-agents")
        await wait_subscribed(two, streams=2)

        async def push(project_id: int, path: str) -> None:
            await send_git_push_event(one.api_address or "", api_secret(one), project_id, path)

        await push(1, "group/app")
        assert await next_project(app) == "Group/App"
        # Not asked for, asked for without access, then one the agent may see: only the last arrives
        # (one replica, one channel, one stream: order is kept, so nothing was skipped over).
        await push(2, "group/unasked")
        await push(3, "group/forbidden")
        await push(4, PUBLIC)
        assert await next_project(app) == PUBLIC
        await push(5, "group/agents")
        assert await next_project(app) == "group/agents"
        # OTHER asked for group/app too but may not see it: its first event is its own project's push.
        await push(6, "group/other-agents")
        assert await next_project(other) == "group/other-agents"
        sent = two.metrics.registry.get_sample_value("flux_git_push_notifications_total")
        assert sent == 4
        received = one.metrics.registry.get_sample_value("git_push_events_total")
        assert received == 6
        app.cancel()
        other.cancel()


async def test_stream_sees_a_grant_added_to_the_agents_file(tmp_path: Path, redis_url: str) -> None:
    async with (
        two_replicas(tmp_path, redis_url) as (one, two),
        grpc.aio.insecure_channel(two.agent_address) as ch,
    ):
        call = reconcile_projects(ch, OTHER.token, "group/app")
        await wait_subscribed(two, streams=1)
        # The stream stays open; the access check reads the agents file as it is when an event comes.
        set_agents(two, APP, replace(OTHER, projects=("group/app",)))
        await send_git_push_event(one.api_address or "", api_secret(one), 1, "group/app")
        assert await next_project(call) == "group/app"
        set_agents(two, APP, OTHER)
        await send_git_push_event(one.api_address or "", api_secret(one), 1, "group/app")
        set_agents(two, APP, replace(OTHER, projects=("group/app",)))
        await send_git_push_event(one.api_address or "", api_secret(one), 2, "group/app")
        assert await next_project(call) == "group/app"
        assert two.metrics.registry.get_sample_value("flux_git_push_notifications_total") == 2
        call.cancel()


@pytest.fixture
async def api_kas(tmp_path: Path) -> AsyncIterator[KasServer]:
    """One replica without Redis (events go straight to its own streams), API listener on."""
    async with running_kas(tmp_path / "kas", [APP, OTHER], api=True) as kas:
        yield kas


def git_push_call(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        GIT_PUSH_EVENT_PATH,
        request_serializer=notifications_rpc.GitPushEventRequest.SerializeToString,
        response_deserializer=notifications_rpc.GitPushEventResponse.FromString,
    )


def push_request(project_id: int = 1, path: str = "group/app") -> notifications_rpc.GitPushEventRequest:
    event = event_pb2.GitPushEvent(project=event_pb2.Project(id=project_id, full_path=path))
    return notifications_rpc.GitPushEventRequest(event=event)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _other_secret() -> Any:
    return as_secret(base64.b64encode(secrets.token_bytes(32)))


@pytest.mark.parametrize(
    "make_metadata",
    [
        lambda s: (),
        lambda s: bearer(jwt.encode(_other_secret(), issuer="gitlab")),
        lambda s: bearer(jwt.encode(s, issuer="gitlab", lifetime=-10)),
        lambda s: bearer(jwt.encode(s, issuer="gitlab", audience="gitlab")),
        lambda s: bearer("not.a.jwt"),
        lambda s: (("authorization", "Basic " + jwt.encode(s, issuer="gitlab")),),
    ],
    ids=["missing", "wrong-secret", "expired", "wrong-audience", "garbage", "not-bearer"],
)
async def test_git_push_event_needs_the_rails_jwt(api_kas: KasServer, make_metadata: Any) -> None:
    secret = as_secret(api_secret(api_kas))
    async with grpc.aio.insecure_channel(api_kas.api_address or "") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await git_push_call(ch)(push_request(), metadata=make_metadata(secret), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The issuer is Rails' host and not checked: any iss with the right secret and audience works.
        await git_push_call(ch)(
            push_request(), metadata=bearer(jwt.encode(secret, issuer="gitlab.example.com"))
        )
    assert api_kas.metrics.registry.get_sample_value("git_push_events_total") == 1


@pytest.mark.parametrize(
    "request_",
    [
        notifications_rpc.GitPushEventRequest(),
        push_request(project_id=0),
        push_request(path=""),
        push_request(path="g/" + "x" * 1100),
    ],
    ids=["no-event", "id-0", "empty-path", "long-path"],
)
async def test_invalid_git_push_event_is_refused(
    api_kas: KasServer, request_: notifications_rpc.GitPushEventRequest
) -> None:
    secret = as_secret(api_secret(api_kas))
    async with grpc.aio.insecure_channel(api_kas.api_address or "") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await git_push_call(ch)(request_, metadata=bearer(jwt.encode(secret, issuer="gitlab")), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("paths", "detail"),
    [
        (("group/app", ""), "project[1].id must not be empty"),
        (("g/" + "x" * 1100,), "project[0].id is longer than 1024 characters"),
        (tuple(f"g/p{i}" for i in range(MAX_PROJECTS + 1)), f"more than {MAX_PROJECTS} projects"),
        (tuple(f"g/{i:0>1000}" for i in range(300)), "request is larger than 262144 bytes"),
    ],
    ids=["empty-id", "long-id", "too-many", "too-large"],
)
async def test_invalid_reconcile_projects_is_refused(
    api_kas: KasServer, paths: tuple[str, ...], detail: str
) -> None:
    async with grpc.aio.insecure_channel(api_kas.agent_address) as ch:
        call = reconcile_projects(ch, APP.token, *paths)
        assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await call.details() == detail


async def test_reconcile_projects_needs_an_agent_token(api_kas: KasServer) -> None:
    async with grpc.aio.insecure_channel(api_kas.agent_address) as ch:
        call = reconcile_projects(ch, "not-an-agent-token", "group/app")
        assert await call.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_push_to_the_configuration_project_re_reads_the_configuration_at_once(tmp_path: Path) -> None:
    # Polling is off in practice (an hour): only the push can make kas read the edited file.
    overrides = {"agent_configuration": {"poll_period": 3600}}
    async with (
        running_kas(tmp_path / "kas", [APP], api=True, overrides=overrides) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as ch,
    ):
        config_dir = kas.config.agent_configuration.directory
        assert config_dir is not None
        write_agent_config(config_dir, APP, "observability:\n  logging:\n    level: info\n")
        call = get_configuration(ch, APP.token)
        first = await read_config(call)
        write_agent_config(config_dir, APP, "observability:\n  logging:\n    level: debug\n")
        await send_git_push_event(kas.api_address or "", api_secret(kas), 7, "GROUP/agents")
        second = await read_config(call)
        assert second.commit_id != first.commit_id
        assert first.configuration.observability.logging.level == agentcfg_pb2.info
        assert second.configuration.observability.logging.level == agentcfg_pb2.debug
        call.cancel()


class StallingProxy:
    """127.0.0.1:<port> -> kas, until `stall()`: from then on nothing more is read from kas (an agent
    on a stalled network path; kas's HTTP/2 window runs out and its writes on that stream wait)."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._stalled = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.address = ""

    async def __aenter__(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stall(self) -> None:
        self._stalled.set()

    async def _accept(self, down_reader: asyncio.StreamReader, down: asyncio.StreamWriter) -> None:
        host, _, port = self._upstream.rpartition(":")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room in the kernel either
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        up_reader, up = await asyncio.open_connection(sock=sock)
        for name, coro in (
            ("to-kas", self._pump(down_reader, up, stalls=False)),
            ("from-kas", self._pump(up_reader, down, stalls=True)),
        ):
            task = asyncio.get_running_loop().create_task(coro, name=f"stalling-proxy:{name}")
            self._tasks.add(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, stalls: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if stalls and self._stalled.is_set():
                    await asyncio.Event().wait()  # hold the connection open, read nothing more from kas
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_a_stalled_stream_drops_and_counts_and_holds_up_no_other(tmp_path: Path) -> None:
    path = "group/" + "x" * 1000  # big responses: the stalled connection's window runs out sooner
    agents = [replace(APP, projects=(path,)), replace(OTHER, projects=(path,))]
    async with (
        running_kas(tmp_path / "kas", agents, api=True, websocket=False) as kas,
        StallingProxy(kas.agent_address) as proxy,
        grpc.aio.insecure_channel(proxy.address, options=[("grpc.http2.bdp_probe", 0)]) as stalled_channel,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
        grpc.aio.insecure_channel(kas.api_address or "") as api_channel,
    ):
        rails = bearer(jwt.encode(as_secret(api_secret(kas)), issuer="gitlab", lifetime=60))
        stalled = reconcile_projects(stalled_channel, APP.token, path)
        live = reconcile_projects(channel, OTHER.token, path)
        await wait_subscribed(kas, streams=2)
        proxy.stall()
        pushes = 200
        for number in range(1, pushes + 1):
            await git_push_call(api_channel)(push_request(number, path), metadata=rails, timeout=5)
            assert await next_project(live) == path  # every push reaches the live stream at once
        samples = kas.metrics.registry.get_sample_value
        dropped = samples("flux_dropped_git_push_notifications_total")
        sent = samples("flux_git_push_notifications_total")
        assert dropped is not None
        assert dropped > 0
        # Every event is accounted for: sent, dropped, or waiting in the stalled stream's buffer (10)
        # behind the one write that cannot finish.
        assert sent is not None
        assert sent + dropped == 2 * pushes - BUFFER_SIZE - 1
        stalled.cancel()
        live.cancel()


async def test_streams_end_ok_at_the_age_context_and_on_shutdown(tmp_path: Path) -> None:
    # Unlike GitLab's kas (an error ~1.7 h in, then a 10-20 s backoff): OK, so the agent reopens at once.
    overrides = {"agent": {"listen": {"max_connection_age": 2}}}  # age context 0.6 s
    async with (
        running_kas(tmp_path / "aged", [APP], overrides=overrides) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
    ):
        call = reconcile_projects(channel, APP.token, "group/app")
        assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.OK
    async with (
        running_kas(tmp_path / "stopped", [APP]) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
    ):
        call = reconcile_projects(channel, APP.token, "group/app")
        await wait_subscribed(kas, streams=1)
        await kas.stop(grace=5)
        assert await asyncio.wait_for(call.code(), 5) == grpc.StatusCode.OK


async def test_a_broken_subscription_is_renewed(tmp_path: Path) -> None:
    with RedisServer(require(find_redis_server)) as own_redis:  # its own: every subscriber is killed
        async with (
            running_kas(tmp_path / "kas", [APP], redis_url=own_redis.url, api=True) as kas,
            grpc.aio.insecure_channel(kas.agent_address) as channel,
        ):
            call = reconcile_projects(channel, APP.token, "group/app")
            await wait_subscribed(kas, streams=1)
            admin = aioredis.from_url(own_redis.url)
            killed = await admin.client_kill_filter(_type="pubsub")
            await admin.aclose()
            assert killed == 1
            # Pushes while the subscription is down are lost (at most once): push until one arrives
            # (a read that times out would cancel the call, so one read stays pending throughout).
            read = asyncio.ensure_future(next_project(call, within=30))
            for number in range(1, 41):
                await send_git_push_event(kas.api_address or "", api_secret(kas), number, "group/app")
                done, _ = await asyncio.wait({read}, timeout=0.5)
                if done:
                    break
            assert read.done(), "no push reached the stream after its kas's subscription was killed"
            assert read.result() == "group/app"
            assert kas.bus.subscribed
            call.cancel()


async def test_foreign_payloads_on_the_channel_are_dropped_and_counted(
    tmp_path: Path, redis_url: str
) -> None:
    async with (
        running_kas(tmp_path / "kas", [APP], redis_url=redis_url, api=True) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
    ):
        call = reconcile_projects(channel, APP.token, "group/app")
        await wait_subscribed(kas, streams=1)
        assert kas.config.redis is not None
        publisher = aioredis.from_url(redis_url)
        other_type = any_pb2.Any()
        other_type.Pack(event_pb2.Project(id=1, full_path="group/app"))
        no_project = any_pb2.Any()
        no_project.Pack(event_pb2.GitPushEvent())
        for payload in (b"\xff not protobuf", other_type.SerializeToString(), no_project.SerializeToString()):
            await publisher.publish(kas.config.redis.events_channel, payload)
        await publisher.aclose()
        await send_git_push_event(kas.api_address or "", api_secret(kas), 1, "group/app")
        assert await next_project(call) == "group/app"
        assert kas.metrics.registry.get_sample_value("git_push_events_invalid_total") == 3
        call.cancel()


async def test_the_api_listener_serves_tls_when_configured(tmp_path: Path) -> None:
    ca, cert, key = self_signed_serving_certificate().write(tmp_path / "pki")
    tls = {"api": {"listen": {"certificate_file": str(cert), "key_file": str(key)}}}
    async with running_kas(tmp_path / "kas", [APP], api=True, overrides=tls) as kas:
        rails = bearer(jwt.encode(as_secret(api_secret(kas)), issuer="gitlab"))
        async with grpc.aio.insecure_channel(kas.api_address or "") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await git_push_call(plain)(push_request(), metadata=rails, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        async with grpc.aio.secure_channel(kas.api_address or "", credentials) as secure:
            await git_push_call(secure)(push_request(), metadata=rails, timeout=5)
        assert kas.metrics.registry.get_sample_value("git_push_events_total") == 1
