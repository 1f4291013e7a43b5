"""`python -m agent_runtime` as a process: connects to the reference kas, serves probes, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from kas.server import KasServer
from kas.testing import TestAgent, running_kas
from tests.support.ports import free_port

AGENT = TestAgent(id=4343, name="cli-agent", project_path="group/cli", token="cli-agent-token-" + "c" * 40)


@pytest.fixture
async def kas(tmp_path: Path) -> AsyncIterator[KasServer]:
    async with running_kas(tmp_path / "kas", [AGENT]) as server:
        yield server


async def _ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _probe(url: str) -> int | None:
    """The probe's HTTP status, or None while the process does not listen yet."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return None


async def test_standalone_agent_connects_and_stops_on_sigterm(
    kas: KasServer, admin_kubeconfig: Path, tmp_path: Path
) -> None:
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(AGENT.token + "\n")
    env = {
        **os.environ,
        "POD_NAMESPACE": "gitlab-agent",
        "POD_NAME": "agentk-cli",
        "KUBERNETES_SERVICE_HOST": "",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_runtime",
        f"--kas-address=grpc://{kas.agent_address}",
        f"--token-file={token_file}",
        f"--kubeconfig={admin_kubeconfig}",
        f"--observability-listen-address=127.0.0.1:{port}",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            while not await _ready(f"http://127.0.0.1:{port}/readiness"):  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert AGENT.token.encode() not in stderr
    assert b'"worker": "gitlab-agent/agentk-cli"' in stderr


async def test_a_rewritten_token_file_is_read_again_and_used(
    kas: KasServer, admin_kubeconfig: Path, tmp_path: Path
) -> None:
    """A rotated Secret mounted as a file: the agent starts with a token kas refuses, and connects once the
    file holds the valid one (re-read every TOKEN_FILE_POLL_S), without a restart."""
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("revoked-" + "r" * 40 + "\n")
    env = {**os.environ, "POD_NAMESPACE": "gitlab-agent", "POD_NAME": "agentk-rotated"}
    env["KUBERNETES_SERVICE_HOST"] = ""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_runtime",
        f"--kas-address=grpc://{kas.agent_address}",
        f"--token-file={token_file}",
        f"--kubeconfig={admin_kubeconfig}",
        f"--observability-listen-address=127.0.0.1:{port}",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    readiness = f"http://127.0.0.1:{port}/readiness"
    try:
        async with asyncio.timeout(30):
            while await _probe(readiness) is None:  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # it tries (and is refused) meanwhile
        assert await _probe(readiness) == 503
        assert not await kas.tracker.connected(AGENT.id), "kas took the revoked token"
        token_file.write_text(AGENT.token + "\n")
        async with asyncio.timeout(30):
            while not await _ready(readiness):  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.2)
        assert await kas.tracker.connected(AGENT.id)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"token file changed: reconnecting with the new token" in stderr
    assert AGENT.token.encode() not in stderr
