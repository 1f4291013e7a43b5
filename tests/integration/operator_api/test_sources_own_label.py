"""Sources against the real API server: the watch's echo of the operator's own label is no change (the
agent that read the Secret has that very version), while every later change of the Secret is one."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from agent_operator.kube_api import MERGE_PATCH, KubeApi, core_path
from agent_operator.mapping import ALLOWED_AGENTS_ANNOTATION, SourceKind, SourceRef, opted_in
from agent_operator.sources import Sources
from agent_runtime.informer import SharedInformers
from agent_runtime.kube import load_kube_access
from tests.security.budget_support import eventually
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.integration


async def test_the_echo_of_our_own_label_is_not_a_change(
    k8s_cluster: LocalCluster, admin_kubeconfig: Path, namespace: str
) -> None:
    ref = SourceRef(SourceKind.SECRET, namespace, "token")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": ref.name, "annotations": {ALLOWED_AGENTS_ANNOTATION: "agent"}},
        "data": {"token": base64.b64encode(b"first").decode()},
    }
    status, info = k8s_cluster.request("POST", core_path(namespace, "secrets"), secret)
    assert status == 201, info

    kube = await asyncio.to_thread(load_kube_access, str(admin_kubeconfig))
    api = KubeApi(kube)
    informers = SharedInformers(kube)
    task = asyncio.create_task(informers.run(), name="test-informers")
    changes: list[SourceRef] = []
    try:
        await informers.wait_started()
        sources = Sources(api, [namespace])
        sources.start(informers.get, changes.append)
        await sources.wait_synced()

        read = await sources.read(ref, lambda obj: opted_in(obj, "agent"))  # labels it for the watch
        assert read is not None
        await eventually(lambda: sources.watched() == frozenset({ref}))
        await asyncio.sleep(0.5)  # anything the label's watch event would report has been reported
        assert changes == []

        patch = {"data": {"token": base64.b64encode(b"second").decode()}}
        status, info = k8s_cluster.request(
            "PATCH", core_path(namespace, "secrets", ref.name), patch, headers={"Content-Type": MERGE_PATCH}
        )
        assert status == 200, info
        await eventually(lambda: changes == [ref])  # a rotation is a change
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()
        await kube.close()
