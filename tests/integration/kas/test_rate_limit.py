"""The per-token limit on new agent RPCs (PROTOCOL.md §3.6), in memory and in a real Redis."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from kas.rate_limit import RATE_LIMITED_MESSAGE, RedisTokenLimiter, limit_key
from kas.server import KasServer
from kas.testing import running_kas
from tests.integration.kas.agentk import Tunnel, get_configuration, read_config, register
from tests.integration.kas.conftest import AGENT, OTHER
from tests.support.ports import free_port

LIMIT = 5
LIMITED = {"agent": {"listen": {"connections_per_token_per_minute": LIMIT}}}


async def _same_minute_for(seconds: float) -> None:
    """Buckets are per wall-clock minute: start a test's RPCs early enough in a minute to finish in it."""
    left = 60 - time.time() % 60
    if left < seconds:
        await asyncio.sleep(left + 0.05)


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


def _limited_count(kas: KasServer) -> float:
    value = kas.metrics.registry.get_sample_value("agent_server_rate_limited_total")
    assert value is not None, "kas exports no agent_server_rate_limited_total"  # else `== 0` holds vacuously
    return value


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_sixth_rpc_of_a_token_in_a_minute_is_refused(tmp_path: Path, store: str, request: Any) -> None:
    options: dict[str, Any] = {"overrides": LIMITED}
    if store == "redis":
        options |= {
            "redis_url": request.getfixturevalue("redis_url"),
            "key_prefix": f"rl-{secrets.token_hex(4)}",
        }
    async with (
        running_kas(tmp_path / "kas", [AGENT, OTHER], **options) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
    ):
        await _same_minute_for(10)
        # unary and streaming RPCs count alike: 3 Register + 2 GetConfiguration = 5
        for pod in range(3):
            await register(channel, AGENT.token, pod_id=pod)
        for _ in range(2):
            call = get_configuration(channel, AGENT.token)
            await read_config(call)
            call.cancel()
        refused = await _refused(register(channel, AGENT.token, pod_id=9))
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.details() == RATE_LIMITED_MESSAGE
        tunnel = Tunnel(channel, AGENT.token)
        assert await tunnel.status() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert kas.registry.counts() == (0, 0, 0), "a refused Connect never becomes a tunnel"
        assert _limited_count(kas) == 2

        # another token has its own budget, on the same connection
        for pod in range(LIMIT):
            await register(channel, OTHER.token, pod_id=pod)
        # an unknown token is UNAUTHENTICATED, not counted
        unknown = await _refused(register(channel, "unknown-" + "u" * 40, pod_id=1))
        assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED

        if store == "redis":
            assert kas.config.redis is not None
            client = aioredis.from_url(request.getfixturevalue("redis_url"))
            try:
                key = limit_key(kas.config.redis.key_prefix, AGENT.token)
                assert await client.get(key) == str(LIMIT + 2).encode()
                assert 0 < await client.ttl(key) <= 59
            finally:
                await client.aclose()


async def test_replicas_sharing_redis_share_the_budget(tmp_path: Path, redis_url: str) -> None:
    common: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": f"rl-{secrets.token_hex(4)}",
        "overrides": LIMITED,
    }
    async with (
        running_kas(tmp_path / "a", [AGENT], **common) as kas_a,
        running_kas(tmp_path / "b", [AGENT], **common) as kas_b,
        grpc.aio.insecure_channel(kas_a.agent_address) as channel_a,
        grpc.aio.insecure_channel(kas_b.agent_address) as channel_b,
    ):
        await _same_minute_for(10)
        for pod in range(3):
            await register(channel_a, AGENT.token, pod_id=pod)
        for pod in range(2):
            await register(channel_b, AGENT.token, pod_id=pod)
        refused = await _refused(register(channel_b, AGENT.token, pod_id=5))
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _limited_count(kas_b) == 1
        assert _limited_count(kas_a) == 0


async def test_redis_outage_lets_rpcs_through() -> None:
    # Nothing listens on this loopback port: every limiter call fails; the limit must not lock agents out.
    client = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    try:
        limiter = RedisTokenLimiter(client, "down", limit_per_minute=1)
        assert [await limiter.allow(AGENT.token) for _ in range(3)] == [True, True, True]
    finally:
        await client.aclose()
