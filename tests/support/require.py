"""The REQUIRE_* switches: a missing test binary skips the tests that need it, or fails them in CI.

Every fixture that finds a built binary goes through `missing` (or `require`), so CI never passes by
skipping what it was meant to run. `REQUIRE_K8S=1` covers the substrate every integration test needs
(kube-apiserver + etcd, redis-server, Go for the test tools, promtool/prometheus); separate switches cover
what takes a long build of its own (`REQUIRE_GITLAB_PEERS=1`: GitLab's kas and agentk; `REQUIRE_IMAGE=1`:
the container image; `REQUIRE_FLUX=1`: Flux's controllers).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NoReturn, TypeVar

import pytest

from tests.support.k8s_cluster import AssetsNotFoundError
from tests.support.redis_server import RedisNotFoundError

T = TypeVar("T")


K8S = "REQUIRE_K8S"
"""The switch for the substrate of every integration test."""
GITLAB_PEERS = "REQUIRE_GITLAB_PEERS"
"""The switch for GitLab's own kas and agentk (scripts/gitlab-peers)."""
IMAGE = "REQUIRE_IMAGE"
"""The switch for the operator's container image and an engine to run it (make image)."""
FLUX = "REQUIRE_FLUX"
"""The switch for Flux's source-controller and kustomize-controller (scripts/flux-controllers)."""


def missing(reason: str, switch: str = K8S) -> NoReturn:
    """Skip with `reason`; fail instead when the environment variable `switch` is 1 (CI)."""
    if os.environ.get(switch) == "1":
        pytest.fail(f"{reason} ({switch}=1)", pytrace=False)
    pytest.skip(reason)


def require(find: Callable[[], T]) -> T:
    """`find()`, or skip (fail with REQUIRE_K8S=1) with the reason it gives for a missing binary."""
    try:
        return find()
    except (AssetsNotFoundError, RedisNotFoundError) as err:
        reason = str(err)
    missing(reason)  # outside the except block, so the report is the reason alone, not a chain
