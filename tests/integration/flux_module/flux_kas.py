"""A loopback gRPC server playing kas for the Flux module's tests: many agents, and GitLabFlux.

Each token `token-<n>` is agent `n`: GetConfiguration sends one configuration (agent id, the GitLab URL)
and stays open, Register answers, Connect streams are parked, and every ReconcileProjects request is
recorded; `push(agent_id, project)` sends a project to that agent's open streams, as a kas does after a
push event. With `unimplemented`, ReconcileProjects answers UNIMPLEMENTED (a kas without the module).
(The reference kas's GitLabFlux server is being written alongside; this stands in until it lands.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from agent_proto.flavor import wire_names
from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as config_rpc
from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2 as registrar_rpc
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_proto.gitlab.agent.flux.rpc import rpc_pb2 as flux_rpc

WIRE = wire_names("gitlab")
RECONCILE_PROJECTS = "/gitlab.agent.flux.rpc.GitLabFlux/ReconcileProjects"
GITLAB_URL = "https://gitlab.example.com"


def token_for(agent_id: int) -> str:
    return f"token-{agent_id}"


@dataclass
class FluxKas:
    gitlab_url: str = GITLAB_URL
    unimplemented: bool = False
    webhook_receiver_url: str = ""
    """Sent as the configuration's flux.webhook_receiver_url (receiver mode)."""
    server: grpc.aio.Server | None = None
    port: int = 0
    requests: dict[int, list[frozenset[str]]] = field(default_factory=dict)
    """Per agent id: the project set of every ReconcileProjects call, in order."""
    streams: dict[int, list[asyncio.Queue[bytes]]] = field(default_factory=dict)
    """Per agent id: the outgoing queue of each open ReconcileProjects call."""
    calls: int = 0
    """ReconcileProjects calls of any outcome."""

    async def start(self) -> None:
        self.server = grpc.aio.server()
        paths: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            WIRE.register_path: grpc.unary_unary_rpc_method_handler(self._register),
            WIRE.get_configuration_path: grpc.unary_stream_rpc_method_handler(self._get_configuration),
            WIRE.connect_path: grpc.stream_stream_rpc_method_handler(self._connect),
            RECONCILE_PROJECTS: grpc.unary_stream_rpc_method_handler(self._reconcile_projects),
        }
        self.server.add_generic_rpc_handlers([_Generic(paths)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0.5)

    @property
    def address(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def push(self, agent_id: int, project: str | bytes) -> int:
        """Send a project (or raw bytes) to the agent's open streams; returns how many got it."""
        raw = (
            project
            if isinstance(project, bytes)
            else flux_rpc.ReconcileProjectsResponse(project=flux_rpc.Project(id=project)).SerializeToString()
        )
        queues = self.streams.get(agent_id, [])
        for queue in queues:
            queue.put_nowait(raw)
        return len(queues)

    async def _agent(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> int:
        auth = dict(context.invocation_metadata() or ()).get("authorization", "")
        token = str(auth).removeprefix("Bearer ")
        if not token.startswith("token-") or not token[6:].isdigit():
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
        return int(token[6:])

    async def _register(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await self._agent(context)
        return registrar_rpc.RegisterResponse().SerializeToString()

    async def _get_configuration(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        agent_id = await self._agent(context)
        config = agentcfg_pb2.AgentConfiguration(
            agent_id=agent_id,
            project_path="group/agents",
            gitlab_external_url=self.gitlab_url,
            flux=agentcfg_pb2.FluxCF(webhook_receiver_url=self.webhook_receiver_url),
        )
        yield config_rpc.ConfigurationResponse(configuration=config, commit_id="c0ffee").SerializeToString()
        await asyncio.Event().wait()

    async def _connect(
        self, request_iterator: object, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        await self._agent(context)
        await context.read()
        await asyncio.Event().wait()

    async def _reconcile_projects(
        self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        agent_id = await self._agent(context)
        self.calls += 1
        if self.unimplemented:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "unknown service gitlab.agent.flux.rpc.GitLabFlux"
            )
        parsed = flux_rpc.ReconcileProjectsRequest.FromString(request)
        self.requests.setdefault(agent_id, []).append(frozenset(p.id for p in parsed.project))
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.streams.setdefault(agent_id, []).append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.streams[agent_id].remove(queue)


class _Generic(grpc.GenericRpcHandler):
    def __init__(self, paths: dict[str, grpc.RpcMethodHandler[bytes, bytes]]) -> None:
        self._paths = paths

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        return self._paths.get(handler_call_details.method)  # type: ignore[attr-defined,unused-ignore]
