"""Per-token limit on new agent RPCs (PROTOCOL.md §3.6 `connections_per_token_per_minute`, §11.3).

Every RPC (unary or stream) counts against its token's bucket for the current wall-clock minute; once
the bucket holds more than the limit, RPCs are refused with RESOURCE_EXHAUSTED until the minute ends.
With Redis the buckets are shared by all replicas: key
`<prefix>:agent_limit:<sha256(first half of the token)>:<minute byte>`, INCR + EXPIRE 59 in one
transaction (one round trip per RPC). Without Redis each kas counts in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

RATE_LIMITED_MESSAGE: Final = "new connection rate limit exhausted for this agent, try again later"
BUCKET_TTL_SECONDS: Final = 59
"""A bucket outlives its minute by less than an hour, so the same minute byte next hour starts at 0."""
REDIS_TIMEOUT_SECONDS: Final = 2.0
"""An RPC never waits longer than this for the limiter; a slow or failing Redis lets the RPC through."""
_FAILURE_LOG_INTERVAL: Final = 10.0


class TokenRateLimiter(Protocol):
    async def allow(self, token: str) -> bool:
        """Count one RPC of `token`; False when its bucket for this minute is over the limit."""
        ...


def token_key_part(token: str) -> bytes:
    """sha256 of the token's first half: enough to tell tokens apart, useless to recover one."""
    raw = token.encode()
    return hashlib.sha256(raw[: len(raw) // 2]).digest()


def _minute(now: float) -> int:
    return int(now // 60) % 60


def limit_key(prefix: str, token: str, now: float | None = None) -> bytes:
    minute = _minute(time.time() if now is None else now)
    return f"{prefix}:agent_limit:".encode() + token_key_part(token) + b":" + bytes([minute])


class MemoryTokenLimiter:
    """Buckets for the current minute of this process only (a kas without Redis)."""

    def __init__(self, limit_per_minute: int) -> None:
        self._limit = limit_per_minute
        self._minute = -1
        self._counts: dict[bytes, int] = {}

    async def allow(self, token: str) -> bool:
        minute = int(time.time() // 60)
        if minute != self._minute:
            self._minute, self._counts = minute, {}
        key = token_key_part(token)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count <= self._limit


class RedisTokenLimiter:
    """Buckets in Redis, shared by every kas using the same `key_prefix`."""

    def __init__(self, redis: aioredis.Redis, prefix: str, limit_per_minute: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._limit = limit_per_minute
        self._last_failure_log = 0.0

    async def allow(self, token: str) -> bool:
        key = limit_key(self._prefix, token)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, BUCKET_TTL_SECONDS)
                    count, _ = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as err:
            self._log_failure(err)
            return True  # the limit protects kas; an outage of its store must not lock every agent out
        return int(count) <= self._limit

    def _log_failure(self, err: Exception) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= _FAILURE_LOG_INTERVAL:
            self._last_failure_log = now
            log.warning("rate limit not checked, Redis failed: %s: %s", type(err).__name__, err)
