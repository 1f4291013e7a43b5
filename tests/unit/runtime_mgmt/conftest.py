"""Shared helpers for the runtime-management unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from kubernetes import client as k8s_client

from agent_runtime.backoff import BackoffPolicy
from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess
from agent_runtime.manager import WorkerManager
from tests.unit.runtime_mgmt.workers import Factory

FAST_RESTART = BackoffPolicy(initial=0.05, cap=0.2, factor=2.0, jitter=0.0, reset_after=60.0)


def unreachable_kube() -> KubeAccess:
    """Kube access to a loopback port nothing listens on (port 1)."""
    configuration = k8s_client.Configuration()
    configuration.host = "https://127.0.0.1:1"
    configuration.api_key["BearerToken"] = "Bearer unit-test-token"
    return KubeAccess(configuration)


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `predicate` every 10 ms; fail the test after `within` seconds."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - observing state from outside; no event to wait on
            await asyncio.sleep(0.01)


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
async def manager(factory: Factory) -> AsyncIterator[WorkerManager]:
    """A running WorkerManager with scripted workers, stopped (drained) after the test."""
    env = WorkerEnvironment(kube=unreachable_kube())
    mgr = WorkerManager(env, worker_factory=factory, stop_grace=0.5, restart_backoff=FAST_RESTART)
    task = asyncio.create_task(mgr.run(), name="test-worker-manager")
    await mgr.wait_started()
    try:
        yield mgr
    finally:
        async with asyncio.timeout(10):
            await mgr.stop(0.5)
            await task
