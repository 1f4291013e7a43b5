"""Relist after 410 Gone, against an API server without watch cache whose etcd history is compacted.

With the watch cache on, kube-apiserver serves old resourceVersions from its cache window; only a watch
that reaches etcd below the compaction revision gets the real 410 ("Expired"), so this module starts its
own control plane with `--watch-cache=false`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agent_runtime.informer import EventType, Informer, KubeObject, ResourceKind
from agent_runtime.kube import KubeAccess, load_kube_access
from tests.integration.runtime_mgmt.conftest import eventually
from tests.support.k8s_cluster import LocalCluster, find_assets
from tests.support.require import require


@pytest.fixture(scope="module")
def etcd_backed_cluster() -> Iterator[LocalCluster]:
    assets = require(find_assets)  # skips, or fails under REQUIRE_K8S=1, like every substrate fixture
    cluster = LocalCluster(assets, extra_apiserver_args=("--watch-cache=false",))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def direct_kube(etcd_backed_cluster: LocalCluster) -> AsyncIterator[KubeAccess]:
    access = await asyncio.to_thread(load_kube_access, str(etcd_backed_cluster.admin_kubeconfig))
    try:
        yield access
    finally:
        await access.close()


def _etcd(cluster: LocalCluster, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the test's own etcd on loopback
        cluster.etcd_url + path, data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - same
        result: dict[str, Any] = json.loads(response.read())
        return result


def compact_etcd(cluster: LocalCluster) -> None:
    """Compact etcd's history up to its current revision: every older resourceVersion is gone."""
    revision = _etcd(cluster, "/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
    _etcd(cluster, "/v3/kv/compaction", {"revision": str(revision), "physical": True})


def _secret(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"k": "dg=="}}


async def test_relist_after_410_gone_reconciles_the_store(
    direct_kube: KubeAccess, etcd_backed_cluster: LocalCluster
) -> None:
    cluster, namespace = etcd_backed_cluster, "gone-test"
    cluster.create_namespace(namespace)
    base = f"/api/v1/namespaces/{namespace}/secrets"
    for name in ("kept", "vanishes"):
        assert cluster.request("POST", base, _secret(name))[0] == 201
    informer = Informer(direct_kube, ResourceKind("v1", "secrets", namespace=namespace))
    changes: list[tuple[EventType, str]] = []

    def record(event: EventType, old: KubeObject | None, new: KubeObject | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        changes.append((event, obj["metadata"]["name"]))

    task = asyncio.create_task(informer.run(), name="test-informer-first")
    async with asyncio.timeout(15):
        await informer.wait_synced()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert informer.store.keys() == {f"{namespace}/kept", f"{namespace}/vanishes"}

    # While the informer is away: one Secret goes, one arrives, and etcd forgets the history.
    assert cluster.request("DELETE", f"{base}/vanishes")[0] == 200
    assert cluster.request("POST", base, _secret("arrives"))[0] == 201
    compact_etcd(cluster)

    informer.add_handler(record, replay=False)
    task = asyncio.create_task(informer.run(), name="test-informer-resumed")  # resumes from the old version
    try:
        await eventually(lambda: informer.lists == 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert informer.store.keys() == {f"{namespace}/kept", f"{namespace}/arrives"}
    assert sorted(changes) == [(EventType.ADDED, "arrives"), (EventType.DELETED, "vanishes")]
