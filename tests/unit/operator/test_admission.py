"""Admission: one running agent per token, at most N per namespace, oldest first, whatever the order
in which the operator heard of them."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace

from agent_operator.admission import WAIT, Admission, Candidate, decide, token_digest
from agent_operator.mapping import AgentKey
from agent_operator.policy_flags import AdmissionLimits
from agent_operator.status_mapping import Problem
from agent_runtime.secret import Secret

NO_CAP = AdmissionLimits(max_agents_per_namespace=0)


def _c(ns: str, name: str, created: str, token: str) -> Candidate:
    return Candidate(AgentKey(ns, name), f"2026-12-05T20:{created}Z", token_digest(Secret(token)))


def _reasons(refused: Mapping[AgentKey, Problem | None]) -> dict[str, str]:
    return {str(k): v.reason for k, v in refused.items() if v is not None}


def test_equal_tokens_have_equal_digests_that_do_not_contain_the_token() -> None:
    token = "glagent-" + "x" * 40
    assert token_digest(Secret(token)) == token_digest(Secret(token))
    assert token_digest(Secret(token)) != token_digest(Secret(token + "y"))
    assert token.encode() not in token_digest(Secret(token))


def test_the_oldest_agent_holds_a_shared_token_and_the_others_name_it() -> None:
    old, young, other = (
        _c("b", "old", "00:00", "t1"),
        _c("a", "young", "00:05", "t1"),
        _c("a", "x", "00:01", "t2"),
    )

    refused = decide([young, other, old], NO_CAP)

    assert _reasons(refused) == {"a/young": "TokenInUse"}
    problem = refused[young.key]
    assert "GitLabAgent b/old" in problem.message
    assert "t1" not in problem.message + problem.hint


def test_same_second_is_ordered_by_namespace_and_name() -> None:
    first, second = _c("ns", "a", "00:00", "t"), _c("ns", "b", "00:00", "t")
    assert _reasons(decide([second, first], NO_CAP)) == {"ns/b": "TokenInUse"}


def test_namespace_cap_runs_the_oldest_n_per_namespace() -> None:
    agents = [_c("ns", f"a{i}", f"00:0{i}", f"t{i}") for i in range(4)] + [_c("other", "z", "00:09", "tz")]

    refused = decide(reversed(agents), AdmissionLimits(max_agents_per_namespace=2))

    assert _reasons(refused) == {"ns/a2": "NamespaceAgentLimit", "ns/a3": "NamespaceAgentLimit"}
    assert "namespace ns already runs 2 GitLabAgents" in refused[AgentKey("ns", "a2")].message
    assert "--max-agents-per-namespace" in refused[AgentKey("ns", "a2")].message


def test_an_agent_waiting_for_a_token_takes_no_place_in_its_namespace() -> None:
    holder, twin, third = (
        _c("ns", "a", "00:00", "t"),
        _c("ns", "b", "00:01", "t"),
        _c("ns", "c", "00:02", "u"),
    )
    assert _reasons(decide([holder, twin, third], AdmissionLimits(max_agents_per_namespace=2))) == {
        "ns/b": "TokenInUse"
    }


def test_a_holder_refused_by_its_namespace_cap_leaves_the_token_to_the_next() -> None:
    full = _c("full", "first", "00:00", "u")
    capped, elsewhere = _c("full", "second", "00:01", "t"), _c("free", "x", "00:02", "t")
    refused = decide([elsewhere, capped, full], AdmissionLimits(max_agents_per_namespace=1))
    assert _reasons(refused) == {"full/second": "NamespaceAgentLimit"}


def test_the_outcome_does_not_depend_on_the_order_of_arrival() -> None:
    agents = [_c("ns", "a", "00:03", "t"), _c("ns", "b", "00:01", "t"), _c("ns", "c", "00:02", "u")]
    limits = AdmissionLimits(max_agents_per_namespace=1)
    outcomes = set()
    for order in itertools.permutations(agents):
        admission = Admission(limits)
        for candidate in order:
            admission.update(candidate.key, candidate)
        refusals = {c.key: admission.refusal(c.key) for c in agents}
        outcomes.add(tuple(sorted(_reasons(refusals).items())))
    assert outcomes == {(("ns/a", "TokenInUse"), ("ns/c", "NamespaceAgentLimit"))}


def test_update_names_the_agents_whose_decision_moved() -> None:
    admission = Admission(NO_CAP)
    old, young = _c("ns", "old", "00:00", "t"), _c("ns", "young", "00:05", "t")

    assert admission.update(young.key, young) == (None, [])
    refusal, moved = admission.update(old.key, old)  # the older one shows up (e.g. at a restart)
    assert refusal is None
    assert moved == [young.key], "the younger one must stop"
    assert admission.update(old.key, old) == (None, []), "nothing changed, nothing moved"

    refusal, moved = admission.update(old.key, None)  # deleted, suspended, or its token changed
    assert moved == [young.key], "the next in line starts"
    assert admission.refusal(young.key) is None


def test_at_start_no_agent_runs_before_every_older_one_was_looked_at() -> None:
    """kopf hands over existing agents in any order: a younger twin first must not connect at all."""
    admission = Admission(NO_CAP)
    old, young, alone = (
        _c("ns", "zz-old", "00:00", "t"),
        _c("ns", "aa-young", "00:05", "t"),
        _c("x", "y", "00:09", "u"),
    )
    assert admission.expect({c.key: c.order[0] for c in (old, young, alone)}) == []

    assert admission.update(young.key, young) == (WAIT, [])
    assert admission.update(alone.key, alone) == (WAIT, [])
    refusal, moved = admission.update(old.key, old)

    assert refusal is None
    assert moved == [young.key, alone.key]
    assert _reasons({c.key: admission.refusal(c.key) for c in (old, young, alone)}) == {
        "ns/aa-young": "TokenInUse"
    }


def test_expecting_nothing_ends_the_wait_for_agents_never_reported() -> None:
    admission = Admission(NO_CAP)
    never, young = _c("ns", "never", "00:00", "t"), _c("ns", "young", "00:05", "u")
    admission.expect({never.key: never.order[0], young.key: young.order[0]})
    assert admission.update(young.key, young) == (WAIT, [])

    assert admission.expect({}) == [young.key]
    assert admission.refusal(young.key) is None


def test_two_tokens_of_one_gitlab_agent_are_one_agent_once_kas_reported_the_id() -> None:
    old = replace(_c("ns", "old", "00:00", "t1"), agent=("kas.example.com", 42))
    young_unknown = _c("ns", "young", "00:05", "t2")
    young = replace(young_unknown, agent=("kas.example.com", 42))
    elsewhere = replace(_c("ns", "other-gitlab", "00:06", "t3"), agent=("kas.other.example", 42))

    assert decide([old, young_unknown, elsewhere], NO_CAP) == {}, "the id is not known before connecting"
    refused = decide([young, old, elsewhere], NO_CAP)

    assert _reasons(refused) == {"ns/young": "AgentInUse"}
    assert "GitLabAgent ns/old" in refused[young.key].message
    assert "GitLab agent 42" in refused[young.key].message


def test_an_agent_id_claimed_in_another_namespace_stops_nobody() -> None:
    """The id is what "kas" says, and a tenant can play kas for any host: only its own namespace counts."""
    claim = replace(_c("attacker", "early", "00:00", "t1"), agent=("kas.example.com", 42))
    victim = replace(_c("victim", "agent", "00:05", "t2"), agent=("kas.example.com", 42))
    assert decide([claim, victim], NO_CAP) == {}
