"""The operator with a kubeconfig that names a proxy and a TLS server name: every client follows them.

kopf builds its own requests; it gets the operator's session, which carries the kubeconfig's
`proxy-url` and `tls-server-name` itself. The API server's name here resolves through the proxy only, and
its certificate does not list that name, so a request that skipped either would fail.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import KasProcess, Kube, OperatorProcess, gitlab_agent, phase, secret, wait_for
from tests.integration.transport.peers import ConnectProxy

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    """An HTTP CONNECT proxy on loopback, served by an event loop of its own in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="connect-proxy", daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        ConnectProxy(hosts={"cluster.test": "127.0.0.1"}).start(), loop
    ).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_kopf_and_the_workers_reach_the_api_server_through_the_kubeconfig_proxy(
    kube: Kube,
    kas: KasProcess,
    agent_namespace: str,
    operator_credentials: Path,
    proxy: ConnectProxy,
    tmp_path: Path,
) -> None:
    port = kube.cluster.url.rsplit(":", 1)[1]
    document = yaml.safe_load(operator_credentials.read_text())
    cluster = document["clusters"][0]["cluster"]
    cluster["server"] = f"https://cluster.test:{port}"
    cluster["proxy-url"] = f"http://127.0.0.1:{proxy.port}"
    cluster["tls-server-name"] = "kubernetes.default"
    routed = tmp_path / "routed.kubeconfig"
    routed.write_text(yaml.safe_dump(document))

    operator = OperatorProcess(tmp_path, routed, agent_namespace)
    operator.start()
    try:
        kube.apply(secret(agent_namespace, "routed-token", kas.agents[6].token))
        kube.apply(gitlab_agent(agent_namespace, "routed", kas.agent_url, "routed-token"))
        wait_for("Connected", lambda: phase(kube.gla(agent_namespace, "routed")) == "Connected", timeout=40)
    finally:
        code = operator.stop()
    assert code == 0, operator.log()[-5000:]
    assert proxy.requests, "nothing went through the proxy"
    assert {r.start_line[1] for r in proxy.requests} == {f"cluster.test:{port}"}
