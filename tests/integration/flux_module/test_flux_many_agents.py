"""50 agents x 2 GitRepositories in one process: one GitRepository list and one watch for the pod, each
agent asks kas for its own projects only, and a push reaches only the pushed project's objects."""

from __future__ import annotations

import dataclasses

import pytest

from agent_runtime.kube import KubeAccess
from tests.integration.flux_module.conftest import (
    FAST,
    agent_spec,
    apiserver_metric,
    create_gitrepository,
    create_namespace,
    eventually,
    requested_at,
    running,
)
from tests.integration.flux_module.flux_kas import GITLAB_URL, FluxKas
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.usefixtures("pod_env")

AGENTS = 50
FIRST_ID = 200
CALM = dataclasses.replace(FAST, retry_period_s=2.0, lease_duration_s=15.0, renew_deadline_s=10.0)
"""agentk's Lease timing: 50 Leases renewed every 0.5 s would load the shared test machine for nothing."""


async def test_fifty_agents_share_one_gitrepository_watch(
    with_crd: LocalCluster, kube: KubeAccess, flux_kas: FluxKas
) -> None:
    cluster = with_crd
    for n in range(AGENTS):
        namespace = f"fleet-{n}"
        create_namespace(cluster, namespace, may_patch=True)
        for suffix in ("a", "b"):
            create_gitrepository(cluster, namespace, suffix, f"{GITLAB_URL}/fleet/p{n}-{suffix}.git")
    lists = {"verb": "LIST", "resource": "gitrepositories"}
    watches = {"verb": "WATCH", "resource": "gitrepositories"}
    lists_before = await apiserver_metric(kube, "apiserver_request_total", **lists)
    watches_before = await apiserver_metric(kube, "apiserver_longrunning_requests", **watches)

    async with running(kube, CALM) as runtime:
        for n in range(AGENTS):
            runtime.apply(agent_spec(flux_kas, FIRST_ID + n, f"fleet-{n}"))
        await eventually(lambda: len(flux_kas.requests) == AGENTS, within=60, what="every agent's stream")
        for n in range(AGENTS):
            assert flux_kas.requests[FIRST_ID + n] == [frozenset({f"fleet/p{n}-a", f"fleet/p{n}-b"})]

        assert await apiserver_metric(kube, "apiserver_request_total", **lists) - lists_before == 1
        assert await apiserver_metric(kube, "apiserver_longrunning_requests", **watches) - watches_before == 1

        assert flux_kas.push(FIRST_ID + 7, "fleet/p7-a") == 1
        await eventually(lambda: requested_at(cluster, "fleet-7", "a") is not None, what="fleet-7/a patched")
        snapshot = runtime.snapshot("fleet-7/agent-207")
        assert snapshot is not None
        await eventually(lambda: runtime.snapshot("fleet-7/agent-207").flux.triggered == 1)  # type: ignore[union-attr]
        patched = [
            (f"fleet-{n}", suffix)
            for n in range(AGENTS)
            for suffix in ("a", "b")
            if requested_at(cluster, f"fleet-{n}", suffix) is not None
        ]
        assert patched == [("fleet-7", "a")]
        assert sum(s.flux.triggered for s in runtime.snapshots().values()) == 1
