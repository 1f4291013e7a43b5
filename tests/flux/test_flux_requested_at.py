"""The trigger the agent's Flux module uses, against Flux's own controllers: a `requestedAt` patch on a
GitRepository makes source-controller fetch the pushed commit now (not at its 10-minute poll), and
kustomize-controller applies the new revision.

Prints the push → applied time; bench/flux_apply.py measures it over many commits against Flux's poll.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import wait_for
from tests.support import flux
from tests.support.flux import FluxControllers
from tests.support.git_http import GitHttpServer, WorkingCopy
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.timeout(120)
QUIET_S = 3.0
"""How long the test watches a pushed commit not being applied without a patch (the poll is 10 min)."""


def _configmap(namespace: str, value: str) -> str:
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: {namespace}\n"
        f"data:\n  value: {value}\n"
    )


def _applied(cluster: LocalCluster, namespace: str) -> str | None:
    return flux.applied_revision(flux.get(cluster, "Kustomization", namespace, "apps"))


def _configmap_value(cluster: LocalCluster, namespace: str) -> Any:
    status, body = cluster.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/settings")
    return body["data"]["value"] if status == 200 else None


def test_a_requested_at_patch_fetches_and_applies_the_pushed_commit_at_once(
    k8s_cluster: LocalCluster,
    namespace: str,
    flux_controllers: FluxControllers,
    git_server: GitHttpServer,
    tmp_path: Path,
) -> None:
    repository = f"{namespace}/apps.git"
    git_server.create_repository(repository)
    work = WorkingCopy(tmp_path / "work", git_server.url(repository))
    first = work.commit_and_push("one", {"apps/settings.yaml": _configmap(namespace, "one")})
    flux.create(
        k8s_cluster,
        flux.git_repository(namespace, "apps", git_server.url(repository), interval="10m"),
        flux.kustomization(namespace, "apps", "apps", path="./apps", wait=True, timeout="30s"),
    )
    wait_for(
        "the first commit applied", lambda: _applied(k8s_cluster, namespace) == flux.revision("main", first)
    )
    assert _configmap_value(k8s_cluster, namespace) == "one"

    second = work.commit_and_push("two", {"apps/settings.yaml": _configmap(namespace, "two")})
    pushed = time.monotonic()
    fetches_before = len(git_server.fetches(repository))
    time.sleep(QUIET_S)  # no patch: Flux waits for its poll
    assert _applied(k8s_cluster, namespace) == flux.revision("main", first)
    assert len(git_server.fetches(repository)) == fetches_before

    patched = time.monotonic()
    value = flux.request_reconcile(k8s_cluster, namespace, "apps")
    wait_for(
        "the second commit applied",
        lambda: _applied(k8s_cluster, namespace) == flux.revision("main", second),
        timeout=30,
        interval=0.02,
    )
    applied = time.monotonic()

    assert _configmap_value(k8s_cluster, namespace) == "two"
    repository_status = (flux.get(k8s_cluster, "GitRepository", namespace, "apps") or {})["status"]
    assert repository_status["lastHandledReconcileAt"] == value
    assert flux.artifact_revision({"status": repository_status}) == flux.revision("main", second)
    new_fetches = git_server.fetches(repository)[fetches_before:]
    assert new_fetches, "source-controller fetched nothing after the patch"
    assert all(patched <= f.at <= applied for f in new_fetches)
    print(
        f"requestedAt patch -> applied: {applied - patched:.2f}s (push was {patched - pushed:.1f}s earlier)"
    )
