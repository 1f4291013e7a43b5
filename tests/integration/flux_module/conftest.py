"""The Flux module against a real kube-apiserver of its own (the GitRepository CRD comes and goes in it,
and its request metrics count only these tests' watches) and the loopback FluxKas."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_runtime.backoff import BackoffPolicy
from agent_runtime.flux_settings import FluxTuning
from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.manager import WorkerFactory
from agent_runtime.policy import PERMISSIVE_POLICY, TenantPolicy
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, TunnelSettings, WorkerSnapshot, WorkerSpec
from tests.e2e import harness
from tests.integration.flux_module.flux_kas import FluxKas, token_for
from tests.support.flux import FluxNotFoundError, find_flux
from tests.support.k8s_cluster import LocalCluster, find_assets
from tests.support.require import FLUX, missing, require

CRD_FILE = "source.toolkit.fluxcd.io_gitrepositories.yaml"
SOURCE_CONTROLLER = "github.com/fluxcd/source-controller@v1.9.6"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_NAME = "gitrepositories.source.toolkit.fluxcd.io"
OPERATOR_NAMESPACE = "flux-operator"
POD_NAME = "operator-under-test"

FAST = FluxTuning(
    debounce_s=0.5,
    stream_backoff=BackoffPolicy(initial=0.2, cap=1.0, factor=2.0, jitter=0.0, reset_after=10.0),
    lease_duration_s=3.0,
    renew_deadline_s=2.0,
    retry_period_s=0.5,
)
"""Upstream's shapes, shortened so the tests take seconds."""


def _crd_from_go_module_cache() -> Path | None:
    try:
        done = subprocess.run(
            ["go", "mod", "download", "-json", SOURCE_CONTROLLER],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "GOFLAGS": "-mod=mod"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        directory = json.loads(done.stdout).get("Dir")
    except ValueError:
        return None
    path = Path(directory) / "config" / "crd" / "bases" / CRD_FILE if directory else None
    return path if path is not None and path.is_file() else None


@pytest.fixture(scope="session")
def gitrepository_crd() -> dict[str, Any]:
    """Flux's GitRepository CRD: from the scripts/flux-controllers build, else the Go module cache."""
    try:
        path: Path | None = find_flux().crds / CRD_FILE
    except FluxNotFoundError:
        path = _crd_from_go_module_cache()
    if path is None or not path.is_file():
        missing(f"Flux's GitRepository CRD ({CRD_FILE}) not found: run scripts/flux-controllers", FLUX)
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    return crd


@pytest.fixture(scope="session")
def flux_cluster() -> Iterator[LocalCluster]:
    """A kube-apiserver of these tests' own."""
    cluster = LocalCluster(require(find_assets))
    cluster.start()
    try:
        status, answer = cluster.request(
            "POST", "/api/v1/namespaces", {"metadata": {"name": OPERATOR_NAMESPACE}}
        )
        assert status == 201, answer
        yield cluster
    finally:
        cluster.stop()


def install_crd(cluster: LocalCluster, crd: dict[str, Any]) -> None:
    """Create the CRD (if absent) and wait until it is Established and served."""
    status, answer = cluster.request("POST", CRD_PATH, crd)
    assert status in (201, 409), answer
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, current = cluster.request("GET", f"{CRD_PATH}/{CRD_NAME}")
        conditions = ((current or {}).get("status") or {}).get("conditions") or []
        established = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
        try:
            listed, _ = cluster.request("GET", "/apis/source.toolkit.fluxcd.io/v1/gitrepositories")
        except ValueError:  # a plain-text 404 while the new group's handler is not installed yet
            listed = 404
        if established and listed == 200:
            return
        time.sleep(0.1)
    raise AssertionError("the GitRepository CRD did not become established")


def delete_crd(cluster: LocalCluster) -> None:
    """Delete the CRD (and so every GitRepository) and wait until it is gone."""
    cluster.request("DELETE", f"{CRD_PATH}/{CRD_NAME}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cluster.request("GET", f"{CRD_PATH}/{CRD_NAME}")[0] == 404:
            return
        time.sleep(0.1)
    raise AssertionError("the GitRepository CRD was not deleted")


@pytest.fixture
def with_crd(flux_cluster: LocalCluster, gitrepository_crd: dict[str, Any]) -> LocalCluster:
    install_crd(flux_cluster, gitrepository_crd)
    return flux_cluster


@pytest.fixture
async def kube(flux_cluster: LocalCluster) -> AsyncIterator[KubeAccess]:
    access = load_kube_access(str(flux_cluster.admin_kubeconfig))
    yield access
    await access.close()


@pytest.fixture
async def flux_kas() -> AsyncIterator[FluxKas]:
    server = FluxKas()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def pod_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The downward API's variables: where the Leases live and who holds them."""
    monkeypatch.setenv("POD_NAMESPACE", OPERATOR_NAMESPACE)
    monkeypatch.setenv("POD_NAME", POD_NAME)


@asynccontextmanager
async def running(
    kube: KubeAccess,
    tuning: FluxTuning = FAST,
    factory: WorkerFactory | None = None,
    policy: TenantPolicy = PERMISSIVE_POLICY,
) -> AsyncIterator[Runtime]:
    """A Runtime as the operator builds it (no listener), stopped at the end."""
    runtime = Runtime(
        kube,
        RuntimeSettings(observability_address=None, stop_grace=0.5, policy=policy, flux=tuning),
        worker_factory=factory,
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop(0.5)


def agent_spec(kas: FluxKas, agent_id: int, namespace: str, *, enabled: bool = True) -> WorkerSpec:
    return WorkerSpec(
        id=f"{namespace}/agent-{agent_id}",
        kas_address=kas.address,
        token=Secret(token_for(agent_id)),
        identity=ServiceAccountRef(namespace, "agent"),
        tunnels=TunnelSettings(min_idle=1, max=2),
        flux_enabled=enabled,
    )


def create_namespace(cluster: LocalCluster, name: str, *, may_patch: bool, agent_namespace: str = "") -> None:
    """A namespace; with `may_patch`, the ServiceAccount `agent` of `agent_namespace` (default: this one)
    may patch GitRepositories in it."""
    status, answer = cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status in (201, 409), answer
    owner = agent_namespace or name
    if owner == name:
        cluster.request("POST", f"/api/v1/namespaces/{name}/serviceaccounts", {"metadata": {"name": "agent"}})
    if not may_patch:
        return
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{name}"
    role = {
        "metadata": {"name": "flux-trigger"},
        "rules": [
            {"apiGroups": ["source.toolkit.fluxcd.io"], "resources": ["gitrepositories"], "verbs": ["patch"]}
        ],
    }
    binding = {
        "metadata": {"name": f"flux-trigger-{owner}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "flux-trigger"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": owner}],
    }
    for path, body in ((f"{rbac}/roles", role), (f"{rbac}/rolebindings", binding)):
        status, answer = cluster.request("POST", path, body)
        assert status in (201, 409), answer


def create_gitrepository(cluster: LocalCluster, namespace: str, name: str, url: str) -> None:
    body = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"url": url, "interval": "10m", "ref": {"branch": "main"}},
    }
    status, answer = cluster.request(
        "POST", f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{namespace}/gitrepositories", body
    )
    assert status == 201, answer


def requested_at(cluster: LocalCluster, namespace: str, name: str) -> str | None:
    status, obj = cluster.request(
        "GET", f"/apis/source.toolkit.fluxcd.io/v1/namespaces/{namespace}/gitrepositories/{name}"
    )
    assert status == 200, obj
    annotations: dict[str, str] = obj["metadata"].get("annotations") or {}
    return annotations.get("reconcile.fluxcd.io/requestedAt")


async def eventually(predicate: Callable[[], bool], within: float = 15.0, what: str = "") -> None:
    """Poll `predicate` until true, bounded in time."""
    try:
        async with asyncio.timeout(within):
            while not predicate():  # noqa: ASYNC110 - polling state is the point here
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {within}s: {what}") from None


def flux_of(runtime: Runtime, worker_id: str) -> WorkerSnapshot | None:
    return runtime.snapshot(worker_id)


async def apiserver_metric(kube: KubeAccess, name: str, **labels: str) -> float:
    """Sum of the API server's metric `name` over the series carrying `labels`."""
    async with kube.session.get(kube.url("/metrics"), headers=kube.auth_headers()) as response:
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(series.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="session")
def operator_kubeconfig_path(flux_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`manifests/` applied to these tests' cluster, and a kubeconfig with the operator's own token: the
    Flux module with exactly the RBAC a deployment has."""
    kube = harness.Kube(flux_cluster, flux_cluster.admin_kubeconfig)
    harness.install_manifests(kube)
    return harness.operator_kubeconfig(kube, tmp_path_factory.mktemp("operator") / "kubeconfig")


@pytest.fixture
async def operator_kube(
    operator_kubeconfig_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[KubeAccess]:
    """KubeAccess as the operator's ServiceAccount, its Leases in its own namespace (as deployed)."""
    monkeypatch.setenv("POD_NAMESPACE", harness.OPERATOR_NAMESPACE)
    access = load_kube_access(str(operator_kubeconfig_path))
    yield access
    await access.close()
