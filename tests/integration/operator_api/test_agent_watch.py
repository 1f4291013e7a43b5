"""The operator's own watch of GitLabAgents (agent_watch.py) against the real API server: what exists is
handed over once delivery starts, then every change; a deletion (or a deletion in progress) reports the
resource gone with its uid; an earlier version's finalizer comes off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent_operator.agent_watch import FINALIZER, AgentWatch
from agent_operator.api import API_VERSION, PLURAL
from agent_operator.kube_api import MERGE_PATCH, KubeApi, group_path
from agent_operator.mapping import AgentKey
from agent_runtime.informer import SharedInformers
from agent_runtime.kube import load_kube_access
from tests.integration.operator_api.conftest import gitlabagent_crd, kubectl
from tests.security.budget_support import eventually
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.integration
__all__ = ["gitlabagent_crd", "kubectl"]  # fixtures


class _Controller:
    def __init__(self) -> None:
        self.observed: list[tuple[str, str]] = []
        """(name, spec.kasAddress) per observation."""
        self.gone: list[tuple[str, str]] = []
        """(name, uid) per deletion."""

    def observe(self, key: AgentKey, body: Mapping[str, Any]) -> None:
        self.observed.append((key.name, body["spec"]["kasAddress"]))

    def forget(self, key: AgentKey, uid: str) -> None:
        self.gone.append((key.name, uid))


@contextlib.asynccontextmanager
async def _watch(admin_kubeconfig: Path, namespace: str) -> AsyncIterator[tuple[AgentWatch, _Controller]]:
    kube = await asyncio.to_thread(load_kube_access, str(admin_kubeconfig))
    api = KubeApi(kube)
    informers = SharedInformers(kube)
    controller = _Controller()
    watch = AgentWatch(api, [namespace], controller.observe, controller.forget)
    tasks = [asyncio.create_task(informers.run(), name="test-informers")]
    try:
        await informers.wait_started()
        watch.start(informers.get)
        tasks.append(asyncio.create_task(watch.run(), name="test-agent-finalizers"))
        yield watch, controller
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.close()
        await kube.close()


def _agent(namespace: str, name: str, kas: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "GitLabAgent",
        "metadata": {"name": name, "namespace": namespace, **metadata},
        "spec": {"kasAddress": kas, "tokenSecretRef": {"name": "token"}},
    }


def _post(cluster: LocalCluster, body: dict[str, Any]) -> str:
    namespace = body["metadata"]["namespace"]
    status, created = cluster.request("POST", f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}", body)
    assert status == 201, created
    return str(created["metadata"]["uid"])


def _merge_patch(cluster: LocalCluster, path: str, patch: dict[str, Any]) -> None:
    status, answer = cluster.request("PATCH", path, patch, headers={"Content-Type": MERGE_PATCH})
    assert status == 200, answer


async def test_the_watch_hands_over_changes_and_deletions(
    k8s_cluster: LocalCluster, admin_kubeconfig: Path, namespace: str, gitlabagent_crd: str
) -> None:
    first_uid = _post(k8s_cluster, _agent(namespace, "first", "wss://127.0.0.1:1"))
    async with _watch(admin_kubeconfig, namespace) as (watch, controller):
        await asyncio.sleep(0.5)
        assert controller.observed == []  # nothing before delivery starts (the Secret caches sync first)
        delivery = asyncio.create_task(watch.deliver(), name="test-delivery")
        await asyncio.wait_for(delivery, 20)
        assert controller.observed == [("first", "wss://127.0.0.1:1")]

        path = group_path(API_VERSION, namespace, PLURAL, "first")
        _merge_patch(k8s_cluster, path, {"spec": {"kasAddress": "wss://127.0.0.1:2"}})
        await eventually(lambda: ("first", "wss://127.0.0.1:2") in controller.observed)

        status, answer = k8s_cluster.request("DELETE", path)
        assert status == 200, answer
        await eventually(lambda: controller.gone == [("first", first_uid)])

        # Another's finalizer keeps a deleted resource a while: the agent counts as gone at once.
        kept_uid = _post(
            k8s_cluster, _agent(namespace, "kept", "wss://127.0.0.1:3", finalizers=["example.com/x"])
        )
        kept = group_path(API_VERSION, namespace, PLURAL, "kept")
        await eventually(lambda: ("kept", "wss://127.0.0.1:3") in controller.observed)
        status, answer = k8s_cluster.request("DELETE", kept)
        assert status == 200, answer
        await eventually(lambda: ("kept", kept_uid) in controller.gone)
        _merge_patch(k8s_cluster, kept, {"metadata": {"finalizers": None}})


async def test_an_earlier_versions_finalizer_comes_off(
    k8s_cluster: LocalCluster, admin_kubeconfig: Path, namespace: str, gitlabagent_crd: str
) -> None:
    others = ["example.com/before", FINALIZER, "example.com/after"]
    _post(k8s_cluster, _agent(namespace, "upgraded", "wss://127.0.0.1:1", finalizers=others))
    path = group_path(API_VERSION, namespace, PLURAL, "upgraded")

    def finalizers() -> list[str]:
        status, body = k8s_cluster.request("GET", path)
        assert status == 200, body
        return list(body["metadata"].get("finalizers") or [])

    async with _watch(admin_kubeconfig, namespace) as (watch, _):
        await asyncio.wait_for(watch.deliver(), 20)
        await eventually(lambda: finalizers() == ["example.com/before", "example.com/after"])
    _merge_patch(k8s_cluster, path, {"metadata": {"finalizers": None}})  # let the namespace go
