"""Which GitLabAgents may run: one connection per agent token, at most N agents per namespace. Pure.

kas treats every connection made with one agent token as the same agent and spreads CI requests over all
of them: two GitLabAgents with one token but different ServiceAccounts answered 6 of 10 identical
requests as one ServiceAccount and 4 as the other (issue 17). The namespace cap keeps one tenant from
taking the shared pod's memory and connections (issue 19).

The rule. Take every agent that could run (valid spec, not suspended, token read), oldest first
(creationTimestamp, then namespace and name). Each one runs, unless
1. an agent that runs already uses the same token (`TokenInUse`), or is the same GitLab agent with
   another of its tokens, as kas reported the agent id (`AgentInUse`): it waits, naming that agent; or
2. its namespace already runs `max_agents_per_namespace` agents: it waits (`NamespaceAgentLimit`).
Only running agents hold a token or a place, so when one stops (deleted, suspended, its token changed)
the next one in line runs. The outcome depends only on the set of candidates, never on the order in which
the operator heard of them.

At start, kopf hands over the existing agents in any order: a younger agent reconciled first would
connect, and stop again moments later when an older one with its token shows up (both connected
meanwhile). So the agents listed at start are `expect`ed, and no agent runs while an older expected one
has not been reported yet (`WAIT`; bounded by the caller, see `Admission.expect`).
"""

from __future__ import annotations

import hashlib
import heapq
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent_operator.mapping import AgentKey
from agent_operator.policy_flags import AdmissionLimits
from agent_operator.status_mapping import Problem, ProblemKind
from agent_runtime.secret import Secret

TokenDigest = bytes
"""A keyed hash of an agent token: equal tokens, equal digests; the token cannot be recovered from it."""

_DIGEST_KEY: Final = secrets.token_bytes(32)
"""Per process: a digest means nothing outside this process (it is never written anywhere anyway)."""


def token_digest(token: Secret) -> TokenDigest:
    """The digest by which agents sharing one token are recognised (the token itself is not kept)."""
    return hashlib.blake2b(token.reveal().encode(), key=_DIGEST_KEY, digest_size=16).digest()


@dataclass(frozen=True)
class Candidate:
    """An agent that could run."""

    key: AgentKey
    """The GitLabAgent."""
    created: str
    """metadata.creationTimestamp (RFC 3339, UTC, seconds: ordered as text)."""
    token: TokenDigest
    """Digest of its agent token."""
    agent: tuple[str, int] | None = None
    """(kas host, agent id) once kas reported the id for this token. GitLab lets an agent have two
    tokens, and kas routes by agent id, so two GitLabAgents with one agent's two tokens are one agent to
    kas too. Only known after connecting: the younger one then stops. Compared within one namespace
    only: the id is whatever "kas" says, and a tenant can play kas for any host (spec.proxy and
    spec.caCert are theirs), so across namespaces a claimed id would stop another tenant's agent."""

    @property
    def order(self) -> tuple[str, str, str]:
        """Oldest first; ties (same second) by namespace and name."""
        return (self.created, self.key.namespace, self.key.name)


def token_in_use(holder: AgentKey) -> Problem:
    """The refusal of an agent whose token `holder` (older) already uses."""
    return Problem(
        ProblemKind.ADMISSION,
        "TokenInUse",
        f"GitLabAgent {holder} is older and already connects with the same agent token; kas would "
        "spread CI requests over both agents (and their ServiceAccounts), so only the oldest runs",
        "give this GitLabAgent a token of its own (each token is one agent in GitLab), or remove the "
        f"token from {holder}; this agent starts by itself once the token is free",
    )


def agent_in_use(holder: AgentKey, agent_id: int) -> Problem:
    """The refusal of an agent that kas knows as the same GitLab agent as `holder` (older)."""
    return Problem(
        ProblemKind.ADMISSION,
        "AgentInUse",
        f"GitLabAgent {holder} is older and already connects as GitLab agent {agent_id} (with another of "
        "its tokens); kas would spread CI requests over both agents (and their ServiceAccounts), so only "
        "the oldest runs",
        f"register a separate agent in GitLab for this GitLabAgent, or remove {holder}; this agent starts "
        "by itself once it is the oldest",
    )


def namespace_limit(namespace: str, limit: int) -> Problem:
    """The refusal of an agent whose namespace already runs `limit` agents."""
    return Problem(
        ProblemKind.ADMISSION,
        "NamespaceAgentLimit",
        f"namespace {namespace} already runs {limit} GitLabAgents, the operator's limit "
        "(--max-agents-per-namespace); the oldest ones run",
        "delete or suspend another GitLabAgent of this namespace, or ask the operator's administrator to "
        "raise the limit; this agent starts by itself once there is room",
    )


WAIT: Final = Problem(
    ProblemKind.ADMISSION,
    "WaitingForOlderAgents",
    "an older GitLabAgent that existed at start has not been looked at yet",
)
"""Not a refusal: nothing to write, nothing to start yet (recognised by identity)."""


def decide(
    candidates: Iterable[Candidate],
    limits: AdmissionLimits,
    unseen: Iterable[tuple[str, str, str]] = (),
) -> dict[AgentKey, Problem]:
    """The module's rule: the candidates that may not run, each with its reason (the others run).

    `unseen`: the `order` of agents that existed at start and have not been reported yet; candidates
    younger than the oldest of them get WAIT.
    """
    cap = limits.max_agents_per_namespace
    first_unseen = min(unseen, default=None)
    holders: dict[TokenDigest, AgentKey] = {}
    agents: dict[tuple[str, str, int], AgentKey] = {}
    running: dict[str, int] = {}
    refused: dict[AgentKey, Problem] = {}
    for candidate in sorted(candidates, key=lambda c: c.order):
        namespace = candidate.key.namespace
        agent = (namespace, *candidate.agent) if candidate.agent is not None else None
        holder = holders.get(candidate.token)
        same_agent = agents.get(agent) if agent is not None else None
        if first_unseen is not None and candidate.order > first_unseen:
            refused[candidate.key] = WAIT
        elif holder is not None:
            refused[candidate.key] = token_in_use(holder)
        elif same_agent is not None and agent is not None:
            refused[candidate.key] = agent_in_use(same_agent, agent[2])
        elif cap and running.get(namespace, 0) >= cap:
            refused[candidate.key] = namespace_limit(namespace, cap)
        else:
            holders[candidate.token] = candidate.key
            if agent is not None:
                agents[agent] = candidate.key
            running[namespace] = running.get(namespace, 0) + 1
    return refused


Order = tuple[str, str, str]
"""Candidate.order: (creationTimestamp, namespace, name)."""


class Admission:
    """The current candidates and decisions; `update` says whose decision a change moved.

    `decide` over every candidate costs O(N log N); run on every update, a thousand agents applied at
    once cost O(N² log N), seconds of the operator's CPU at bring-up (docs/benchmarks.md, Fleet bring-up).
    So a change that cannot move anyone else's decision (a candidate that shares its token and GitLab agent
    with no other, in a namespace within its cap, with the oldest unseen agent unchanged) is decided on
    its own; any other change decides everything again.
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        self._limits = limits
        self._candidates: dict[AgentKey, Candidate] = {}
        self._refused: dict[AgentKey, Problem] = {}
        self._unseen: dict[AgentKey, Order] = {}
        self._unseen_heap: list[tuple[Order, AgentKey]] = []
        """Every unseen agent's order, oldest first; entries of agents seen since are dropped lazily."""
        self._waiting_heap: list[tuple[Order, AgentKey]] = []
        """Candidates refused with WAIT, oldest first; entries no longer waiting are dropped lazily."""
        self._by_token: dict[TokenDigest, set[AgentKey]] = {}
        self._by_agent: dict[tuple[str, str, int], set[AgentKey]] = {}
        self._per_namespace: dict[str, int] = {}

    def expect(self, agents: Mapping[AgentKey, str]) -> list[AgentKey]:
        """The agents that exist at start (key → creationTimestamp), before any `update`: until each
        is reported through `update`, younger candidates WAIT. `expect({})` ends the wait (the caller's
        time limit, for an agent that is never reported). Returns the agents whose decision moved."""
        self._unseen = {key: (created, key.namespace, key.name) for key, created in agents.items()}
        self._unseen_heap = sorted((order, key) for key, order in self._unseen.items())
        return self._recompute(exclude=None)

    def update(self, key: AgentKey, candidate: Candidate | None) -> tuple[Problem | None, list[AgentKey]]:
        """Record that `key` could run as `candidate` (None: it cannot or will not run).

        Returns the refusal of `key` (None: it may run) and the other agents whose decision changed,
        which the caller must reconcile again.
        """
        seen = self._unseen.pop(key, None)
        old = self._candidates.get(key)
        if old == candidate and seen is None:
            return self._refused.get(key), []
        first = self._first_unseen()  # without `key` now
        # The oldest unseen agent stays the same (nobody's WAIT moves) unless `key` was it; then the
        # candidates that waited for it are looked at (at start, agents mostly come oldest first).
        was_first = seen is not None and (first is None or seen < first)
        alone = self._alone(old, key)
        if old is not None:
            self._unindex(old)
            del self._candidates[key]
        if candidate is not None:
            self._candidates[key] = candidate
            self._index(candidate)
        if not (alone and self._alone(candidate, key)):
            moved = self._recompute(exclude=key)
            return self._refused.get(key), moved
        moved = []
        if was_first:
            released = self._release_waiting(first)
            if released is None:
                moved = self._recompute(exclude=key)
                return self._refused.get(key), moved
            moved = released
        self._refused.pop(key, None)
        if candidate is not None and first is not None and candidate.order > first:
            self._wait(key, candidate)
        return self._refused.get(key), moved

    def _wait(self, key: AgentKey, candidate: Candidate) -> None:
        self._refused[key] = WAIT
        heapq.heappush(self._waiting_heap, (candidate.order, key))

    def _release_waiting(self, first: Order | None) -> list[AgentKey] | None:
        """Candidates that waited and are now older than the oldest unseen agent (`first`; None: no
        agent is unseen) may run when nobody else's decision hangs on theirs: the ones that moved. None
        when one of them is not alone (the caller decides everything again)."""
        released: set[AgentKey] = set()
        heap = self._waiting_heap
        while heap and (first is None or heap[0][0] <= first):
            order, key = heapq.heappop(heap)
            candidate = self._candidates.get(key)
            if self._refused.get(key) is not WAIT or candidate is None or candidate.order != order:
                continue  # no longer waiting: a stale entry
            if not self._alone(candidate, key):
                return None  # nothing changed yet: the caller decides everything again
            released.add(key)
        for key in released:
            del self._refused[key]
        return sorted(released)

    def _first_unseen(self) -> Order | None:
        heap = self._unseen_heap
        while heap and self._unseen.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _alone(self, candidate: Candidate | None, key: AgentKey) -> bool:
        """`candidate` (of `key`) shares its token and its GitLab agent with no other candidate, and its
        namespace is within the cap: whether it runs moves nobody else's decision."""
        if candidate is None:
            return True
        if self._by_token.get(candidate.token, set()) - {key}:
            return False
        agent = _agent_of(candidate)
        if agent is not None and self._by_agent.get(agent, set()) - {key}:
            return False
        cap = self._limits.max_agents_per_namespace
        return not cap or self._per_namespace.get(candidate.key.namespace, 0) <= cap

    def _index(self, candidate: Candidate) -> None:
        self._by_token.setdefault(candidate.token, set()).add(candidate.key)
        agent = _agent_of(candidate)
        if agent is not None:
            self._by_agent.setdefault(agent, set()).add(candidate.key)
        namespace = candidate.key.namespace
        self._per_namespace[namespace] = self._per_namespace.get(namespace, 0) + 1

    def _unindex(self, candidate: Candidate) -> None:
        _discard(self._by_token, candidate.token, candidate.key)
        agent = _agent_of(candidate)
        if agent is not None:
            _discard(self._by_agent, agent, candidate.key)
        namespace = candidate.key.namespace
        self._per_namespace[namespace] -= 1
        if not self._per_namespace[namespace]:
            del self._per_namespace[namespace]

    def _recompute(self, exclude: AgentKey | None) -> list[AgentKey]:
        before = self._refused
        self._refused = decide(self._candidates.values(), self._limits, self._unseen.values())
        self._waiting_heap = [(self._candidates[k].order, k) for k, p in self._refused.items() if p is WAIT]
        heapq.heapify(self._waiting_heap)
        return _changed(before, self._refused, exclude=exclude)

    def refusal(self, key: AgentKey) -> Problem | None:
        """Why `key` may not run, or None."""
        return self._refused.get(key)


def _agent_of(candidate: Candidate) -> tuple[str, str, int] | None:
    """(namespace, kas host, agent id): one GitLab agent, compared within a namespace (see Candidate)."""
    return (candidate.key.namespace, *candidate.agent) if candidate.agent is not None else None


def _discard(index: dict[Any, set[AgentKey]], value: Any, key: AgentKey) -> None:
    keys = index.get(value)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[value]


def _changed(
    before: Mapping[AgentKey, Problem], after: Mapping[AgentKey, Problem], *, exclude: AgentKey | None
) -> list[AgentKey]:
    keys = before.keys() | after.keys()
    return sorted(k for k in keys if k != exclude and before.get(k) != after.get(k))
