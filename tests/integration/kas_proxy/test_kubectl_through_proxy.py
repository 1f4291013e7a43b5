"""Real kubectl, through the proxy and a stand-in agent, against the real kube-apiserver."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.integration.kas_proxy.conftest import AGENT, AGENT_ACCESS_JOB
from tests.integration.kas_proxy.harness import ProxyHarness, manifest, wait_until
from tests.integration.kas_proxy.loopback_router import LoopbackRouter
from tests.support.k8s_cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_get_namespaces(proxy: ProxyHarness[LoopbackRouter], namespace: str) -> None:
    kubeconfig = proxy.kubeconfig(AGENT.id, AGENT_ACCESS_JOB)

    result = await proxy.kubectl(kubeconfig, "get", "namespaces", "-o", "name")

    assert result.code == 0, result.stderr
    assert f"namespace/{namespace}" in result.stdout.split()
    call = proxy.router.calls[-1]
    assert call.method == "/gitlab.agent.kubernetes_api.rpc.KubernetesApi/MakeRequest"
    assert call.metadata == {"kas-hop-routing-agent-id": ["42"]}
    assert call.header is not None
    assert call.header.request.url_path == "/api/v1/namespaces"
    assert not call.header.HasField("extra")  # access_as agent: the agent's own identity
    assert "Authorization" not in call.header.request.header  # kas's credential never reaches the agent
    assert call.header.request.header["Via"].value[-1].startswith("gRPC/1.0 gitlab-kas/")
    assert call.request_frames == ["header", "trailer"]


async def test_apply_and_delete(
    proxy: ProxyHarness[LoopbackRouter], namespace: str, k8s_cluster: LocalCluster
) -> None:
    kubeconfig = proxy.kubeconfig(AGENT.id, AGENT_ACCESS_JOB)
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "through-proxy", "namespace": namespace},
        "data": {"big": "x" * 100_000},  # several 32 KiB data frames each way
    }

    applied = await proxy.kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest(config_map))

    assert applied.code == 0, applied.stderr
    assert "configmap/through-proxy created" in applied.stdout
    status, stored = k8s_cluster.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/through-proxy")
    assert status == 200
    assert stored["data"]["big"] == "x" * 100_000
    assert proxy.router.calls[-1].request_frames.count("data") >= 3

    deleted = await proxy.kubectl(kubeconfig, "delete", "configmap", "through-proxy", "-n", namespace)

    assert deleted.code == 0, deleted.stderr
    status, _ = k8s_cluster.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/through-proxy")
    assert status == 404


async def test_watch_streams_events(
    proxy: ProxyHarness[LoopbackRouter], namespace: str, k8s_cluster: LocalCluster
) -> None:
    kubeconfig = proxy.kubeconfig(AGENT.id, AGENT_ACCESS_JOB)
    watcher = await asyncio.create_subprocess_exec(
        "kubectl",
        "get",
        "configmaps",
        "-n",
        namespace,
        "--watch-only",
        "-o",
        "name",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(proxy.work_dir)},
    )
    assert watcher.stdout is not None
    try:
        # the watch is open once its call reached the apiserver; then events must arrive one by one
        await wait_until(
            lambda: any(c.header and "watch" in c.header.request.query for c in proxy.router.calls), 20
        )
        seen: list[str] = []
        for name in ("first", "second"):
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}
            status, _ = k8s_cluster.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
            assert status == 201
            async with asyncio.timeout(20):
                line = (await watcher.stdout.readline()).decode().split()
            seen.append(" ".join(line))
        assert seen == ["configmap/first", "configmap/second"]
    finally:
        watcher.kill()
        await watcher.communicate()
    # the client went away: the proxy abandons the call, which releases the tunnel
    watch_call = next(c.call for c in proxy.router.calls if c.header and "watch" in c.header.request.query)
    assert watch_call is not None
    await wait_until(lambda: watch_call.cancelled)


async def test_default_namespace_from_context(proxy: ProxyHarness[LoopbackRouter]) -> None:
    kubeconfig = proxy.kubeconfig(AGENT.id, AGENT_ACCESS_JOB)

    result = await proxy.kubectl(
        kubeconfig, "config", "view", "--minify", "-o", "jsonpath={.contexts[0].name}"
    )

    assert result.code == 0, result.stderr
    assert result.stdout == "group1/agents:team-agent"
