"""Finding 7: anyone who may label a Secret could fill the operator's cache with its data.

On 8048859 every Secret labelled `agentk.dev/watched=true` was cached with its data, whether or not a
GitLabAgent referred to it (40 Secrets of 0.9 MiB: +55 MiB RSS). Now the cache keeps data only for objects
read for a GitLabAgent, and the periodic sweep takes the label off the others.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from agent_operator.api import API_VERSION, PLURAL
from agent_operator.kube_api import KubeApi
from agent_operator.label_sweep import sweep_unreferenced
from agent_operator.mapping import SourceKind, SourceRef
from agent_operator.sources import WATCHED_LABEL, Sources
from agent_runtime.informer import KubeObject, SharedInformers
from agent_runtime.kube import KubeAccess
from tests.integration.operator_api.conftest import gitlabagent_crd, kubectl
from tests.security.budget_support import eventually, kube
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.integration
__all__ = ["gitlabagent_crd", "kube", "kubectl"]  # fixtures

BIG_SECRETS = 40
BIG_VALUE = base64.b64encode(b"s" * (900 * 1024)).decode()
TOKEN_VALUE = base64.b64encode(b"t0ken").decode()


def _create_secret(cluster: LocalCluster, namespace: str, name: str, value: str, *, labelled: bool) -> None:
    labels = {WATCHED_LABEL: "true"} if labelled else {}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "data": {"token": value},
    }
    status, info = cluster.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body, timeout=30)
    assert status == 201, info


def _cached_bytes(objects: list[KubeObject]) -> int:
    return sum(len(json.dumps(obj, default=dict)) for obj in objects)


@contextlib.asynccontextmanager
async def _sources(kube: KubeAccess, namespace: str) -> AsyncIterator[tuple[Sources, KubeApi]]:
    informers = SharedInformers(kube)
    task = asyncio.create_task(informers.run(), name="test-informers")
    api = KubeApi(kube)
    try:
        await informers.wait_started()
        sources = Sources(api, [namespace])
        sources.start(informers.get, lambda source: None)
        await sources.wait_synced()
        yield sources, api
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


def _store(sources: Sources) -> list[KubeObject]:
    return [obj for watcher in sources._informers.values() for obj in watcher.store.items()]


async def test_labelled_secrets_nobody_refers_to_are_cached_without_data(
    k8s_cluster: LocalCluster, kube: KubeAccess, namespace: str, gitlabagent_crd: str
) -> None:
    token = SourceRef(SourceKind.SECRET, namespace, "agent-token")
    async with _sources(kube, namespace) as (sources, api):
        for i in range(BIG_SECRETS):
            _create_secret(k8s_cluster, namespace, f"big-{i}", BIG_VALUE, labelled=True)
        _create_secret(
            k8s_cluster, namespace, token.name, base64.b64encode(b"t0ken").decode(), labelled=False
        )
        read = await sources.read(token)  # as the controller does for a GitLabAgent's token
        assert read is not None
        await eventually(lambda: len(_store(sources)) == BIG_SECRETS + 1, within=30)

        by_name = {obj["metadata"]["name"]: obj for obj in _store(sources)}
        assert by_name[token.name]["data"] == {"token": TOKEN_VALUE}
        big = [by_name[f"big-{i}"] for i in range(BIG_SECRETS)]
        assert [obj for obj in big if "data" in obj or "binaryData" in obj] == []
        assert _cached_bytes(big) < 32 * 1024, "the labelled Secrets' data is in the cache"

        # The periodic sweep: a GitLabAgent refers to the token only; the 40 lose the label and the cache.
        agent = {
            "apiVersion": API_VERSION,
            "kind": "GitLabAgent",
            "metadata": {"name": "agent", "namespace": namespace},
            "spec": {"kasAddress": "grpcs://kas.example.com", "tokenSecretRef": {"name": token.name}},
        }
        status, info = k8s_cluster.request(
            "POST", f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}", agent
        )
        assert status == 201, info
        assert await sweep_unreferenced(api, sources) == BIG_SECRETS
        await eventually(lambda: [o["metadata"]["name"] for o in _store(sources)] == [token.name], within=30)
        assert sources.referenced() == frozenset({token})


async def test_a_released_object_loses_its_data_at_once_and_a_new_reference_refills_it(
    k8s_cluster: LocalCluster, kube: KubeAccess, namespace: str
) -> None:
    ref = SourceRef(SourceKind.SECRET, namespace, "shared")
    value = TOKEN_VALUE
    async with _sources(kube, namespace) as (sources, _):
        _create_secret(k8s_cluster, namespace, ref.name, value, labelled=True)
        await eventually(lambda: len(_store(sources)) == 1)
        assert "data" not in _store(sources)[0]  # labelled by someone else: not ours to keep

        read = await sources.read(ref)  # a GitLabAgent refers to it now
        assert read is not None
        assert read["data"] == {"token": value}
        assert _store(sources)[0].get("data") == {"token": value}  # the same version, refilled

        sources.release(ref)
        assert "data" not in _store(sources)[0]
