"""Integration tests run against the real substrate; every test in this directory is `integration`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), persist_config=False
    )
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def admin_api(admin_kubeconfig: Path) -> Iterator[client.ApiClient]:
    """A `kubernetes` ApiClient authenticated as the cluster admin."""
    yield from _api_client(admin_kubeconfig)


@pytest.fixture(scope="session")
def user_api(user_kubeconfig: Path) -> Iterator[client.ApiClient]:
    """A `kubernetes` ApiClient authenticated as `alice` (no rights until a test grants some)."""
    yield from _api_client(user_kubeconfig)
