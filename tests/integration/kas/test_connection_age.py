"""Connection rotation: the age context ends idle Connect and GetConfiguration streams with OK (§3.6)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from kas.testing import running_kas
from tests.integration.kas.agentk import Tunnel, get_configuration
from tests.integration.kas.conftest import AGENT


@pytest.mark.parametrize("websocket", [True, False], ids=["spliced", "direct"])
async def test_idle_streams_end_ok_at_the_age_context(tmp_path: Path, websocket: bool) -> None:
    # spliced: the front listener registers the connection; direct: its first stream does
    overrides = {"agent": {"listen": {"max_connection_age": 2, "websocket": websocket}}}  # age context 0.6 s
    async with (
        running_kas(tmp_path, [AGENT], overrides=overrides) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
    ):
        tunnel = Tunnel(channel, AGENT.token)
        config = get_configuration(channel, AGENT.token)
        await asyncio.wait_for(config.read(), 5)
        assert await asyncio.wait_for(tunnel.status(), 5) == grpc.StatusCode.OK
        assert await asyncio.wait_for(config.code(), 5) == grpc.StatusCode.OK
        # a new stream after GOAWAY lands on a fresh connection and is idle again
        fresh = Tunnel(channel, AGENT.token)
        for _ in range(200):
            if kas.registry.counts()[0] == 1:
                break
            await asyncio.sleep(0.01)
        assert kas.registry.counts()[0] == 1
        fresh.close_send()
