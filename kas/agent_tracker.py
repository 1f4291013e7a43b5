"""Connected agents (AgentRegistrar.Register) per (agent id, connection id), with TTLs (§6.2, §11.3).

In memory, or in Redis with GitLab's keys: `<prefix>:agent_tracker2:conn_by_agent_id:<LE8>` (field =
connection id, value = ExpiringValue{ConnectedAgentInfo}) and `<prefix>:agent_tracker2:connected_agents`
(field = agent id). A Register lives `ttl` seconds (agentk re-registers every 5 min); a registration held
by a GetConfiguration stream without skip_register is refreshed by this kas until the stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import redis.asyncio as aioredis
import redis.exceptions
from google.protobuf import timestamp_pb2

from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2 as registrar_rpc
from agent_proto.gitlab.agent.agent_tracker import agent_tracker_pb2
from agent_proto.gitlab.agent.entity import entity_pb2
from kas.agents import AgentDirectory, AgentInfo
from kas.auth import require_agent
from kas.redis_keys import conn_by_agent_key, connected_agents_key, expiring, live_value

log = logging.getLogger(__name__)

Info = agent_tracker_pb2.ConnectedAgentInfo


def connected_agent_info(agent: AgentInfo, meta: entity_pb2.AgentMeta, connection_id: int) -> Info:
    connected_at = timestamp_pb2.Timestamp()
    connected_at.GetCurrentTime()
    return Info(
        agent_meta=meta,
        connected_at=connected_at,
        connection_id=connection_id,
        agent_id=agent.id,
        project_id=agent.project_id,
    )


class AgentTracker:
    """In-memory tracker; RedisAgentTracker shares the data between replicas."""

    def __init__(self, ttl: float, refresh: float = 240.0) -> None:
        self._ttl = ttl
        self._refresh = refresh
        self._held: dict[tuple[int, int], Info] = {}
        self._entries: dict[tuple[int, int], tuple[float, Info]] = {}

    async def register(self, info: Info, *, held: bool = False) -> None:
        key = (info.agent_id, info.connection_id)
        if held:
            self._held[key] = info
        await self._store([info])

    async def unregister(self, info: Info) -> None:
        key = (info.agent_id, info.connection_id)
        self._held.pop(key, None)
        await self._delete(info)

    async def _store(self, infos: list[Info]) -> None:
        expires = time.time() + self._ttl
        for info in infos:
            self._entries[(info.agent_id, info.connection_id)] = (expires, info)

    async def _delete(self, info: Info) -> None:
        self._entries.pop((info.agent_id, info.connection_id), None)

    async def connected(self, agent_id: int | None = None) -> list[Info]:
        now = time.time()
        for key in [k for k, (exp, _) in self._entries.items() if exp < now]:
            del self._entries[key]
        return [
            info
            for (aid, _), (_, info) in sorted(self._entries.items())
            if agent_id is None or aid == agent_id
        ]

    async def count_agents(self) -> int:
        return len({info.agent_id for info in await self.connected()})

    async def run(self) -> None:
        """Keep held registrations alive."""
        while True:
            await asyncio.sleep(self._refresh)
            try:
                await self._store(list(self._held.values()))
            except (redis.exceptions.RedisError, OSError) as err:
                log.warning("agent tracker refresh failed: %s", err)


class RedisAgentTracker(AgentTracker):
    def __init__(self, client: aioredis.Redis, prefix: str, ttl: float, refresh: float) -> None:
        super().__init__(ttl, refresh)
        self._client = client
        self._prefix = prefix

    async def _store(self, infos: list[Info]) -> None:
        if not infos:
            return
        ttl_ms = int(self._ttl * 1000)
        agents_key = connected_agents_key(self._prefix)
        async with self._client.pipeline(transaction=True) as pipe:
            for info in infos:
                key = conn_by_agent_key(self._prefix, info.agent_id)
                pipe.hset(key, str(info.connection_id), expiring(self._ttl, info.SerializeToString()))
                pipe.pexpire(key, ttl_ms)
                pipe.hset(agents_key, str(info.agent_id), expiring(self._ttl))
            pipe.pexpire(agents_key, ttl_ms)
            await pipe.execute()

    async def _delete(self, info: Info) -> None:
        await self._client.hdel(conn_by_agent_key(self._prefix, info.agent_id), str(info.connection_id))

    async def connected(self, agent_id: int | None = None) -> list[Info]:
        now = time.time()
        if agent_id is not None:
            agent_ids = [agent_id]
        else:
            entries: dict[Any, Any] = await self._client.hgetall(connected_agents_key(self._prefix))
            agent_ids = sorted(int(f) for f, raw in entries.items() if live_value(raw, now) is not None)
        result: list[Info] = []
        for aid in agent_ids:
            conns: dict[Any, Any] = await self._client.hgetall(conn_by_agent_key(self._prefix, aid))
            for field in sorted(conns, key=lambda f: int(f) if f.isdigit() else 0):
                payload = live_value(conns[field], now)
                if payload is None:
                    continue
                info = Info()
                try:
                    info.ParseFromString(payload)
                except Exception:  # noqa: BLE001, S112 - a corrupt entry is skipped, not fatal
                    continue
                result.append(info)
        return result


def info_as_json(info: Info) -> dict[str, Any]:
    meta = info.agent_meta
    version = meta.kubernetes_version
    return {
        "agent_id": info.agent_id,
        "connection_id": info.connection_id,
        "project_id": info.project_id,
        "connected_at": info.connected_at.ToJsonString(),
        "agent_meta": {
            "version": meta.version,
            "commit_id": meta.commit_id,
            "pod_namespace": meta.pod_namespace,
            "pod_name": meta.pod_name,
            "kubernetes_version": {
                "major": version.major,
                "minor": version.minor,
                "git_version": version.git_version,
                "platform": version.platform,
            },
        },
    }


Context = grpc.aio.ServicerContext[Any, registrar_rpc.RegisterResponse]


class AgentRegistrarServer:
    def __init__(self, directory: AgentDirectory, tracker: AgentTracker) -> None:
        self._directory = directory
        self._tracker = tracker

    async def register(self, raw: Any, context: Context) -> registrar_rpc.RegisterResponse:
        agent = await require_agent(self._directory, context)
        request = registrar_rpc.RegisterRequest()
        try:
            request.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - any decode failure is the client's error
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed RegisterRequest")
        try:
            await self._tracker.register(connected_agent_info(agent, request.agent_meta, request.pod_id))
        except (redis.exceptions.RedisError, OSError) as err:
            log.warning("register failed: %s", err)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Failed to register agent")
        return registrar_rpc.RegisterResponse()
