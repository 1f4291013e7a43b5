"""Sources against the real API server: the watch's echo of the operator's own label is no change (the
agent that read the Secret has that very version), while every later change of the Secret is one; a
Secret that changes between its read and its (deferred) label is reported as changed, not labelled."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
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


async def _quiet() -> None:
    return None


async def _create_secret(k8s_cluster: LocalCluster, namespace: str, ref: SourceRef) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": ref.name, "annotations": {ALLOWED_AGENTS_ANNOTATION: "agent"}},
        "data": {"token": base64.b64encode(b"first").decode()},
    }
    status, info = k8s_cluster.request("POST", core_path(namespace, "secrets"), secret)
    assert status == 201, info


def _rotate(k8s_cluster: LocalCluster, namespace: str, ref: SourceRef) -> None:
    patch = {"data": {"token": base64.b64encode(b"second").decode()}}
    status, info = k8s_cluster.request(
        "PATCH", core_path(namespace, "secrets", ref.name), patch, headers={"Content-Type": MERGE_PATCH}
    )
    assert status == 200, info


@contextlib.asynccontextmanager
async def _sources(admin_kubeconfig: Path, namespace: str) -> AsyncIterator[tuple[Sources, list[SourceRef]]]:
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
        yield sources, changes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()
        await kube.close()


@contextlib.asynccontextmanager
async def _labelling(sources: Sources) -> AsyncIterator[None]:
    """The deferred labeller running, with no status writes to yield to."""
    labeller = asyncio.create_task(sources.label_deferred(_quiet), name="test-labels")
    try:
        yield
    finally:
        labeller.cancel()
        await asyncio.gather(labeller, return_exceptions=True)


async def test_the_echo_of_our_own_label_is_not_a_change(
    k8s_cluster: LocalCluster, admin_kubeconfig: Path, namespace: str
) -> None:
    ref = SourceRef(SourceKind.SECRET, namespace, "token")
    await _create_secret(k8s_cluster, namespace, ref)
    async with _sources(admin_kubeconfig, namespace) as (sources, changes):
        read = await sources.read(ref, lambda obj: opted_in(obj, "agent"))
        assert read is not None
        await asyncio.sleep(0.3)
        assert sources.watched() == frozenset()  # the label waits for the deferred labeller
        async with _labelling(sources):
            await eventually(lambda: sources.watched() == frozenset({ref}))
            await asyncio.sleep(0.5)  # anything the label's watch event would report has been reported
            assert changes == []

            _rotate(k8s_cluster, namespace, ref)
            await eventually(lambda: changes == [ref])  # a rotation is a change


async def test_a_secret_changed_before_its_label_is_a_change_and_stays_unlabelled(
    k8s_cluster: LocalCluster, admin_kubeconfig: Path, namespace: str
) -> None:
    ref = SourceRef(SourceKind.SECRET, namespace, "token")
    await _create_secret(k8s_cluster, namespace, ref)
    async with _sources(admin_kubeconfig, namespace) as (sources, changes):
        assert await sources.read(ref, lambda obj: opted_in(obj, "agent")) is not None
        _rotate(k8s_cluster, namespace, ref)  # between the read and the label
        async with _labelling(sources):
            await eventually(lambda: changes == [ref])
        status, body = k8s_cluster.request("GET", core_path(namespace, "secrets", ref.name))
        assert status == 200
        assert "labels" not in body["metadata"]  # the label went on no version that was not admitted
        assert sources.watched() == frozenset()
