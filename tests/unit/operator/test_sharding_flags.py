"""`--sharding` and its companions: validated, off by default, exclusive with peering."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_operator.settings import UsageError, parse_settings
from agent_operator.sharding import settings as sharding_settings
from agent_operator.sharding.settings import DEFAULT_LEASE_DURATION_S, ShardingSettings, default_group


def test_off_by_default() -> None:
    assert parse_settings([], {}).sharding is None


def test_on_with_the_pod_namespace_and_a_group_per_namespace_scope() -> None:
    settings = parse_settings(["--sharding", "--namespace=b", "--namespace=a"], {"POD_NAMESPACE": "ops"})
    assert settings.sharding == ShardingSettings("ops", default_group(("a", "b")), DEFAULT_LEASE_DURATION_S)
    assert default_group(("a", "b")) == default_group(("b", "a")) != default_group(("a",))
    assert default_group(()) == "gao-all"


def test_from_the_environment() -> None:
    env = {"GAO_SHARDING": "true", "GAO_SHARD_NAMESPACE": "ops", "GAO_SHARD_GROUP": "blue"}
    env["GAO_SHARD_LEASE_DURATION"] = "12"
    assert parse_settings([], env).sharding == ShardingSettings("ops", "blue", 12.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sharding", "--peering=x"], "--sharding and --peering exclude each other"),
        (["--sharding", "--shard-lease-duration=1"], "--shard-lease-duration must be between"),
        (["--sharding", "--shard-lease-duration=soon"], "--shard-lease-duration must be a number"),
        (["--sharding", "--shard-group=Blue_1"], "--shard-group must be"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_settings(argv, {"POD_NAMESPACE": "ops"})


def test_outside_a_pod_the_lease_namespace_is_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sharding_settings, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    with pytest.raises(UsageError, match="--shard-namespace"):
        parse_settings(["--sharding"], {})
