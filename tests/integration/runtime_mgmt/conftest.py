"""Fixtures for runtime-management integration tests: KubeAccess to the real kube-apiserver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent_runtime.kube import KubeAccess, load_kube_access


@pytest.fixture
async def kube(admin_kubeconfig: Path) -> AsyncIterator[KubeAccess]:
    """KubeAccess as the cluster admin, built by the same loader production uses."""
    access = await asyncio.to_thread(load_kube_access, str(admin_kubeconfig))
    try:
        yield access
    finally:
        await access.close()


async def eventually(predicate: Callable[[], bool], within: float = 15.0) -> None:
    """Poll `predicate` every 20 ms; fail the test after `within` seconds."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - observing state from outside; no event to wait on
            await asyncio.sleep(0.02)
