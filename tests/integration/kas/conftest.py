"""Fixtures for the reference kas: agents, a running kas, a channel to its agent listener."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kas.server import KasServer
from kas.testing import TestAgent, running_kas

AGENT = TestAgent(
    id=42, name="my-agent", project_path="group/project", token="agent-token-" + "x" * 40, project_id=7
)
OTHER = TestAgent(id=-7, name="other", project_path="group/other", token="other-token-" + "y" * 40)


@pytest.fixture
async def kas(tmp_path: Path) -> AsyncIterator[KasServer]:
    async with running_kas(
        tmp_path / "kas", [AGENT, OTHER], overrides={"agent": {"tunnel_find_timeout": 5}}
    ) as server:
        yield server


@pytest.fixture
async def channel(kas: KasServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(kas.agent_address) as ch:
        yield ch
