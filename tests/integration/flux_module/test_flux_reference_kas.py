"""The whole push path with the reference kas: GitLab Rails' push event on kas's API listener → Redis
pub/sub → kas filters by the agent's project set and project access → our agent's ReconcileProjects
stream → requestedAt on exactly the pushed project's GitRepositories."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent_proto.flavor import WireFlavor
from agent_runtime.kube import KubeAccess
from agent_runtime.secret import Secret
from agent_runtime.spec import FluxState, ServiceAccountRef, TunnelSettings, WorkerSnapshot, WorkerSpec
from kas.testing import TestAgent, running_kas, send_git_push_event, write_agent_config
from tests.integration.flux_module.conftest import (
    create_gitrepository,
    create_namespace,
    eventually,
    requested_at,
    running,
)
from tests.integration.flux_module.flux_kas import GITLAB_URL
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.usefixtures("pod_env")

AGENT = TestAgent(
    id=301,
    name="fleet",
    project_path="group/agents",
    token="glagent-" + "r" * 42,
    projects=("group/app",),
)


async def test_a_push_event_to_the_reference_kas_reaches_exactly_its_gitrepositories(
    with_crd: LocalCluster, operator_kube: KubeAccess, redis_url: str, tmp_path: Path
) -> None:
    """With the operator's own RBAC from manifests/ (not admin)."""
    kube = operator_kube
    cluster = with_crd
    create_namespace(cluster, "refkas", may_patch=True)
    create_gitrepository(cluster, "refkas", "app", f"{GITLAB_URL}/group/app.git")
    create_gitrepository(cluster, "refkas", "private", f"{GITLAB_URL}/group/private.git")
    async with running_kas(
        tmp_path / "kas",
        [AGENT],
        redis_url=redis_url,
        api=True,
        overrides={"gitlab_external_url": GITLAB_URL},
    ) as kas:
        write_agent_config(tmp_path / "kas" / "repos", AGENT, "{}\n")
        assert kas.api_address is not None
        assert kas.config.api is not None
        secret = Path(kas.config.api.authentication_secret_file)
        spec = WorkerSpec(
            id="refkas/fleet",
            kas_address=kas.agent_url("grpc"),
            token=Secret(AGENT.token),
            identity=ServiceAccountRef("refkas", "agent"),
            tunnels=TunnelSettings(min_idle=1, max=2),
        )
        async with running(kube) as runtime:
            runtime.apply(spec)

            def flux_state() -> FluxState | None:
                snapshot = runtime.snapshot(spec.id)
                return snapshot.flux.state if snapshot is not None else None

            await eventually(lambda: flux_state() is FluxState.WATCHING, what="the stream")
            # The push to a project the agent may not see (private, not granted) is dropped by kas; the
            # granted one arrives. Pushes are at most once and the stream may still be opening: repeat.
            async with asyncio.timeout(20):
                while requested_at(cluster, "refkas", "app") is None:
                    await send_git_push_event(kas.api_address, secret, 77, "group/private")
                    await send_git_push_event(kas.api_address, secret, 78, "group/app")
                    await asyncio.sleep(0.5)
            await asyncio.sleep(0.5)  # anything kas forwarded for group/private would have landed by now
            assert requested_at(cluster, "refkas", "private") is None
            snapshot = runtime.snapshot(spec.id)
            assert snapshot is not None
            assert snapshot.flux.ignored == 0  # kas sent only what was asked for and granted


async def test_the_plural_flavour_kas_has_no_flux_module_and_that_is_a_state(
    with_crd: LocalCluster, kube: KubeAccess, tmp_path: Path
) -> None:
    cluster = with_crd
    create_namespace(cluster, "refkas-plural", may_patch=True)
    create_gitrepository(cluster, "refkas-plural", "app", f"{GITLAB_URL}/group/app.git")
    async with running_kas(
        tmp_path / "kas", [AGENT], overrides={"gitlab_external_url": GITLAB_URL, "wire_flavor": "plural"}
    ) as kas:
        write_agent_config(tmp_path / "kas" / "repos", AGENT, "{}\n")
        spec = WorkerSpec(
            id="refkas-plural/fleet",
            kas_address=kas.agent_url("grpc"),
            token=Secret(AGENT.token),
            identity=ServiceAccountRef("refkas-plural", "agent"),
            tunnels=TunnelSettings(min_idle=1, max=2),
            flavor=WireFlavor.PLURAL,
        )
        async with running(kube) as runtime:
            runtime.apply(spec)

            def snapshot() -> WorkerSnapshot:
                current = runtime.snapshot(spec.id)
                assert current is not None
                return current

            await eventually(
                lambda: (
                    runtime.snapshot(spec.id) is not None and snapshot().flux.state is FluxState.NOT_SERVED
                ),
                what="NotServedByKas",
            )
            assert "Plural" in snapshot().flux.message
            assert snapshot().phase.value == "Connected"
