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
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

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


class Admission:
    """The current candidates and decisions; `update` says whose decision a change moved."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self._limits = limits
        self._candidates: dict[AgentKey, Candidate] = {}
        self._refused: dict[AgentKey, Problem] = {}
        self._unseen: dict[AgentKey, tuple[str, str, str]] = {}

    def expect(self, agents: Mapping[AgentKey, str]) -> list[AgentKey]:
        """The agents that exist at start (key → creationTimestamp), before any `update`: until each
        is reported through `update`, younger candidates WAIT. `expect({})` ends the wait (the caller's
        time limit, for an agent that is never reported). Returns the agents whose decision moved."""
        self._unseen = {key: (created, key.namespace, key.name) for key, created in agents.items()}
        return self._recompute(exclude=None)

    def update(self, key: AgentKey, candidate: Candidate | None) -> tuple[Problem | None, list[AgentKey]]:
        """Record that `key` could run as `candidate` (None: it cannot or will not run).

        Returns the refusal of `key` (None: it may run) and the other agents whose decision changed,
        which the caller must reconcile again.
        """
        seen = self._unseen.pop(key, None) is not None
        if self._candidates.get(key) == candidate and not seen:
            return self._refused.get(key), []
        if candidate is None:
            self._candidates.pop(key, None)
        else:
            self._candidates[key] = candidate
        moved = self._recompute(exclude=key)
        return self._refused.get(key), moved

    def _recompute(self, exclude: AgentKey | None) -> list[AgentKey]:
        before = self._refused
        self._refused = decide(self._candidates.values(), self._limits, self._unseen.values())
        return _changed(before, self._refused, exclude=exclude)

    def refusal(self, key: AgentKey) -> Problem | None:
        """Why `key` may not run, or None."""
        return self._refused.get(key)


def _changed(
    before: Mapping[AgentKey, Problem], after: Mapping[AgentKey, Problem], *, exclude: AgentKey | None
) -> list[AgentKey]:
    keys = before.keys() | after.keys()
    return sorted(k for k in keys if k != exclude and before.get(k) != after.get(k))
