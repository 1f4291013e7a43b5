"""The monitoring tests: promtool (rules, metrics) and a real Prometheus scraping the operator.

The e2e fixtures (`kube`, `kas`, `operator`, ...) are the ones tests/e2e uses, imported so pytest
registers them here too: the operator runs under manifests/' ServiceAccount, as in tests/e2e. A missing
`prometheus`/`promtool` skips the tests that need it, and fails them with REQUIRE_K8S=1 (CI installs the
Debian package; `make system-deps`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import (  # noqa: F401  # fixtures, registered by being imported here
    agent_namespace,
    kas,
    kube,
    operator,
    operator_credentials,
    pytest_runtest_makereport,
)
from tests.support.prometheus import PrometheusNotFoundError, find_binary
from tests.support.require import missing

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents and "operator" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.integration)


def require(name: str) -> str:
    """The path of `name` (promtool, prometheus); skips without it, fails with REQUIRE_K8S=1."""
    try:
        return find_binary(name)
    except PrometheusNotFoundError as err:
        reason = str(err)
    return missing(reason)
