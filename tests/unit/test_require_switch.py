"""The REQUIRE_* switches themselves: without one a missing binary skips; with it set to 1 (CI) it fails."""

from __future__ import annotations

from typing import NoReturn

import pytest

from tests.support.k8s_cluster import AssetsNotFoundError, find_assets
from tests.support.redis_server import RedisNotFoundError
from tests.support.require import GITLAB_PEERS, K8S, missing, require


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


def test_each_switch_governs_only_its_own_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """REQUIRE_K8S=1 alone still lets a missing GitLab peer skip (a user's machine without the long build)."""
    monkeypatch.setenv(K8S, "1")
    monkeypatch.delenv(GITLAB_PEERS, raising=False)
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)) as raised:
        missing("no kas here", GITLAB_PEERS)
    assert raised.type is pytest.skip.Exception
    monkeypatch.setenv(GITLAB_PEERS, "1")
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)) as raised:
        missing("no kas here", GITLAB_PEERS)
    assert raised.type is pytest.fail.Exception
    assert str(raised.value) == "no kas here (REQUIRE_GITLAB_PEERS=1)"


def test_no_test_reads_a_switch_itself() -> None:
    """Each switch is read in one place (tests/support/require.py), so none can drift or be bypassed."""
    from pathlib import Path

    tests = Path(__file__).parents[1]
    reading = "environ.get(" + '"REQUIRE_'  # split, so this file does not match itself
    readers = [
        str(path.relative_to(tests))
        for path in tests.rglob("*.py")
        if path.name != "require.py" and reading in path.read_text()
    ]
    assert readers == []
