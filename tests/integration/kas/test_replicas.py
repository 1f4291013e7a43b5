"""Two kas replicas sharing a real Redis: the tunnel is on B, open_call happens on A (§11.2, §11.3)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import struct
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis

from kas.redis_keys import live_value
from kas.testing import running_kas
from kas.tunnel_call import CallHeader, CallMessage, CallTrailer
from tests.integration.kas.agentk import MAKE_REQUEST, Tunnel, echo_once
from tests.integration.kas.conftest import AGENT


async def test_request_routed_to_the_replica_holding_the_tunnel(tmp_path: Path, redis_url: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
    prefix = f"kas-test-{secrets.token_hex(4)}"
    common = {"redis_url": redis_url, "private_api": True, "shared_secret_file": secret, "key_prefix": prefix}
    async with (
        running_kas(tmp_path / "a", [AGENT], **common) as kas_a,
        running_kas(tmp_path / "b", [AGENT], **common) as kas_b,
        grpc.aio.insecure_channel(kas_b.agent_address) as channel,
    ):
        if True:
            tunnel = Tunnel(channel, AGENT.token)
            client = aioredis.from_url(redis_url)
            key = f"{prefix}:tunnel_tracker2:kas_by_agent_id:".encode() + struct.pack("<q", AGENT.id)
            for _ in range(200):
                entries = await client.hgetall(key)
                if entries:
                    break
                await asyncio.sleep(0.01)
            assert kas_b.private_api_url is not None
            assert list(entries) == [kas_b.private_api_url.encode()]
            (value,) = entries.values()
            assert isinstance(value, bytes)
            assert live_value(value) == b""
            served = asyncio.create_task(echo_once(tunnel), name="agent")
            call = await kas_a.router.open_call(AGENT.id, MAKE_REQUEST, {"x-from": ["a"]}, timeout=5)
            await call.send(b"via-b")
            await call.close_send()
            events = []
            while (event := await call.receive()) is not None:
                events.append(event)
            req = await served
            assert req is not None
            assert req.meta.get("x-from") == ["a"]
            assert not any(k.startswith("kas-hop-") for k in req.meta)
            assert events == [CallHeader({"x-h": ["1"]}), CallMessage(b"via-b"), CallTrailer({"x-t": ["2"]})]
            await client.aclose()


async def test_private_api_rejects_bad_jwt(tmp_path: Path, redis_url: str) -> None:
    async with running_kas(tmp_path, [AGENT], redis_url=redis_url, private_api=True) as kas:
        assert kas.private_api_url is not None
        channel = grpc.aio.insecure_channel(kas.private_api_url.removeprefix("grpc://"))
        async with channel:
            call: Any = channel.stream_stream(MAKE_REQUEST)(
                metadata=(("authorization", "Bearer a.b.c"), ("kas-hop-routing-agent-id", "42"))
            )
            assert await call.code() == grpc.StatusCode.UNAUTHENTICATED
