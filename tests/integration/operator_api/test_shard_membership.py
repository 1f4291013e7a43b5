"""A sharded replica's membership against the real API server: its member Lease is renewed for as long as
its workers drain at shutdown (the supervisor has stopped by then), and goes only with `release()`.

Were the renewals to stop with the supervisor, a drain longer than the Lease would let the others start
this replica's agents while its workers still serve their last requests."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent_operator.sharding import Sharding
from agent_operator.sharding.leases import member_lease_name
from agent_operator.sharding.settings import ShardingSettings
from agent_runtime.kube import load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from tests.security.budget_support import eventually
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.integration

DURATION = 2.0
"""The shortest Lease the flag allows: the drain below outlasts it twice."""
GROUP = "gao-membership-test"
ME = "replica-a"


def _renew_time(cluster: LocalCluster, namespace: str) -> str | None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{member_lease_name(GROUP, ME)}"
    status, body = cluster.request("GET", path)
    return str(body["spec"]["renewTime"]) if status == 200 else None


async def test_the_member_lease_lives_through_the_drain_and_goes_with_release(
    k8s_cluster: LocalCluster, admin_kubeconfig: Path
) -> None:
    namespace = f"shard-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(k8s_cluster.create_namespace, namespace)
    kube = await asyncio.to_thread(load_kube_access, str(admin_kubeconfig))
    runtime = Runtime(
        kube, RuntimeSettings(observability_address="127.0.0.1:0", stop_grace=1.0, policy=PERMISSIVE_POLICY)
    )
    await runtime.start()
    sharding = Sharding(
        ShardingSettings(namespace=namespace, group=GROUP, lease_duration=DURATION),
        ME,
        kube,
        runtime,
        CollectorRegistry(),
        drain_grace=1.0,
    )
    try:
        sharding.start()
        supervised = asyncio.create_task(sharding.run(), name="test-sharding")
        await eventually(lambda: sharding.members.live == frozenset({ME}))
        supervised.cancel()  # shutdown: the composition's supervisor stops first, then the drain
        await asyncio.gather(supervised, return_exceptions=True)

        seen: list[tuple[float, str | None]] = []
        began = time.monotonic()
        while time.monotonic() - began < 2 * DURATION + 0.5:  # a drain longer than the Lease
            seen.append((time.monotonic(), await asyncio.to_thread(_renew_time, k8s_cluster, namespace)))
            await asyncio.sleep(0.2)
        assert all(renewed is not None for _, renewed in seen), "the member Lease went during the drain"
        changes = [at for (_, before), (at, renewed) in itertools.pairwise(seen) if renewed != before]
        marks = [began, *changes, seen[-1][0]]
        gaps = [later - earlier for earlier, later in itertools.pairwise(marks)]
        assert len(changes) >= 3, f"renewed {len(changes)} times in {2 * DURATION + 0.5} s"
        assert max(gaps) < DURATION, f"unrenewed for {max(gaps):.1f} s: the others would take over"

        await sharding.release()
        assert await asyncio.to_thread(_renew_time, k8s_cluster, namespace) is None
    finally:
        await sharding.release()  # idempotent: after the test's own, or after a failure
        await runtime.stop(1.0)
        await kube.close()
