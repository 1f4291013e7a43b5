"""KubeApi against the real API server: a request whose answer is not read asks for the object's metadata
only (kube_api.METADATA_ONLY), and its errors are still decoded for their reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent_operator.api import API_VERSION, PLURAL
from agent_operator.kube_api import MERGE_PATCH, METADATA_ONLY, KubeApi, group_path
from agent_runtime.kube import load_kube_access
from tests.integration.operator_api.conftest import gitlabagent_crd, kubectl
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.integration
__all__ = ["gitlabagent_crd", "kubectl"]  # fixtures


async def test_a_status_write_is_answered_with_metadata_only(
    k8s_cluster: LocalCluster, admin_kubeconfig: Path, namespace: str, gitlabagent_crd: str
) -> None:
    body = {
        "apiVersion": API_VERSION,
        "kind": "GitLabAgent",
        "metadata": {"name": "agent"},
        "spec": {"kasAddress": "wss://127.0.0.1:1", "tokenSecretRef": {"name": "token"}},
    }
    status, info = k8s_cluster.request("POST", f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}", body)
    assert status == 201, info
    path = group_path(API_VERSION, namespace, PLURAL, "agent") + "/status"
    kube = await asyncio.to_thread(load_kube_access, str(admin_kubeconfig))
    api = KubeApi(kube)
    try:
        written = await api.merge_patch(path, {"status": {"phase": "Connecting"}}, decode=False)
        assert (written.status, written.body) == (200, None)

        # What the API server sends for that Accept header: the metadata, not the spec or status.
        headers = {"Accept": METADATA_ONLY, "Content-Type": MERGE_PATCH, **kube.auth_headers()}
        patch = b'{"status": {"phase": "Connected"}}'
        async with api.session.patch(kube.url(path), data=patch, headers=headers) as answer:
            assert answer.status == 200
            raw = await answer.json()
        assert raw["kind"] == "PartialObjectMetadata"
        assert raw["metadata"]["name"] == "agent"
        assert "spec" not in raw
        assert "status" not in raw

        refused = await api.merge_patch(path, {"status": {"phase": "Sleeping"}}, decode=False)
        assert refused.status == 422
        assert "Sleeping" in refused.reason()  # the API server's message names the value it refused
    finally:
        await api.close()
        await kube.close()
