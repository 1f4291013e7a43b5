"""The Redis tunnel index: which kas replicas hold tunnels of an agent (§11.3 tunnel_tracker2).

Registry callbacks are synchronous and cheap; one owned task (`run`) does the Redis I/O: HSET of this
kas's URL when an agent's first tunnel arrives, a refresh of every entry each `refresh` seconds (TTL
`ttl`), and HDEL `unregister_delay` after the agent's last tunnel went away (cancelled if one comes back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from kas.redis_keys import expiring, live_value, tunnel_index_key

log = logging.getLogger(__name__)


class RedisTunnelIndex:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        own_url: str,
        ttl: float,
        refresh: float,
        unregister_delay: float,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.own_url = own_url
        self._ttl = ttl
        self._refresh = refresh
        self._delay = unregister_delay
        self._present: set[int] = set()
        self._to_write: set[int] = set()
        self._removals: dict[int, float] = {}
        self._wake = asyncio.Event()

    # -- registry callbacks ------------------------------------------------------------------------

    def on_first_tunnel(self, agent_id: int) -> None:
        self._present.add(agent_id)
        if self._removals.pop(agent_id, None) is None:
            self._to_write.add(agent_id)
            self._wake.set()

    def on_last_tunnel(self, agent_id: int) -> None:
        self._present.discard(agent_id)
        self._to_write.discard(agent_id)
        self._removals[agent_id] = time.monotonic() + self._delay
        self._wake.set()

    # -- the I/O task ------------------------------------------------------------------------------

    async def run(self) -> None:
        next_refresh = time.monotonic() + self._refresh
        while True:
            try:
                await self._write(self._to_write)
                now = time.monotonic()
                due = [a for a, at in self._removals.items() if at <= now]
                if due:
                    for agent_id in due:
                        del self._removals[agent_id]
                    await self._remove(due)
                if now >= next_refresh:
                    await self._write(set(self._present), everything=True)
                    next_refresh = now + self._refresh
            except (redis.exceptions.RedisError, OSError) as err:
                log.warning("tunnel index update failed, will retry: %s", err)
                await asyncio.sleep(1.0)
            wake_at = min([next_refresh, *self._removals.values()])
            self._wake.clear()
            if self._to_write:
                continue
            try:
                async with asyncio.timeout(max(0.0, wake_at - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _write(self, agents: set[int], *, everything: bool = False) -> None:
        if not agents:
            return
        batch = list(agents)
        async with self._client.pipeline(transaction=True) as pipe:
            for agent_id in batch:
                key = tunnel_index_key(self._prefix, agent_id)
                pipe.hset(key, self.own_url, expiring(self._ttl))
                pipe.pexpire(key, int(self._ttl * 1000))
            await pipe.execute()
        if not everything:
            self._to_write.difference_update(batch)

    async def _remove(self, agents: list[int]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for agent_id in agents:
                pipe.hdel(tunnel_index_key(self._prefix, agent_id), self.own_url)
            await pipe.execute()

    async def remove_all(self) -> None:
        """On shutdown: take this kas out of every agent's entry at once."""
        agents = list(self._present | set(self._removals))
        if agents:
            await self._remove(agents)

    # -- queries (routing side) --------------------------------------------------------------------

    async def kas_urls(self, agent_id: int) -> list[str]:
        """URLs of other replicas with tunnels of the agent; expired fields are deleted."""
        key = tunnel_index_key(self._prefix, agent_id)
        entries: dict[Any, Any] = await self._client.hgetall(key)
        now = time.time()
        urls, expired = [], []
        for field, raw in entries.items():
            if live_value(raw, now) is None:
                expired.append(field)
                continue
            url = field.decode(errors="replace")
            if url != self.own_url:
                urls.append(url)
        if expired:
            await self._client.hdel(key, *expired)
        return urls
