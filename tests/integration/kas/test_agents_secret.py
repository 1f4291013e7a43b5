"""Agents and tokens from a Kubernetes Secret in the real kube-apiserver, followed by a watch."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from kubernetes import client

from kas.agents import AgentDirectory
from kas.agents_secret import AgentsSecretError, AgentsSecretWatcher
from kas.config import AgentsSecretConfig
from kas.server import KasServer
from kas.testing import TestAgent, running_kas
from tests.integration.kas.agentk import register

SECRET = "kas-agents"
OLD_TOKEN = "old-agent-token-" + "o" * 40
NEW_TOKEN = "new-agent-token-" + "n" * 40
BAD_TOKEN = "never-logged-token-" + "b" * 40
AGENT = TestAgent(id=4242, name="from-secret", project_path="group/agents", token=OLD_TOKEN)


def document(token: str) -> str:
    return yaml.safe_dump({"agents": [{**AGENT.entry(), "tokens": [token]}]})


def secret_body(namespace: str, data: dict[str, str]) -> client.V1Secret:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return client.V1Secret(metadata=client.V1ObjectMeta(name=SECRET, namespace=namespace), data=encoded)


class Secrets:
    """The test's Secret through the admin's ApiClient, off the event loop (kas serves on it)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._core = client.CoreV1Api(api)
        self._namespace = namespace

    async def create(self, text: str) -> None:
        body = secret_body(self._namespace, {"agents.yaml": text})
        await asyncio.to_thread(self._core.create_namespaced_secret, self._namespace, body)

    async def replace(self, data: dict[str, str]) -> None:
        body = secret_body(self._namespace, data)
        await asyncio.to_thread(self._core.replace_namespaced_secret, SECRET, self._namespace, body)

    async def delete(self) -> None:
        await asyncio.to_thread(self._core.delete_namespaced_secret, SECRET, self._namespace)


def source(namespace: str, kubeconfig: Path) -> dict[str, Any]:
    secret = {"namespace": namespace, "name": SECRET, "kubeconfig": str(kubeconfig)}
    return {"agents": {"file": None, "secret": secret}}


@asynccontextmanager
async def kas_on_secret(work: Path, namespace: str, kubeconfig: Path) -> AsyncIterator[KasServer]:
    async with running_kas(work, [], overrides=source(namespace, kubeconfig)) as kas:
        yield kas


async def accepted(channel: grpc.aio.Channel, token: str) -> bool:
    """Register succeeds (True) or is UNAUTHENTICATED (False); any other outcome fails the test."""
    code = grpc.StatusCode.OK
    try:
        await register(channel, token, pod_id=1)
    except grpc.aio.AioRpcError as err:
        code = err.code()
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED), code
    return code is grpc.StatusCode.OK


async def eventually(what: str, check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


async def test_token_rotation_in_the_secret(
    tmp_path: Path, admin_api: client.ApiClient, admin_kubeconfig: Path, namespace: str
) -> None:
    secrets = Secrets(admin_api, namespace)
    await secrets.create(document(OLD_TOKEN))
    async with (
        kas_on_secret(tmp_path, namespace, admin_kubeconfig) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
    ):
        assert await accepted(channel, OLD_TOKEN), "agents are loaded before kas serves"
        assert not await accepted(channel, NEW_TOKEN)
        await secrets.replace({"agents.yaml": document(NEW_TOKEN)})

        async def rotated() -> bool:
            return await accepted(channel, NEW_TOKEN) and not await accepted(channel, OLD_TOKEN)

        await eventually("the new token is accepted and the old one refused", rotated)


async def test_bad_versions_keep_the_previous_agents(
    tmp_path: Path,
    admin_api: client.ApiClient,
    admin_kubeconfig: Path,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kas")
    secrets = Secrets(admin_api, namespace)
    await secrets.create(document(OLD_TOKEN))
    not_an_id = f"agents:\n  - id: x\n    name: a\n    project_path: p\n    tokens: [{BAD_TOKEN}]\n"
    bad_versions = [
        ({"agents.yaml": not_an_id}, "agents.0.id"),
        ({"agents.yaml": f"agents: [{{id: 1, tokens: [{BAD_TOKEN}]]: oops\n"}, "not valid YAML"),
        ({"other-key": document(BAD_TOKEN)}, "no key 'agents.yaml'"),
    ]
    async with (
        kas_on_secret(tmp_path, namespace, admin_kubeconfig) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
    ):
        for data, problem in bad_versions:
            await secrets.replace(data)

            async def reported(problem: str = problem) -> bool:
                return any(problem in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)

            await eventually(f"an error naming {problem!r}", reported)
            assert await accepted(channel, OLD_TOKEN), "the previous agents stay"
            assert not await accepted(channel, BAD_TOKEN)
        await secrets.delete()
        await eventually(
            "the deletion is noticed",
            lambda: _true(any("was deleted" in r.getMessage() for r in caplog.records)),
        )
        assert await accepted(channel, OLD_TOKEN), "a deleted Secret keeps the previous agents"
    assert BAD_TOKEN not in caplog.text
    assert base64.b64encode(BAD_TOKEN.encode()).decode()[:20] not in caplog.text


async def _true(value: bool) -> bool:
    return value


def _loaded(directory: AgentDirectory, token: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return directory.authenticate(token) is not None

    return check


async def test_secret_created_after_kas_started(
    tmp_path: Path, admin_api: client.ApiClient, admin_kubeconfig: Path, namespace: str
) -> None:
    async with (
        kas_on_secret(tmp_path, namespace, admin_kubeconfig) as kas,
        grpc.aio.insecure_channel(kas.agent_address) as channel,
    ):
        assert kas.directory.agents() == []
        await Secrets(admin_api, namespace).create(document(NEW_TOKEN))
        await eventually("the new Secret's agent is accepted", lambda: accepted(channel, NEW_TOKEN))


async def test_start_fails_clearly_without_rights_or_with_a_broken_secret(
    tmp_path: Path, admin_api: client.ApiClient, user_kubeconfig: Path, admin_kubeconfig: Path, namespace: str
) -> None:
    with pytest.raises(
        AgentsSecretError, match=f"forbidden: kas needs list and watch on secrets in namespace {namespace}"
    ):
        async with kas_on_secret(tmp_path / "alice", namespace, user_kubeconfig):
            pass
    await Secrets(admin_api, namespace).create(f"agents: [{{id: 1, tokens: [{BAD_TOKEN}]}}]\n")
    with pytest.raises(AgentsSecretError, match=r"agents\.0\.name: Field required") as err:
        async with kas_on_secret(tmp_path / "admin", namespace, admin_kubeconfig):
            pass
    assert BAD_TOKEN not in str(err.value)


async def test_watch_ended_by_the_server_is_reopened_and_still_follows(
    admin_api: client.ApiClient, admin_kubeconfig: Path, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kas")
    secrets = Secrets(admin_api, namespace)
    await secrets.create(document(OLD_TOKEN))
    directory = AgentDirectory()
    config = AgentsSecretConfig(namespace=namespace, name=SECRET, kubeconfig=admin_kubeconfig)
    watcher = AgentsSecretWatcher(config, directory, watch_seconds=1)
    await watcher.start()
    assert directory.authenticate(OLD_TOKEN) is not None
    try:
        async with asyncio.TaskGroup() as group:
            watching = group.create_task(watcher.run(), name="agents-secret-watch")
            for token in (NEW_TOKEN, OLD_TOKEN, NEW_TOKEN):
                await asyncio.sleep(1.2)  # the API server has ended at least one more watch
                await secrets.replace({"agents.yaml": document(token)})
                await eventually(f"{token[:3]} token loaded", _loaded(directory, token))
            watching.cancel()
    finally:
        await watcher.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
