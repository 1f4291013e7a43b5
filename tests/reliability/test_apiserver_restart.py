"""The kube-apiserver restarts under watches and tunnelled requests (issue 13 §3).

A cluster of this test's own (tests/support/k8s_cluster.py LocalCluster: the session's is shared), the
apiserver stopped and started again on the same port with etcd kept. The runtime's shared informer
watches ConfigMaps; writes happen before the stop and at once after the start (while the informer still
backs off), and the informer must end with exactly the apiserver's objects, having emitted an event for
every write's resourceVersion. A tunnelled watch in flight ends; tunnelled requests while it is down get
a Kubernetes Status; afterwards they succeed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.informer import EventType, KubeObject, ResourceKind
from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from tests.integration.system.conftest import Certs, certs  # noqa: F401 - fixture
from tests.reliability.chain import Outcome, fault_chain, watch_end
from tests.reliability.figures import record
from tests.support.k8s_cluster import ClusterStartError, LocalCluster

NAMESPACE = "restart"
Seen = tuple[EventType, str, str, str | None]
"""(event, name, resourceVersion, data.value) as the informer emitted it."""


@pytest.fixture
async def own_cluster(k8s_cluster: LocalCluster) -> AsyncIterator[LocalCluster]:
    cluster = LocalCluster(k8s_cluster.assets, stop_grace=5.0)
    await asyncio.to_thread(cluster.start)
    try:
        await asyncio.to_thread(cluster.create_namespace, NAMESPACE)
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


@pytest.fixture
async def own_runtime(own_cluster: LocalCluster) -> AsyncIterator[Runtime]:
    kube: KubeAccess = await asyncio.to_thread(load_kube_access, str(own_cluster.admin_kubeconfig))
    rt = Runtime(kube, RuntimeSettings(observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY))
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(30):
            await rt.stop(2.0)
        await kube.close()


async def _write(cluster: LocalCluster, method: str, name: str, value: str | None = None) -> str:
    """Create/replace/delete ConfigMap `name` as admin; the resourceVersion the write produced."""
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    body: dict[str, Any] | None = None
    if value is not None:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"value": value}}
    if method != "POST":
        path = f"{path}/{name}"
    status, info = await asyncio.to_thread(cluster.request, method, path, body)
    assert status in (200, 201), info
    return str((info.get("metadata") or {}).get("resourceVersion", ""))  # DELETE answers a Status


async def _start_again(cluster: LocalCluster) -> int:
    """start_apiserver(), once more if the child died before exec: this process has grpc's threads, and
    a fork with a preexec_fn (tests/support/process.py) from it has crashed (-11) now and then. Returns the
    number of attempts."""
    for attempt in (1, 2):
        try:
            await asyncio.to_thread(cluster.start_apiserver)
        except ClusterStartError:
            if attempt == 2:
                raise
        else:
            return attempt
    raise AssertionError("unreachable")


async def _list(cluster: LocalCluster) -> dict[str, tuple[str, str | None]]:
    status, info = await asyncio.to_thread(
        cluster.request, "GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    )
    assert status == 200, info
    return {
        i["metadata"]["name"]: (i["metadata"]["resourceVersion"], (i.get("data") or {}).get("value"))
        for i in info["items"]
        if i["metadata"]["name"].startswith("cm-")
    }


async def test_apiserver_restart(
    own_cluster: LocalCluster,
    own_runtime: Runtime,
    certs: Certs,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    seen: list[Seen] = []

    def on_change(event: EventType, old: KubeObject | None, new: KubeObject | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        meta = obj["metadata"]
        seen.append((event, meta["name"], meta["resourceVersion"], (obj.get("data") or {}).get("value")))

    informer = own_runtime.informers.get(ResourceKind("v1", "configmaps", namespace=NAMESPACE))
    informer.add_handler(on_change)
    async with asyncio.timeout(30):
        await informer.wait_synced()
    written: list[tuple[str, str]] = []  # (name, resourceVersion) of every create/update
    for i in range(5):
        written.append((f"cm-{i}", await _write(own_cluster, "POST", f"cm-{i}", "v1")))

    async with fault_chain(own_runtime, certs, tmp_path / "kas", NAMESPACE) as chain:
        tunnelled_watch = await chain.open_watch()
        written.append(("cm-0", await _write(own_cluster, "PUT", "cm-0", "v1b")))  # just before the stop
        stopped_at = time.monotonic()
        await asyncio.to_thread(own_cluster.stop_apiserver)
        watch_ended = await watch_end(tunnelled_watch, within=30)
        while_down: list[Outcome] = [await chain.get() for _ in range(3)]
        start_attempts = await _start_again(own_cluster)
        down_s = time.monotonic() - stopped_at
        # At once, while the informer still backs off: it must catch these by resuming.
        for i in range(2, 5):
            written.append((f"cm-{i}", await _write(own_cluster, "PUT", f"cm-{i}", "v2")))
        written.append(("cm-5", await _write(own_cluster, "POST", "cm-5", "v2")))
        await _write(own_cluster, "DELETE", "cm-1")

        truth = await _list(own_cluster)
        started = time.monotonic()
        async with asyncio.timeout(120):
            while {  # noqa: ASYNC110 - polling the informer's store, bounded by the timeout
                o["metadata"]["name"]: (o["metadata"]["resourceVersion"], (o.get("data") or {}).get("value"))
                for o in informer.store.items()
            } != truth:
                await asyncio.sleep(0.1)
        informer_caught_up_s = time.monotonic() - started

        started = time.monotonic()
        async with asyncio.timeout(120):
            while not (await chain.get()).ok:  # noqa: ASYNC110 - retrying a request, bounded
                await asyncio.sleep(0.2)
        tunnel_back_s = time.monotonic() - started
        after = [await chain.get() for _ in range(20)]

    seen_versions = {(name, rv) for _, name, rv, _ in seen}
    missed = [w for w in written if w not in seen_versions]
    assert not missed, f"the informer emitted no event for {missed}"
    assert any(e is EventType.DELETED and n == "cm-1" for e, n, _, _ in seen)
    assert watch_ended != "hung"
    assert all(o.clean_error for o in while_down), while_down
    assert all(o.ok for o in after), [o for o in after if not o.ok]
    record(
        "apiserver restart",
        down_s=down_s,
        apiserver_start_attempts=start_attempts,
        writes=len(written) + 1,
        events_missed=len(missed),
        informer_caught_up_after_s=informer_caught_up_s,
        tunnelled_watch=watch_ended,
        while_down=sorted({f"{o.status} {o.detail[:200]}" for o in while_down}),
        tunnel_serving_again_after_s=tunnel_back_s,
        after_recovery_failed=f"{sum(not o.ok for o in after)}/{len(after)}",
    )
