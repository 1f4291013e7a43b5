"""The hostile-kas suite: a tenant's kas double drives real workers against the real API server.

The runtime runs as the operator does when deployed: with a token of the operator's ServiceAccount from
`manifests/` and under the RBAC `manifests/` grants (applied as a user applies them). Two tenant
namespaces: `tenant-a`, whose agent acts as a ServiceAccount without any rights, and `tenant-b`, which
holds a Secret that tenant A must never see. Tenant A also controls its kas, the test's `FakeKas`.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY, TenantPolicy
from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, WorkerSpec
from agent_runtime.worker import Worker
from tests.e2e.harness import Kube, install_manifests, operator_kubeconfig
from tests.integration.runtime.fake_kas import FakeKas
from tests.support.k8s_cluster import LocalCluster

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class Tenants:
    """The two tenants of the suite."""

    attacker: str
    """Namespace of the tenant who controls its kas."""
    victim: str
    """Namespace whose Secret the attacker wants."""
    victim_secret: str
    """Name of the victim's Secret."""
    victim_value: bytes
    """The Secret's value: it must never reach the attacker."""


@pytest.fixture(scope="session")
def deployed_kube(k8s_cluster: LocalCluster, admin_kubeconfig: Path) -> Kube:
    """Admin access with `manifests/` applied (the operator's ServiceAccount and RBAC)."""
    kube = Kube(k8s_cluster, admin_kubeconfig)
    install_manifests(kube)
    return kube


@pytest.fixture(scope="session")
def operator_credentials(deployed_kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig with a token of the operator's ServiceAccount."""
    return operator_kubeconfig(deployed_kube, tmp_path_factory.mktemp("operator") / "kubeconfig")


@pytest.fixture(scope="session")
def tenants(deployed_kube: Kube) -> Iterator[Tenants]:
    """tenant-a (an agent ServiceAccount with no rights) and tenant-b (a Secret with a value)."""
    suffix = secrets.token_hex(3)
    found = Tenants(f"tenant-a-{suffix}", f"tenant-b-{suffix}", "database", secrets.token_hex(16).encode())
    cluster = deployed_kube.cluster
    for namespace in (found.attacker, found.victim):
        cluster.create_namespace(namespace)
    deployed_kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "agent", "namespace": found.attacker},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": found.victim_secret, "namespace": found.victim},
            "data": {"password": base64.b64encode(found.victim_value).decode()},
        },
    )
    yield found
    for namespace in (found.attacker, found.victim):
        cluster.delete_namespace(namespace)


@pytest.fixture
async def operator_kube(operator_credentials: Path) -> AsyncIterator[KubeAccess]:
    """The process's Kubernetes access, as the deployed operator has it."""
    access = await asyncio.to_thread(load_kube_access, str(operator_credentials))
    yield access
    await access.close()


StartAgent = Callable[..., Awaitable[FakeKas]]
"""start(identity, policy=PERMISSIVE_POLICY) -> the kas double of a new worker."""


@pytest.fixture
async def start_agent(operator_kube: KubeAccess) -> AsyncIterator[StartAgent]:
    """Start a worker acting as a ServiceAccount, connected to a kas double of its own; returns the double.

    Every worker shares the one KubeAccess, as the operator's workers do.
    """
    running: list[tuple[FakeKas, Worker, asyncio.Task[None]]] = []

    async def start(identity: ServiceAccountRef, policy: TenantPolicy = PERMISSIVE_POLICY) -> FakeKas:
        kas = FakeKas()
        await kas.start()
        spec = WorkerSpec(
            id=f"{identity.namespace}/{identity.name}-{kas.port}",
            kas_address=kas.address,
            token=Secret(kas.token),
            identity=identity,
        )
        worker = Worker(spec, WorkerEnvironment(kube=operator_kube, policy=policy))
        running.append((kas, worker, asyncio.create_task(worker.run(), name=f"hostile-{spec.id}")))
        return kas

    yield start
    for kas, worker, task in running:
        await worker.stop(1.0)
        await asyncio.wait_for(task, 10)
        await kas.stop()
