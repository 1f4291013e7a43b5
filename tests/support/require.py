"""The REQUIRE_K8S switch: a missing test binary skips the tests that need it, or fails them in CI.

Every fixture that finds a built binary (kube-apiserver + etcd, redis-server) goes through `require`, so
CI (`REQUIRE_K8S=1`) never passes by skipping what it was meant to run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NoReturn, TypeVar

import pytest

from tests.support.k8s_cluster import AssetsNotFoundError
from tests.support.redis_server import RedisNotFoundError

T = TypeVar("T")


def missing(reason: str) -> NoReturn:
    """Skip with `reason`; fail instead when REQUIRE_K8S=1."""
    if os.environ.get("REQUIRE_K8S") == "1":
        pytest.fail(f"{reason} (REQUIRE_K8S=1)", pytrace=False)
    pytest.skip(reason)


def require(find: Callable[[], T]) -> T:
    """`find()`, or skip (fail with REQUIRE_K8S=1) with the reason it gives for a missing binary."""
    try:
        return find()
    except (AssetsNotFoundError, RedisNotFoundError) as err:
        reason = str(err)
    missing(reason)  # outside the except block, so the report is the reason alone, not a chain
