"""End-to-end fixtures: the real apiserver with manifests/ applied, the reference kas, the operator process.

Every test gets its own namespace and its own operator process watching only that namespace, so tests
cannot see each other's agents; the kas process (with 60 registered agents) is shared by the session.
The operator runs as deployed: with a token of manifests/' ServiceAccount, under manifests/' RBAC.
Admin credentials (`kube`) only set the scene and look at the result.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    KasProcess,
    Kube,
    OperatorProcess,
    install_manifests,
    make_agents,
    operator_kubeconfig,
    service_account,
)
from tests.support.k8s_cluster import LocalCluster

_HERE = Path(__file__).parent
AGENT_COUNT = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kube(k8s_cluster: LocalCluster, admin_kubeconfig: Path) -> Kube:
    """Admin access, with manifests/ applied (`kubectl apply -k`): CRDs served, the operator's RBAC bound."""
    client = Kube(k8s_cluster, admin_kubeconfig)
    install_manifests(client)
    return client


@pytest.fixture(scope="session")
def operator_credentials(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kubeconfig with a TokenRequest token of the operator's ServiceAccount from manifests/."""
    return operator_kubeconfig(kube, tmp_path_factory.mktemp("operator-identity") / "kubeconfig")


@pytest.fixture(scope="session")
def kas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KasProcess]:
    """The reference kas as a process: agent listener + Kubernetes API proxy, 60 agents registered."""
    server = KasProcess(tmp_path_factory.mktemp("kas"), make_agents(AGENT_COUNT))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agent_namespace(kube: Kube, namespace: str) -> str:
    """The test's namespace with the ServiceAccount `agent` the GitLabAgents act as."""
    kube.apply(service_account(namespace, "agent"))
    return namespace


@pytest.fixture
def operator(
    operator_credentials: Path, agent_namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    """The operator as a process under its own ServiceAccount, watching only the test's namespace."""
    proc = OperatorProcess(tmp_path, operator_credentials, agent_namespace)
    proc.start()
    yield proc
    code = proc.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(f"--- operator log ({proc.log_path}) ---\n{proc.log()}")
    assert code == 0, f"operator exit code {code}:\n{proc.log()[-5000:]}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]  # read by the operator fixture
    return report


def kubectl_ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout
