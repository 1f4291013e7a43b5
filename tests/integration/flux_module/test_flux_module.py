"""The Flux module (agent_runtime/modules/flux) against a real kube-apiserver with Flux's GitRepository
CRD and a loopback kas serving GitLabFlux/ReconcileProjects (PROTOCOL.md §17)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.manager import WorkerFactory
from agent_runtime.runtime import Runtime
from agent_runtime.spec import FluxState, FluxStatus, WorkerSpec
from agent_runtime.worker import Worker
from tests.integration.flux_module.conftest import (
    CRD_NAME,
    FAST,
    OPERATOR_NAMESPACE,
    agent_spec,
    create_gitrepository,
    create_namespace,
    delete_crd,
    eventually,
    install_crd,
    requested_at,
    running,
)
from tests.integration.flux_module.flux_kas import GITLAB_URL, FluxKas
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.usefixtures("pod_env")


def _flux(runtime: Runtime, worker_id: str) -> FluxStatus:
    snapshot = runtime.snapshot(worker_id)
    return snapshot.flux if snapshot is not None else FluxStatus()


async def test_a_push_patches_exactly_the_gitrepositories_of_its_project(
    with_crd: LocalCluster, kube: KubeAccess, flux_kas: FluxKas
) -> None:
    cluster = with_crd
    create_namespace(cluster, "push-a", may_patch=True)
    create_namespace(cluster, "push-a-denied", may_patch=False, agent_namespace="push-a")
    create_gitrepository(cluster, "push-a", "app", f"{GITLAB_URL}/group/app.git")
    create_gitrepository(cluster, "push-a", "app-ssh", "ssh://git@gitlab.example.com:2222/Group/App.git")
    create_gitrepository(cluster, "push-a", "other", f"{GITLAB_URL}/group/other.git")
    create_gitrepository(cluster, "push-a", "github", "https://github.com/group/app.git")
    create_gitrepository(cluster, "push-a-denied", "app", f"{GITLAB_URL}/group/app.git")
    spec = agent_spec(flux_kas, 101, "push-a")

    async with running(kube) as runtime:
        runtime.apply(spec)
        await eventually(lambda: 101 in flux_kas.requests, what="a ReconcileProjects call")
        # The project set: this GitLab's projects in namespaces the agent may patch, as spelt in the URLs.
        assert flux_kas.requests[101] == [frozenset({"group/app", "Group/App", "group/other"})]
        await eventually(lambda: _flux(runtime, spec.id).watched == 3, what="3 GitRepositories in scope")

        assert flux_kas.push(101, "GROUP/app") == 1  # GitLab paths are case-insensitive
        await eventually(lambda: _flux(runtime, spec.id).triggered == 2, what="two reconciles")
        assert requested_at(cluster, "push-a", "app") is not None
        assert requested_at(cluster, "push-a", "app-ssh") is not None
        for namespace, name in (("push-a", "other"), ("push-a", "github"), ("push-a-denied", "app")):
            assert requested_at(cluster, namespace, name) is None, f"{namespace}/{name} was patched"
        flux = _flux(runtime, spec.id)
        assert flux.state is FluxState.WATCHING
        assert flux.last_trigger is not None
        assert datetime.now(UTC) - flux.last_trigger < timedelta(seconds=10)

        # Untrusted kas: projects not asked for, malformed paths and an empty response are dropped.
        for bogus in ("group/unknown", "../group/app", "group/app.git", ""):
            flux_kas.push(101, bogus)
        await eventually(lambda: _flux(runtime, spec.id).ignored == 4, what="4 ignored reports")
        assert _flux(runtime, spec.id).triggered == 2
        assert requested_at(cluster, "push-a", "other") is None

        first = requested_at(cluster, "push-a", "app")
        flux_kas.push(101, "group/other")
        await eventually(lambda: _flux(runtime, spec.id).triggered == 3, what="the third reconcile")
        assert requested_at(cluster, "push-a", "other") is not None
        assert requested_at(cluster, "push-a", "app") == first


async def test_the_stream_reopens_only_when_the_project_set_changes(
    with_crd: LocalCluster, kube: KubeAccess, flux_kas: FluxKas
) -> None:
    cluster = with_crd
    create_namespace(cluster, "set-b", may_patch=True)
    create_gitrepository(cluster, "set-b", "app", f"{GITLAB_URL}/group/app.git")
    spec = agent_spec(flux_kas, 102, "set-b")

    async with running(kube) as runtime:
        runtime.apply(spec)
        await eventually(lambda: len(flux_kas.requests.get(102, [])) == 1, what="the first call")
        # Same project again, another host, a deleted-and-recreated object: the set stays the same.
        create_gitrepository(cluster, "set-b", "app-again", f"{GITLAB_URL}/group/app")
        create_gitrepository(cluster, "set-b", "elsewhere", "https://example.org/group/x.git")
        await eventually(lambda: _flux(runtime, spec.id).watched == 2, what="2 in scope")
        await asyncio.sleep(1.5)  # three debounce periods
        assert flux_kas.requests[102] == [frozenset({"group/app"})]

        create_gitrepository(cluster, "set-b", "new", f"{GITLAB_URL}/group/new.git")
        await eventually(lambda: len(flux_kas.requests[102]) == 2, what="a reopened call")
        assert flux_kas.requests[102][1] == frozenset({"group/app", "group/new"})
        assert len(flux_kas.streams[102]) == 1  # the old call was cancelled first

        await asyncio.sleep(1.5)
        assert len(flux_kas.requests[102]) == 2


async def test_a_replica_without_the_lease_does_nothing_until_the_lease_is_free(
    with_crd: LocalCluster, kube: KubeAccess, flux_kas: FluxKas
) -> None:
    cluster = with_crd
    create_namespace(cluster, "lease-c", may_patch=True)
    create_gitrepository(cluster, "lease-c", "app", f"{GITLAB_URL}/group/app.git")
    spec = agent_spec(flux_kas, 103, "lease-c")
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases"
    lease = {
        "metadata": {"name": "agent-103-lock"},
        "spec": {"holderIdentity": "agentk-beside-us", "leaseDurationSeconds": 3, "renewTime": _now()},
    }
    status, answer = cluster.request("POST", leases, lease)
    assert status == 201, answer
    renewing = asyncio.Event()
    renewing.set()

    async def keep_renewing() -> None:
        while renewing.is_set():
            _, current = cluster.request("GET", f"{leases}/agent-103-lock")
            current["spec"]["renewTime"] = _now()
            cluster.request("PUT", f"{leases}/agent-103-lock", current)
            await asyncio.sleep(0.5)

    async with running(kube) as runtime, asyncio.TaskGroup() as tg:
        tg.create_task(keep_renewing(), name="other-holder")
        runtime.apply(spec)
        await eventually(lambda: _flux(runtime, spec.id).state is FluxState.STANDBY, what="standby")
        assert "agentk-beside-us" in _flux(runtime, spec.id).message
        await asyncio.sleep(4.0)  # longer than the lease duration: renewals keep it held
        assert 103 not in flux_kas.requests
        assert _flux(runtime, spec.id).state is FluxState.STANDBY

        renewing.clear()  # the other holder is gone: the lease expires by our clock and is taken over
        await eventually(lambda: 103 in flux_kas.requests, within=15, what="the stream after takeover")
        _, taken = cluster.request("GET", f"{leases}/agent-103-lock")
        assert taken["spec"]["holderIdentity"] == "operator-under-test"
        assert taken["spec"]["leaseTransitions"] == 1

    # Stopped cleanly: the lease is released for a successor.
    _, released = cluster.request("GET", f"{leases}/agent-103-lock")
    assert released["spec"].get("holderIdentity", "") == ""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_missing_flux_crds_are_a_state_and_are_picked_up_when_they_appear(
    flux_cluster: LocalCluster, gitrepository_crd: dict[str, Any], kube: KubeAccess, flux_kas: FluxKas
) -> None:
    cluster = flux_cluster
    delete_crd(cluster)
    create_namespace(cluster, "crd-d", may_patch=True)
    spec = agent_spec(flux_kas, 104, "crd-d")
    async with running(kube) as runtime:
        runtime.apply(spec)
        await eventually(
            lambda: _flux(runtime, spec.id).state is FluxState.FLUX_NOT_INSTALLED, what="FluxNotInstalled"
        )
        assert CRD_NAME in _flux(runtime, spec.id).message
        assert "without a restart" in _flux(runtime, spec.id).message

        install_crd(cluster, gitrepository_crd)
        create_gitrepository(cluster, "crd-d", "app", f"{GITLAB_URL}/group/app.git")
        await eventually(lambda: 104 in flux_kas.requests, what="the stream once Flux is installed")
        assert flux_kas.requests[104] == [frozenset({"group/app"})]
        flux_kas.push(104, "group/app")
        await eventually(lambda: requested_at(cluster, "crd-d", "app") is not None, what="the reconcile")


async def test_a_kas_without_gitlabflux_is_a_state_with_backoff(
    with_crd: LocalCluster, kube: KubeAccess, flux_kas: FluxKas
) -> None:
    cluster = with_crd
    flux_kas.unimplemented = True
    create_namespace(cluster, "plain-e", may_patch=True)
    create_gitrepository(cluster, "plain-e", "app", f"{GITLAB_URL}/group/app.git")
    spec = agent_spec(flux_kas, 105, "plain-e")
    async with running(kube) as runtime:
        runtime.apply(spec)
        await eventually(lambda: _flux(runtime, spec.id).state is FluxState.NOT_SERVED, what="NotServedByKas")
        calls = flux_kas.calls
        await asyncio.sleep(2.0)
        # Backoff 0.2 s → 1 s (the tests' shortening of 10 s → 5 min): a few calls, not a busy loop.
        assert 1 <= flux_kas.calls - calls <= 4
        snapshot = runtime.snapshot(spec.id)
        assert snapshot is not None
        assert snapshot.phase.value == "Connected"  # Flux is optional: the agent itself is fine


async def test_opted_out_agents_do_nothing(
    with_crd: LocalCluster, kube: KubeAccess, flux_kas: FluxKas
) -> None:
    cluster = with_crd
    create_namespace(cluster, "off-f", may_patch=True)
    create_gitrepository(cluster, "off-f", "app", f"{GITLAB_URL}/group/app.git")
    spec = agent_spec(flux_kas, 106, "off-f", enabled=False)
    async with running(kube) as runtime:
        runtime.apply(spec)
        await eventually(lambda: _flux(runtime, spec.id).state is FluxState.DISABLED, what="Disabled")
        await asyncio.sleep(1.0)
        assert 106 not in flux_kas.requests
        status, _ = cluster.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/agent-106-lock"
        )
        assert status == 404


def _replica(name: str) -> WorkerFactory:
    """Workers that say they run in pod `name` (two operator replicas in one test process)."""

    def factory(spec: WorkerSpec, env: WorkerEnvironment) -> Worker:
        worker = Worker(spec, env)
        worker.agent = dataclasses.replace(worker.agent, pod_name=name)
        return worker

    return factory


async def test_two_replicas_running_one_agent_trigger_each_push_once(
    with_crd: LocalCluster, kube: KubeAccess, flux_kas: FluxKas
) -> None:
    cluster = with_crd
    create_namespace(cluster, "twins-g", may_patch=True)
    create_gitrepository(cluster, "twins-g", "app", f"{GITLAB_URL}/group/app.git")
    spec = agent_spec(flux_kas, 107, "twins-g")
    async with (
        running(kube, factory=_replica("replica-a")) as a,
        running(kube, factory=_replica("replica-b")) as b,
    ):
        a.apply(spec)
        b.apply(spec)

        def states() -> set[FluxState]:
            return {_flux(a, spec.id).state, _flux(b, spec.id).state}

        await eventually(lambda: states() == {FluxState.WATCHING, FluxState.STANDBY}, what="one leader")
        leader, follower = (a, b) if _flux(a, spec.id).state is FluxState.WATCHING else (b, a)
        # WATCHING is said as the call starts; kas has its request a moment later.
        await eventually(lambda: len(flux_kas.requests.get(107, ())) == 1, what="the leader's stream at kas")
        await asyncio.sleep(0.5)
        assert len(flux_kas.requests[107]) == 1, "only the leader opened a stream"

        flux_kas.push(107, "group/app")
        await eventually(lambda: _flux(leader, spec.id).triggered == 1, what="the trigger")
        await asyncio.sleep(0.5)
        assert (_flux(leader, spec.id).triggered, _flux(follower, spec.id).triggered) == (1, 0)

        await leader.stop(0.5)  # the leader goes away cleanly: it releases the Lease, the other takes over
        await eventually(lambda: _flux(follower, spec.id).state is FluxState.WATCHING, what="takeover")
        await eventually(lambda: len(flux_kas.requests[107]) == 2, what="the follower's stream")
        flux_kas.push(107, "group/app")
        await eventually(lambda: _flux(follower, spec.id).triggered == 1, what="the follower's trigger")


async def test_an_operator_that_may_not_read_flux_objects_says_so(
    with_crd: LocalCluster, flux_kas: FluxKas
) -> None:
    """alice has no rights at all: the CRD cannot be read; the state names the missing rights."""
    cluster = with_crd
    create_namespace(cluster, "rbac-h", may_patch=True)
    spec = agent_spec(flux_kas, 108, "rbac-h")
    alice = load_kube_access(str(cluster.user_kubeconfig))
    try:
        async with running(alice) as runtime:
            runtime.apply(spec)
            await eventually(
                lambda: _flux(runtime, spec.id).state is FluxState.LIST_FAILED, what="unreadable"
            )
            message = _flux(runtime, spec.id).message
            assert "HTTP 403" in message
            assert "customresourcedefinitions" in message
            assert 108 not in flux_kas.requests
    finally:
        await alice.close()


async def test_a_flood_of_reports_becomes_a_few_patches(
    with_crd: LocalCluster, kube: KubeAccess, flux_kas: FluxKas
) -> None:
    """kas is untrusted: 40 reports of one project within 1 s, at most one trigger per 0.5 s."""
    cluster = with_crd
    create_namespace(cluster, "flood-i", may_patch=True)
    create_gitrepository(cluster, "flood-i", "app", f"{GITLAB_URL}/group/app.git")
    spec = agent_spec(flux_kas, 109, "flood-i")
    async with running(kube, dataclasses.replace(FAST, min_trigger_interval_s=0.5)) as runtime:
        runtime.apply(spec)
        await eventually(lambda: 109 in flux_kas.requests, what="the stream")
        started = asyncio.get_running_loop().time()
        for _ in range(40):
            flux_kas.push(109, "group/app")
            await asyncio.sleep(0.025)
        elapsed = asyncio.get_running_loop().time() - started
        await asyncio.sleep(0.8)  # the last one due
        triggered = _flux(runtime, spec.id).triggered
        assert 2 <= triggered <= elapsed / 0.5 + 2, (triggered, elapsed)
        assert requested_at(cluster, "flood-i", "app") is not None
