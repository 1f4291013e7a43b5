"""The pure parts of sharding: who owns an agent, who is live, what a replica does about one agent."""

from __future__ import annotations

import pytest

from agent_runtime.sharding.assign import owner, shares
from agent_runtime.sharding.handover import Action, Situation, decide
from agent_runtime.sharding.members import Membership

AGENTS = [f"tenant-{i % 7}/agent-{i}" for i in range(3000)]
THREE = ["gao-0", "gao-1", "gao-2"]


def test_the_owner_does_not_depend_on_the_order_of_members() -> None:
    for agent in AGENTS[:200]:
        assert owner(agent, THREE) == owner(agent, list(reversed(THREE))) == owner(agent, set(THREE))


def test_no_members_no_owner() -> None:
    assert owner("ns/a", []) is None


def test_agents_spread_evenly_over_members() -> None:
    counts = {member: len(agents) for member, agents in shares(AGENTS, THREE).items()}
    assert sum(counts.values()) == len(AGENTS)
    # 1000 each on average; a uniform hash stays within about 4 standard deviations (26) of it.
    assert all(880 <= count <= 1120 for count in counts.values()), counts


def test_a_new_member_takes_agents_only_for_itself_about_its_share() -> None:
    before = {agent: owner(agent, THREE) for agent in AGENTS}
    after = {agent: owner(agent, [*THREE, "gao-3"]) for agent in AGENTS}
    moved = [agent for agent in AGENTS if before[agent] != after[agent]]
    assert {after[agent] for agent in moved} == {"gao-3"}
    assert 620 <= len(moved) <= 880, len(moved)  # a quarter of 3000


def test_a_member_that_leaves_hands_over_only_its_own_agents() -> None:
    before = {agent: owner(agent, THREE) for agent in AGENTS}
    after = {agent: owner(agent, ["gao-0", "gao-2"]) for agent in AGENTS}
    moved = {agent for agent in AGENTS if before[agent] != after[agent]}
    assert moved == {agent for agent in AGENTS if before[agent] == "gao-1"}
    assert {after[agent] for agent in moved} == {"gao-0", "gao-2"}


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_member_is_live_while_its_lease_keeps_changing() -> None:
    clock = _Clock()
    members = Membership(clock)
    members.observe("lease-a", "a", "1", 8.0)
    members.observe("lease-b", "b", "7", 8.0)
    assert members.live() == {"a", "b"}  # first seen counts as just renewed
    clock.now += 5
    members.observe("lease-a", "a", "2", 8.0)  # a renews, b does not
    clock.now += 3.5
    assert members.live() == {"a"}
    clock.now += 4
    members.observe("lease-a", "a", "2", 8.0)  # the same version again is no renewal
    clock.now += 1
    assert members.live() == set()
    assert members.marker("a") == "2"
    assert members.stale(8.0) == [("lease-a", "2"), ("lease-b", "7")]


def test_a_deleted_lease_is_a_member_that_left() -> None:
    members = Membership(_Clock())
    members.observe("lease-a", "a", "1", 8.0)
    members.forget("lease-a")
    assert members.live() == set()
    assert members.marker("a") is None


def _situation(**changes: object) -> Situation:
    base: dict[str, object] = {
        "me": "a",
        "owner": "a",
        "wanted": True,
        "running": False,
        "holder": None,
        "holder_live": False,
    }
    return Situation(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "action"),
    [
        ({}, Action.CLAIM),
        ({"holder": "a"}, Action.START),  # held since a previous run under this name
        ({"holder": "b", "holder_live": True}, Action.WAIT),  # b drains first, then releases
        ({"holder": "b", "holder_live": False}, Action.TAKE_OVER),  # b is dead
        ({"owner": "b"}, Action.NOTHING),
        ({"owner": "b", "holder": "a"}, Action.RELEASE),
        ({"wanted": False, "holder": "a"}, Action.RELEASE),
        ({"owner": None}, Action.NOTHING),  # membership unknown: start nothing
        ({"running": True, "holder": "a"}, Action.NOTHING),
        ({"running": True, "holder": "a", "owner": "b"}, Action.STOP),  # handed to b: drain
        ({"running": True, "holder": "a", "wanted": False}, Action.STOP),
        ({"running": True, "holder": "b", "holder_live": True}, Action.STOP),  # b took the claim
        ({"running": True, "holder": None}, Action.STOP),  # the claim was deleted
        ({"running": True, "holder": "a", "owner": None}, Action.NOTHING),  # keep while unknown
        ({"running": True, "holder": "b", "owner": None}, Action.STOP),
    ],
)
def test_drain_then_start(changes: dict[str, object], action: Action) -> None:
    assert decide(_situation(**changes)) is action
