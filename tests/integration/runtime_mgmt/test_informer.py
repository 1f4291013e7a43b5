"""The informer against a real kube-apiserver: list+watch, resume, bookmarks, relist after 410 Gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from agent_runtime.informer import (
    EventType,
    Informer,
    KubeObject,
    ResourceKind,
    SharedInformers,
)
from agent_runtime.kube import KubeAccess
from tests.integration.runtime_mgmt.conftest import eventually
from tests.support.k8s_cluster import LocalCluster

Change = tuple[EventType, str, str | None]
TOKEN_SECRET_LABEL = "test.agentk.dev/token-for"
"""The label these tests select on; its value names the agent a Secret belongs to."""


def _secret(name: str, agent: str | None, value: str = "dG9rZW4=") -> dict[str, Any]:
    labels = {TOKEN_SECRET_LABEL: agent} if agent else {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "data": {"token": value},
    }


def _create(cluster: LocalCluster, namespace: str, body: dict[str, Any]) -> None:
    status, info = cluster.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body)
    assert status == 201, info


def _by_agent(obj: KubeObject) -> Iterable[str]:
    value = (obj.get("metadata") or {}).get("labels", {}).get(TOKEN_SECRET_LABEL)
    return [value] if value else []


def _recorder(changes: list[Change]):  # type: ignore[no-untyped-def]
    def record(event: EventType, old: KubeObject | None, new: KubeObject | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        changes.append((event, obj["metadata"]["name"], (obj.get("data") or {}).get("token")))

    return record


@contextlib.asynccontextmanager
async def running(informer: Informer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(informer.run(), name="test-informer")
    try:
        async with asyncio.timeout(15):
            await informer.wait_synced()
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_list_then_watch_with_label_selector_and_index(
    kube: KubeAccess, k8s_cluster: LocalCluster, namespace: str
) -> None:
    _create(k8s_cluster, namespace, _secret("a-token", "agent-a"))
    _create(k8s_cluster, namespace, _secret("unrelated", None))
    kind = ResourceKind("v1", "secrets", namespace=namespace, label_selector=TOKEN_SECRET_LABEL)
    informer = Informer(kube, kind, indexers={"agent": _by_agent})
    changes: list[Change] = []
    informer.add_handler(_recorder(changes))
    async with running(informer):
        assert informer.store.keys() == {f"{namespace}/a-token"}
        assert changes == [(EventType.ADDED, "a-token", "dG9rZW4=")]
        _create(k8s_cluster, namespace, _secret("b-token", "agent-b"))
        await eventually(lambda: len(changes) == 2)
        status, info = k8s_cluster.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/secrets/a-token",
            {"data": {"token": "cm90YXRlZA=="}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert status == 200, info
        await eventually(lambda: len(changes) == 3)
        status, _ = k8s_cluster.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/b-token")
        assert status == 200
        await eventually(lambda: len(changes) == 4)
    assert changes[1:] == [
        (EventType.ADDED, "b-token", "dG9rZW4="),
        (EventType.MODIFIED, "a-token", "cm90YXRlZA=="),
        (EventType.DELETED, "b-token", "dG9rZW4="),
    ]
    [rotated] = informer.store.by_index("agent", "agent-a")
    assert rotated["data"]["token"] == "cm90YXRlZA=="
    assert informer.store.by_index("agent", "agent-b") == []
    assert informer.lists == 1


async def test_watch_resumes_from_last_resource_version(
    kube: KubeAccess, k8s_cluster: LocalCluster, namespace: str
) -> None:
    kind = ResourceKind("v1", "secrets", namespace=namespace)
    informer = Informer(kube, kind, watch_timeout_range=(1, 1))  # the server ends every watch after 1 s
    changes: list[Change] = []
    informer.add_handler(_recorder(changes))
    async with running(informer):
        for i in range(3):
            _create(k8s_cluster, namespace, _secret(f"s{i}", None))
            await asyncio.sleep(1.2)  # each create lands in a different watch
        await eventually(lambda: len(changes) == 3)
    assert [name for _, name, _ in changes] == ["s0", "s1", "s2"]
    assert informer.lists == 1  # resumed, never relisted


async def test_bookmarks_carry_progress_past_filtered_events(
    kube: KubeAccess, k8s_cluster: LocalCluster, namespace: str
) -> None:
    # Only labelled ConfigMaps are watched; unlabelled ones are written meanwhile, so the cache's version
    # can only advance through bookmarks (the API server sends them shortly before a watch's deadline).
    kind = ResourceKind("v1", "configmaps", namespace=namespace, label_selector="informer-test=watched")
    informer = Informer(kube, kind, watch_timeout_range=(4, 4))
    async with running(informer):
        listed_version = informer.resource_version
        for i in range(40):
            status, info = k8s_cluster.request(
                "POST", f"/api/v1/namespaces/{namespace}/configmaps", {"metadata": {"name": f"noise-{i}"}}
            )
            assert status == 201, info
            if informer.bookmarks:
                break
            await asyncio.sleep(0.5)
        await eventually(lambda: informer.bookmarks >= 1)
    assert len(informer.store) == 0
    assert informer.lists == 1
    assert informer.resource_version is not None
    assert listed_version is not None
    assert int(informer.resource_version) > int(listed_version)


async def test_shared_informers_hand_out_one_informer_per_kind(kube: KubeAccess, namespace: str) -> None:
    shared = SharedInformers(kube)
    task = asyncio.create_task(shared.run(), name="test-shared-informers")
    try:
        await shared.wait_started()
        kind = ResourceKind("v1", "secrets", namespace=namespace, label_selector=TOKEN_SECRET_LABEL)
        first, second = shared.get(kind), shared.get(ResourceKind(**kind.__dict__))
        assert first is second
        other = shared.get(ResourceKind("v1", "configmaps", namespace=namespace))
        assert other is not first
        async with asyncio.timeout(15):
            await first.wait_synced()
            await other.wait_synced()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("status_path", ["/api/v1/namespaces/does-not-matter/nonexistents"])
async def test_a_failing_resource_does_not_stop_the_others(
    kube: KubeAccess, namespace: str, status_path: str
) -> None:
    shared = SharedInformers(kube)
    task = asyncio.create_task(shared.run(), name="test-shared-informers-failing")
    try:
        await shared.wait_started()
        broken = shared.get(ResourceKind("v1", "nonexistents", namespace="does-not-matter"))
        good = shared.get(ResourceKind("v1", "configmaps", namespace=namespace))
        async with asyncio.timeout(15):
            await good.wait_synced()
        assert broken.kind.path() == status_path
        assert not broken.synced
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_store_keeps_what_the_transform_returns(
    kube: KubeAccess, k8s_cluster: LocalCluster, namespace: str
) -> None:
    _create(k8s_cluster, namespace, _secret("listed", "agent-a"))
    kind = ResourceKind("v1", "secrets", namespace=namespace, label_selector=TOKEN_SECRET_LABEL)
    plain = Informer(kube, kind)
    seen: list[dict[str, Any]] = []

    def only_data(obj: dict[str, Any]) -> KubeObject:
        seen.append(obj)
        meta = obj["metadata"]
        return {
            "metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion")},
            "data": obj["data"],
        }

    trimmed = Informer(kube, kind, transform=only_data)
    async with running(plain), running(trimmed):
        _create(k8s_cluster, namespace, _secret("watched", "agent-b"))
        key = f"{namespace}/watched"
        await eventually(lambda: plain.store.get(key) is not None and trimmed.store.get(key) is not None)
        for name in ("listed", "watched"):
            full = plain.store.get(f"{namespace}/{name}")
            assert full is not None
            assert "managedFields" not in full["metadata"]  # the default transform
            assert full["metadata"]["uid"]
            assert trimmed.store.get(f"{namespace}/{name}") == {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": full["metadata"]["resourceVersion"],
                },
                "data": {"token": "dG9rZW4="},
            }
    assert [o["metadata"]["name"] for o in seen] == ["listed", "watched"]  # from the list, then the watch
    assert all("managedFields" in o["metadata"] for o in seen)  # the transform sees the object as sent
