"""bench/kaspeer (the Go stand-in for kas in `latency.py --kas go`) against a real Runtime and apiserver.

Besides keeping the benchmark's peer working, this is the runtime's one check against a kas side written
with another gRPC stack (grpc-go): descriptor, RequestInfo, the HttpRequest frames and the answer.
"""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest
from _kaspeer import KasPeerProcess
from _procs import RuntimeChild, bench_agents

from tests.support.k8s_cluster import LocalCluster
from tests.support.require import missing


@pytest.fixture
def go_available() -> None:
    if shutil.which("go") is None:
        missing("go is needed to build bench/kaspeer")


@pytest.mark.usefixtures("go_available")
async def test_requests_reach_the_apiserver_through_the_go_peer(
    k8s_cluster: LocalCluster, tmp_path: Path
) -> None:
    peer = KasPeerProcess(tmp_path / "kaspeer")
    await peer.start(time_limit=600)
    runtime = RuntimeChild(k8s_cluster.admin_kubeconfig, tmp_path / "runtime.log")
    try:
        await runtime.start()
        agent = bench_agents(1)[0]
        await runtime.command(cmd="apply", kas=peer.agent_url, agents=[[agent.id, agent.token]])
        assert (await runtime.command(cmd="wait", timeout=60))["ok"]
        assert peer.proxy_ca is not None
        tls = ssl.create_default_context(cafile=str(peer.proxy_ca))
        headers = {"Authorization": "Bearer any"}
        async with aiohttp.ClientSession() as session:
            for _ in range(3):  # each request takes a fresh one-shot tunnel
                async with session.get(f"{peer.proxy_url}/version", ssl=tls, headers=headers) as r:
                    assert r.status == 200
                    body = await r.json()
            async with session.get(f"{peer.proxy_url}/api/v1/namespaces/nope", ssl=tls, headers=headers) as r:
                assert r.status == 404
                assert (await r.json())["reason"] == "NotFound"
        assert body["gitVersion"] == k8s_cluster.version
    finally:
        await runtime.stop()
        peer.stop()
