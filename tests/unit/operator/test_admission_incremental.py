"""Admission decides a change that moves nobody else on its own (not over every candidate): its
decisions, and the agents it says moved, are those of `decide` over all candidates, for any sequence."""

from __future__ import annotations

import random

import pytest

from agent_operator.admission import Admission, Candidate, decide, token_digest
from agent_operator.mapping import AgentKey
from agent_operator.policy_flags import AdmissionLimits
from agent_operator.status_mapping import Problem
from agent_runtime.secret import Secret

KEYS = [AgentKey(ns, f"a{i}") for ns in ("n1", "n2") for i in range(6)]
TOKENS = [token_digest(Secret(f"t{i}")) for i in range(8)]


def _candidate(rng: random.Random, key: AgentKey) -> Candidate | None:
    if rng.random() < 0.2:
        return None
    agent = ("kas.example", rng.randrange(3)) if rng.random() < 0.3 else None
    created = f"2026-12-05T20:00:{rng.randrange(10):02d}Z"
    return Candidate(key, created, rng.choice(TOKENS), agent)


def _decisions(admission: Admission) -> dict[AgentKey, Problem | None]:
    return {key: admission.refusal(key) for key in KEYS}


@pytest.mark.parametrize("cap", [0, 2, 4])
@pytest.mark.parametrize("seed", range(40))
def test_every_update_matches_deciding_everything_again(cap: int, seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not cryptography
    limits = AdmissionLimits(max_agents_per_namespace=cap)
    admission = Admission(limits)
    candidates: dict[AgentKey, Candidate] = {}
    unseen = {k: f"2026-12-05T20:00:{rng.randrange(10):02d}Z" for k in rng.sample(KEYS, rng.randrange(9))}
    admission.expect(unseen)
    orders = {k: (created, k.namespace, k.name) for k, created in unseen.items()}
    for _ in range(60):
        key = rng.choice(KEYS)
        candidate = _candidate(rng, key)
        before = _decisions(admission)

        refusal, moved = admission.update(key, candidate)

        orders.pop(key, None)
        if candidate is None:
            candidates.pop(key, None)
        else:
            candidates[key] = candidate
        expected = decide(candidates.values(), limits, orders.values())
        after = _decisions(admission)
        assert after == {k: expected.get(k) for k in KEYS}
        assert refusal == expected.get(key)
        assert sorted(moved) == sorted(k for k in KEYS if k != key and before[k] != after[k])


def test_agents_reported_oldest_first_release_the_waiting_ones_without_deciding_everything() -> None:
    """A restart: every agent existed at start and is reported about in creation order; each report
    releases the younger candidates that waited for it, a step that need not look at all of them."""
    limits = AdmissionLimits(max_agents_per_namespace=0)
    admission = Admission(limits)
    keys = [AgentKey("n", f"a{i:03d}") for i in range(200)]
    created = {key: f"2026-12-05T20:{i // 60:02d}:{i % 60:02d}Z" for i, key in enumerate(keys)}
    admission.expect(created)
    calls = 0
    original = admission._recompute

    def counting(exclude: AgentKey | None) -> list[AgentKey]:
        nonlocal calls
        calls += 1
        return original(exclude)

    admission._recompute = counting  # type: ignore[method-assign]
    for key in reversed(keys[1:]):  # the youngest first: each waits for the oldest, still unseen
        refusal, _ = admission.update(key, Candidate(key, created[key], token_digest(Secret(key.name)), None))
        assert refusal is not None
    refusal, moved = admission.update(
        keys[0], Candidate(keys[0], created[keys[0]], token_digest(Secret("x")), None)
    )
    assert refusal is None
    assert moved == sorted(keys[1:])  # all released at once
    assert calls == 0
    assert all(admission.refusal(key) is None for key in keys)
