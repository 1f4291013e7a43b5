"""Flux fixtures: Flux's own source-controller and kustomize-controller (scripts/flux-controllers) running
against the session's apiserver, and a Git server on loopback that they fetch from over smart HTTP.

Without the controllers the tests that need them skip with the command that builds them; with
REQUIRE_FLUX=1 (CI) they fail instead. The operator runs as tests/e2e runs it: its ServiceAccount and
RBAC from manifests/, against the reference kas.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import agent_namespace, kas, kube, operator, operator_credentials
from tests.support.flux import FluxBinaries, FluxControllers, FluxNotFoundError, find_flux
from tests.support.git_http import GitHttpServer
from tests.support.k8s_cluster import LocalCluster
from tests.support.require import FLUX, missing

__all__ = ["agent_namespace", "kas", "kube", "operator", "operator_credentials"]
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents and "k8s_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def flux_binaries() -> FluxBinaries:
    """Flux's controllers and CRDs; skip (fail with REQUIRE_FLUX=1) when not built."""
    try:
        return find_flux()
    except FluxNotFoundError as err:
        reason = str(err)
    return missing(reason, FLUX)


@pytest.fixture(scope="session")
def flux_controllers(
    flux_binaries: FluxBinaries, k8s_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FluxControllers]:
    """source-controller + kustomize-controller watching every namespace of the session's apiserver."""
    controllers = FluxControllers(flux_binaries, k8s_cluster, tmp_path_factory.mktemp("flux"))
    controllers.start()
    try:
        yield controllers
    finally:
        codes = controllers.stop()
    assert codes == {"source-controller": 0, "kustomize-controller": 0}, codes


@pytest.fixture(scope="session")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    """Smart-HTTP Git server on loopback; tests create their own repositories in it."""
    with GitHttpServer(tmp_path_factory.mktemp("git-repos")) as server:
        yield server
