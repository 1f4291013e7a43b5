"""Our runtime while GitLab's kas dies, restarts, runs as two replicas and rotates connections."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, WorkerSpec
from tests.interop.conftest import AGENT, KasFactory
from tests.interop.helpers import (
    AGENT_SA,
    drop_cluster_grant,
    first_success,
    kubectl,
    prepare_namespace,
    started_runtime,
)
from tests.support.gitlab_api import CiJob, GitLabApi
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.timeout(300)
BACK_WITHIN = 10.0
"""Issue 11: after a SIGKILL and restart of kas, the agent serves again within this many seconds."""


@pytest.fixture
def life_namespace(k8s_cluster: LocalCluster) -> Iterator[str]:
    namespace = f"interop-life-{secrets.token_hex(3)}"
    k8s_cluster.create_namespace(namespace)
    grant = prepare_namespace(k8s_cluster, namespace)
    try:
        yield namespace
    finally:
        drop_cluster_grant(k8s_cluster, grant)
        k8s_cluster.delete_namespace(namespace)


def _ci_bearer(api: GitLabApi) -> str:
    """A CI job allowed to use AGENT as the agent itself (its ServiceAccount may view the namespace)."""
    token = secrets.token_hex(16)
    api.add_job(CiJob(token=token, agents={AGENT.id: {"agent": {}}}))
    return f"ci:{AGENT.id}:{token}"


def _spec(kas_address: str, namespace: str) -> WorkerSpec:
    return WorkerSpec(
        id="interop/lifecycle",
        kas_address=kas_address,
        token=Secret(AGENT.token),
        identity=ServiceAccountRef(namespace, AGENT_SA),
    )


@pytest.mark.parametrize("scheme", ["ws", "grpc"])
async def test_gitlab_kas_killed_and_restarted_agent_serves_again_within_10s(
    start_gitlab_kas: KasFactory,
    gitlab_api: GitLabApi,
    admin_kubeconfig: Path,
    life_namespace: str,
    tmp_path: Path,
    scheme: str,
) -> None:
    kas = start_gitlab_kas()
    kubeconfig = kas.kubeconfig(_ci_bearer(gitlab_api), tmp_path / "kubeconfig", life_namespace)
    async with started_runtime(admin_kubeconfig) as runtime:
        runtime.apply(_spec(kas.agent_url(scheme), life_namespace))
        await first_success(kubeconfig, 30)

        await asyncio.to_thread(kas.kill)
        down = await kubectl(kubeconfig, "get", "--raw", "/version", "--request-timeout=3s")
        assert down.returncode != 0, "nothing answers while kas is dead"
        await asyncio.to_thread(kas.start)
        restarted = time.monotonic()
        await first_success(kubeconfig, 30)
        back_after = time.monotonic() - restarted
        print(f"[interop] {scheme}: serving {back_after:.2f}s after GitLab kas restarted")
        assert back_after <= BACK_WITHIN, f"served again only after {back_after:.1f}s"
        listed = await kubectl(kubeconfig, "get", "configmaps", "-o", "name")
        assert listed.returncode == 0, listed.stderr
