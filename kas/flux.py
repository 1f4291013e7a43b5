"""GitLabFlux.ReconcileProjects: tell an agent about pushes to the projects it asked for (PROTOCOL.md §17.2).

On the agent listener with agent-token auth, like the other agent services. The request lists project
full paths; each git push event (kas.git_push, from any replica) whose path is in that list, and that
the agent may access (`AgentDirectory.may_access`, checked when the event is sent, so a changed agents
file counts at once), becomes one `ReconcileProjectsResponse{project: {id: <path as the agent wrote it>}}`.

Where we differ from GitLab's kas, on purpose (§17.13): paths match case-insensitively (GitLab routes
do; the agent still gets back its own spelling, so its exact-match lookup works), and the stream ends
with OK when the connection's age context fires, as GetConfiguration does, so the agent reopens at once
instead of after an error and a 10-20 s backoff. Kept: nothing is sent while idle, a per-stream buffer
of 10 events that drops (and counts) what a slow stream cannot take, so it never holds up the others.

The request is untrusted: it is refused with INVALID_ARGUMENT when it is larger than MAX_REQUEST_BYTES,
lists more than MAX_PROJECTS projects, or a project id that is empty or longer than MAX_FULL_PATH.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Final

import grpc
from google.protobuf.message import DecodeError

from agent_proto.gitlab.agent.event import event_pb2
from agent_proto.gitlab.agent.flux.rpc import rpc_pb2 as flux_rpc
from kas.agent_server.connections import ConnectionTable
from kas.agents import AgentDirectory, fold_path
from kas.auth import require_agent
from kas.git_push import MAX_FULL_PATH, GitPushBus
from kas.metrics import KasMetrics

log = logging.getLogger(__name__)

RECONCILE_PROJECTS_PATH: Final = "/gitlab.agent.flux.rpc.GitLabFlux/ReconcileProjects"
BUFFER_SIZE: Final = 10
"""Events waiting to be sent on one stream (GitLab's maxBufferedNotifications); more are dropped."""
MAX_PROJECTS: Final = 5000
MAX_REQUEST_BYTES: Final = 256 * 1024

Context = grpc.aio.ServicerContext[bytes, flux_rpc.ReconcileProjectsResponse]


class InvalidRequestError(ValueError):
    """The ReconcileProjectsRequest breaks a rule (the message says which; it quotes no input)."""


def requested_projects(raw: bytes) -> dict[str, set[str]]:
    """Folded path -> the spellings the agent used for it (usually one)."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise InvalidRequestError(f"request is larger than {MAX_REQUEST_BYTES} bytes")
    request = flux_rpc.ReconcileProjectsRequest()
    try:
        request.ParseFromString(raw)
    except DecodeError:
        raise InvalidRequestError("malformed ReconcileProjectsRequest") from None
    if len(request.project) > MAX_PROJECTS:
        raise InvalidRequestError(f"more than {MAX_PROJECTS} projects")
    wanted: dict[str, set[str]] = {}
    for index, project in enumerate(request.project):
        if not project.id:
            raise InvalidRequestError(f"project[{index}].id must not be empty")
        if len(project.id) > MAX_FULL_PATH:
            raise InvalidRequestError(f"project[{index}].id is longer than {MAX_FULL_PATH} characters")
        wanted.setdefault(fold_path(project.id), set()).add(project.id)
    return wanted


class _Stream:
    """One open ReconcileProjects stream: the bus offers events, the handler drains the buffer."""

    def __init__(self, agent_id: int, wanted: dict[str, set[str]], wake: asyncio.Event) -> None:
        self.agent_id = agent_id
        self.wanted = wanted
        self.wake = wake
        self.buffer: deque[str] = deque()

    def offer(self, event: event_pb2.GitPushEvent) -> bool:
        """Called by the bus (must not block). False when the buffer is full and the event dropped."""
        spellings = self.wanted.get(fold_path(event.project.full_path))
        if not spellings:
            return True
        if len(self.buffer) + len(spellings) > BUFFER_SIZE:
            return False
        self.buffer.extend(sorted(spellings))
        self.wake.set()
        return True


class FluxServer:
    def __init__(
        self,
        directory: AgentDirectory,
        bus: GitPushBus,
        connections: ConnectionTable,
        metrics: KasMetrics,
    ) -> None:
        self._directory = directory
        self._bus = bus
        self._connections = connections
        self._metrics = metrics
        self._streams: set[asyncio.Event] = set()
        self._shutting_down = False

    def shutdown(self) -> None:
        """End every stream with OK (the agent reopens it on another replica)."""
        self._shutting_down = True
        for wake in list(self._streams):
            wake.set()

    async def reconcile_projects(self, request: bytes, context: Context) -> None:
        """The handler (registered without a deserializer: the size is checked before parsing)."""
        agent = await require_agent(self._directory, context)
        try:
            wanted = requested_projects(request)
        except InvalidRequestError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        wake = asyncio.Event()
        stream = _Stream(agent.id, wanted, wake)
        peer = context.peer()
        conn = self._connections.attach(peer)
        conn.watchers.add(wake)
        self._streams.add(wake)
        unsubscribe = self._bus.subscribe(lambda event: self._offer(stream, event))
        try:
            await self._drain(stream, conn.aged, context)
        finally:
            unsubscribe()
            self._streams.discard(wake)
            conn.watchers.discard(wake)
            self._connections.detach(peer, conn)

    def _offer(self, stream: _Stream, event: event_pb2.GitPushEvent) -> None:
        if not stream.offer(event):
            self._metrics.flux_dropped_notifications.inc()
            log.debug("ReconcileProjects buffer full, event dropped", extra={"agent_id": stream.agent_id})

    async def _drain(self, stream: _Stream, aged: asyncio.Event, context: Context) -> None:
        while True:
            stream.wake.clear()
            while stream.buffer:
                path = stream.buffer.popleft()
                if not self._directory.may_access(stream.agent_id, path):
                    log.debug("push event for a project the agent may not access skipped")
                    continue
                project = flux_rpc.Project(id=path)
                await context.write(flux_rpc.ReconcileProjectsResponse(project=project))
                self._metrics.flux_notifications.inc()
            if aged.is_set() or self._shutting_down:
                return  # the age context (or shutdown) ends the stream with OK
            await stream.wake.wait()
