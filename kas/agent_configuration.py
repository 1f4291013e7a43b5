"""AgentConfiguration.GetConfiguration: agent config files from a directory laid out like GitLab (§6.1).

`<directory>/<project path>/.gitlab/agents/<agent name>/config.yaml`, parsed strictly (YAML -> JSON ->
protobuf JSON, unknown keys are errors) into agentcfg.ConfigurationFile. The "commit id" is a content
hash. One poll loop checks every watched file each `poll_period`, so an edit reaches connected agents
within about that long, and a git push event for an agent's configuration project re-reads its files at
once (GitLab's early re-poll, §6.1); user errors end the stream with FAILED_PRECONDITION "Config: ...".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as config_rpc
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_proto.gitlab.agent.event import event_pb2
from kas.agent_server.connections import ConnectionTable
from kas.agent_streams import StreamLog
from kas.agent_tracker import AgentTracker, connected_agent_info
from kas.agents import AgentDirectory, AgentInfo, fold_path
from kas.auth import require_agent

log = logging.getLogger(__name__)

AGENTS_DIRECTORY = ".gitlab/agents"
FILE_NAME = "config.yaml"
_COPIED = ("gitops", "observability", "ci_access", "container_scanning", "remote_development", "flux")


class ConfigError(ValueError):
    """A user error in the configuration file (FAILED_PRECONDITION "Config: ...")."""


def parse_configuration_file(content: bytes, max_size: int) -> agentcfg_pb2.ConfigurationFile:
    if len(content) > max_size:
        raise ConfigError(f"configuration file is {len(content)} bytes, the maximum is {max_size}")
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping at the top level")
    try:
        as_json = json.loads(json.dumps(data))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot be expressed as JSON: {err}") from None
    try:
        return json_format.ParseDict(as_json, agentcfg_pb2.ConfigurationFile())
    except json_format.ParseError as err:
        raise ConfigError(str(err)) from None


def agent_configuration(
    file: agentcfg_pb2.ConfigurationFile, agent: AgentInfo, gitlab_external_url: str
) -> agentcfg_pb2.AgentConfiguration:
    config = agentcfg_pb2.AgentConfiguration(
        agent_id=agent.id,
        project_id=agent.project_id,
        project_path=agent.project_path,
        gitlab_external_url=gitlab_external_url,
    )
    for name in _COPIED:
        if file.HasField(name):
            getattr(config, name).CopyFrom(getattr(file, name))
    return config


@dataclass(frozen=True)
class Snapshot:
    commit_id: str
    file: agentcfg_pb2.ConfigurationFile | None
    error: str | None


class _Watched:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self.snapshot = Snapshot("", None, "not loaded")
        self.listeners: set[asyncio.Event] = set()
        """Wake-up events of the streams watching this file."""


class ConfigStore:
    """Watched configuration files, re-read when their stat changes."""

    def __init__(self, directory: Path | None, max_size: int, poll_period: float) -> None:
        self._directory = directory
        self._max_size = max_size
        self._poll_period = poll_period
        self._watched: dict[tuple[str, str], _Watched] = {}

    def path_for(self, agent: AgentInfo) -> Path | None:
        if self._directory is None:
            return None
        return self._directory / agent.project_path / AGENTS_DIRECTORY / agent.name / FILE_NAME

    def _load(self, watched: _Watched) -> bool:
        try:
            stat = watched.path.stat()
            stamp: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        except OSError as err:
            log.warning("cannot stat %s: %s", watched.path, err)
            return False
        if stamp == watched.stamp:
            return False
        watched.stamp = stamp
        try:
            content = b"" if stamp == (0, 0, 0) else watched.path.read_bytes()
        except FileNotFoundError:
            content = b""
        except OSError as err:
            log.warning("cannot read %s: %s", watched.path, err)
            return False
        commit = hashlib.sha256(content).hexdigest()[:40]
        try:
            watched.snapshot = Snapshot(commit, parse_configuration_file(content, self._max_size), None)
        except ConfigError as err:
            watched.snapshot = Snapshot(commit, None, str(err))
        return True

    def current(self, agent: AgentInfo) -> Snapshot:
        """The agent's configuration now (read on demand if nobody watches it)."""
        path = self.path_for(agent)
        if path is None:
            return Snapshot("0" * 40, agentcfg_pb2.ConfigurationFile(), None)
        watched = self._watched.get((agent.project_path, agent.name))
        if watched is None:
            watched = _Watched(path)
            self._load(watched)
        return watched.snapshot

    def subscribe(self, agent: AgentInfo, wake: asyncio.Event) -> _Watched | None:
        path = self.path_for(agent)
        if path is None:
            return None
        key = (agent.project_path, agent.name)
        watched = self._watched.get(key)
        if watched is None:
            watched = self._watched[key] = _Watched(path)
            self._load(watched)
        watched.listeners.add(wake)
        return watched

    def unsubscribe(self, agent: AgentInfo, wake: asyncio.Event) -> None:
        key = (agent.project_path, agent.name)
        watched = self._watched.get(key)
        if watched is not None:
            watched.listeners.discard(wake)
            if not watched.listeners:
                del self._watched[key]

    def poll_once(self, project_path: str | None = None) -> None:
        """Re-read the watched files (only those of `project_path`, compared case-insensitively)."""
        wanted = None if project_path is None else fold_path(project_path)
        for (path, _name), watched in list(self._watched.items()):
            if (wanted is None or fold_path(path) == wanted) and self._load(watched):
                for wake in list(watched.listeners):
                    wake.set()

    def on_git_push(self, event: event_pb2.GitPushEvent) -> None:
        """A push to a configuration project: read its agents' files now, not at the next poll."""
        self.poll_once(event.project.full_path)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_period)
            self.poll_once()


Context = grpc.aio.ServicerContext[config_rpc.ConfigurationRequest, config_rpc.ConfigurationResponse]


class AgentConfigurationServer:
    def __init__(
        self,
        directory: AgentDirectory,
        store: ConfigStore,
        tracker: AgentTracker,
        connections: ConnectionTable,
        gitlab_external_url: str,
        stream_log: StreamLog | None = None,
    ) -> None:
        self._directory = directory
        self._store = store
        self._tracker = tracker
        self._connections = connections
        self._url = gitlab_external_url
        self._stream_log = stream_log if stream_log is not None else StreamLog()
        self._streams: set[asyncio.Event] = set()
        self._shutting_down = False

    def shutdown(self) -> None:
        """End every stream with OK (they are idle between configuration pushes)."""
        self._shutting_down = True
        for wake in list(self._streams):
            wake.set()

    async def get_configuration(self, request: Any, context: Context) -> None:
        agent = await require_agent(self._directory, context)
        if not isinstance(request, config_rpc.ConfigurationRequest):
            request = _parse_request(request)
            if request is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed ConfigurationRequest")
        registration = None
        if not request.skip_register:
            registration = connected_agent_info(agent, request.agent_meta, random.getrandbits(63))
            await self._tracker.register(registration, held=True)
        peer = context.peer()
        logged = self._stream_log.started(agent.id, request.agent_meta.pod_name, peer)
        conn = self._connections.attach(peer)
        wake = asyncio.Event()
        conn.watchers.add(wake)
        self._streams.add(wake)
        watched = self._store.subscribe(agent, wake)
        try:
            await self._stream(request.commit_id, agent, watched, conn.aged, wake, context)
        finally:
            self._stream_log.ended(logged)
            self._connections.detach(peer, conn)
            conn.watchers.discard(wake)
            self._streams.discard(wake)
            if watched is not None:
                self._store.unsubscribe(agent, wake)
            if registration is not None:
                await self._tracker.unregister(registration)

    async def _stream(
        self,
        last_sent: str,
        agent: AgentInfo,
        watched: _Watched | None,
        aged: asyncio.Event,
        wake: asyncio.Event,
        context: Context,
    ) -> None:
        while True:
            wake.clear()
            snapshot = watched.snapshot if watched is not None else self._store.current(agent)
            if snapshot.error is not None:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Config: {snapshot.error}")
            if snapshot.commit_id != last_sent and snapshot.file is not None:
                config = agent_configuration(snapshot.file, agent, self._url)
                await context.write(
                    config_rpc.ConfigurationResponse(configuration=config, commit_id=snapshot.commit_id)
                )
                last_sent = snapshot.commit_id
            if aged.is_set() or self._shutting_down:
                return  # the age context (or shutdown) ends the stream with OK
            await wake.wait()


def _parse_request(raw: Any) -> config_rpc.ConfigurationRequest | None:
    request = config_rpc.ConfigurationRequest()
    try:
        request.ParseFromString(raw)
    except Exception:  # noqa: BLE001 - any decode failure is the client's error
        return None
    return request
