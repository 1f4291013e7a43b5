"""A GitLabAgent deleted while the operator's watch did not see it (events lost while the watch
reconnected): no finalizer holds the deletion for the operator (handlers.py), so the sweep's list of every
GitLabAgent is what finds the resource gone, and the controller drains its worker.

The real controller against the real API server, with the sweep's real list; the runtime is a recorder
(what the controller asks to run), so no kas is involved.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from agent_operator.api import API_VERSION, PLURAL
from agent_operator.controller import AgentController
from agent_operator.events import EventRecorder
from agent_operator.kube_api import KubeApi, group_path
from agent_operator.label_sweep import list_references
from agent_operator.mapping import ALLOWED_AGENTS_ANNOTATION, AgentKey
from agent_operator.metrics import OperatorMetrics
from agent_operator.policy_flags import AdmissionLimits
from agent_operator.service_accounts import ServiceAccounts
from agent_operator.sources import Sources
from agent_operator.status_writer import StatusWriter
from agent_runtime.kube import load_kube_access
from agent_runtime.spec import WorkerSnapshot, WorkerSpec
from agent_runtime.versions import KubernetesSupport
from tests.integration.operator_api.conftest import gitlabagent_crd, kubectl
from tests.security.budget_support import eventually
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.integration
__all__ = ["gitlabagent_crd", "kubectl"]  # fixtures


class _Workers:
    """The controller's WorkerRuntime: records the workers it wants."""

    def __init__(self) -> None:
        self.running: dict[str, WorkerSpec] = {}
        self.removed: list[str] = []

    def apply(self, spec: WorkerSpec) -> None:
        self.running[spec.id] = spec

    async def remove(self, worker_id: str, grace: float | None = None) -> None:
        self.removed.append(worker_id)
        self.running.pop(worker_id, None)

    def snapshot(self, worker_id: str) -> WorkerSnapshot | None:
        return None


@contextlib.asynccontextmanager
async def _controller(
    admin_kubeconfig: Path, namespace: str
) -> AsyncIterator[tuple[AgentController, KubeApi, _Workers]]:
    kube = await asyncio.to_thread(load_kube_access, str(admin_kubeconfig))
    api = KubeApi(kube)
    metrics = OperatorMetrics(CollectorRegistry())
    events = EventRecorder(api, "test")
    workers = _Workers()
    controller = AgentController(
        workers,
        Sources(api, [namespace]),
        StatusWriter(api, events, workers.snapshot, metrics),
        events,
        metrics,
        kubernetes_support=KubernetesSupport(),
        cluster_version=None,
        drain_grace=1.0,
        service_accounts=ServiceAccounts([namespace]),
        limits=AdmissionLimits(),
    )
    controller.expect({})  # nothing listed at start: admit agents as they come
    run = asyncio.create_task(controller.run(), name="test-controller")
    try:
        yield controller, api, workers
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await api.close()
        await kube.close()


def _create_agent(cluster: LocalCluster, namespace: str, name: str) -> None:
    """A GitLabAgent and its own token Secret (one token runs one agent: admission.py)."""
    token = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-token", "annotations": {ALLOWED_AGENTS_ANNOTATION: name}},
        "data": {"token": base64.b64encode(f"glagent-{name}-{'t' * 40}".encode()).decode()},
    }
    status, info = cluster.request("POST", f"/api/v1/namespaces/{namespace}/secrets", token)
    assert status in (201, 409), info  # 409: created before, for the same name
    body = {
        "apiVersion": API_VERSION,
        "kind": "GitLabAgent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"kasAddress": "wss://127.0.0.1:1", "tokenSecretRef": {"name": f"{name}-token"}},
    }
    status, info = cluster.request("POST", f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}", body)
    assert status == 201, info


def _body(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    status, body = cluster.request("GET", group_path(API_VERSION, namespace, PLURAL, name))
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def _delete_agent(cluster: LocalCluster, namespace: str, name: str) -> None:
    status, info = cluster.request("DELETE", group_path(API_VERSION, namespace, PLURAL, name))
    assert status == 200, info


async def test_the_sweep_finds_a_deletion_the_watch_missed(
    k8s_cluster: LocalCluster, admin_kubeconfig: Path, namespace: str, gitlabagent_crd: str
) -> None:
    gone, kept, renewed, newer = (AgentKey(namespace, n) for n in ("gone", "kept", "renewed", "newer"))
    async with _controller(admin_kubeconfig, namespace) as (controller, api, workers):
        for key in (gone, kept, renewed):
            _create_agent(k8s_cluster, namespace, key.name)
            controller.observe(key, _body(k8s_cluster, namespace, key.name))
        await eventually(lambda: len(workers.running) == 3)

        # Deleted without the controller hearing of it; `renewed` deleted and created again, and `newer`
        # created, after the list: both are seen after it began and must stay.
        _delete_agent(k8s_cluster, namespace, gone.name)
        listing = await list_references(api, (namespace,))
        _delete_agent(k8s_cluster, namespace, renewed.name)
        for key in (renewed, newer):
            _create_agent(k8s_cluster, namespace, key.name)
            controller.observe(key, _body(k8s_cluster, namespace, key.name))
        await eventually(lambda: newer.worker_id in workers.running)
        assert listing.uids.isdisjoint({_body(k8s_cluster, namespace, renewed.name)["metadata"]["uid"]})

        controller.forget_unlisted(listing)
        await eventually(lambda: gone.worker_id in workers.removed)

        assert not controller.handles(gone)
        assert workers.removed == [gone.worker_id]
        assert sorted(workers.running) == sorted(k.worker_id for k in (kept, renewed, newer))
        assert all(controller.handles(k) for k in (kept, renewed, newer))
