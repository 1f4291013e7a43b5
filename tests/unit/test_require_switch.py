"""The REQUIRE_K8S switch itself: without it a missing binary skips; with REQUIRE_K8S=1 (CI) it fails."""

from __future__ import annotations

from typing import NoReturn

import pytest

from tests.support.k8s_cluster import AssetsNotFoundError, find_assets
from tests.support.redis_server import RedisNotFoundError
from tests.support.require import require


def _no_assets() -> NoReturn:
    raise AssetsNotFoundError("no kube-apiserver here")


def _no_redis() -> NoReturn:
    raise RedisNotFoundError("no redis-server here")


@pytest.mark.parametrize("find", [_no_assets, _no_redis])
def test_a_missing_binary_skips_by_default(find: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUIRE_K8S", raising=False)
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception), match="here") as raised:
        require(find)  # type: ignore[arg-type]
    assert raised.type is pytest.skip.Exception
    assert str(raised.value).endswith("here")


@pytest.mark.parametrize("find", [_no_assets, _no_redis])
def test_a_missing_binary_fails_with_require_k8s(find: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUIRE_K8S", "1")
    # Both caught: a skip raised here would otherwise skip this very test, and CI passes on skips.
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception), match="here") as raised:
        require(find)  # type: ignore[arg-type]
    assert raised.type is pytest.fail.Exception
    assert str(raised.value).endswith("here (REQUIRE_K8S=1)")


def test_a_found_binary_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUIRE_K8S", "1")
    assert require(lambda: "found") == "found"


def test_every_substrate_fixture_goes_through_the_switch() -> None:
    """A fixture calling a finder and pytest.skip itself bypassed REQUIRE_K8S (test_informer_gone.py did)."""
    from pathlib import Path

    tests = Path(__file__).parents[1]
    bypasses = [
        str(path.relative_to(tests))
        for path in tests.rglob("*.py")
        if "pytest.skip(" in (text := path.read_text())
        and any(f"{finder}()" in text for finder in (find_assets.__name__, "find_redis_server"))
    ]
    assert bypasses == []
