"""The operator's own metric families, on the registry the runtime's /metrics serves.

Labels are closed sets (result classes, reasons), with one exception: `agentk_operator_agent_phase`
has one series per GitLabAgent (label `agent`, `<namespace>/<name>`, as the runtime's per-agent series),
deleted by `forget_agent()` when the operator stops handling it. Alerts need it to name the resource for
agents the runtime runs no worker for (a missing Secret, a refused admission).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent_operator.api import GitLabAgentStatus

_PHASE_HELP = (
    "1 for the phase each GitLabAgent's status shows, with the reason of its Ready condition "
    "(Connected when ready); one series per GitLabAgent"
)


class OperatorMetrics:
    """Counters of the operator's API work."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.status_patches = Counter(
            "agentk_operator_status_patches",
            "Status patches of GitLabAgents, by HTTP result class (error = no answer)",
            ["result"],
            registry=registry,
        )
        """Status writes."""
        self.reconciles = Counter(
            "agentk_operator_reconciles",
            "GitLabAgent reconciliations, by outcome (applied, suspended, failed, removed)",
            ["outcome"],
            registry=registry,
        )
        """Reconciliations."""
        self.token_rotations = Counter(
            "agentk_operator_token_rotations",
            "Agent tokens rotated in place after their Secret changed",
            registry=registry,
        )
        """Token rotations."""
        self.agents = Gauge(
            "agentk_operator_agents", "GitLabAgents this operator process handles", registry=registry
        )
        """Tracked resources."""
        self.ready = Gauge(
            "agentk_operator_ready",
            "1 while /readiness answers 200: every agent that should be connected is, or has failed",
            registry=registry,
        )
        """Readiness, published by the composition root (refreshed every few seconds)."""
        self._agent_phase = Gauge(
            "agentk_operator_agent_phase", _PHASE_HELP, ["agent", "phase", "reason"], registry=registry
        )
        self._agent_phase_labels: dict[str, tuple[str, str]] = {}

    def observe_agent(self, agent: str, phase: str, reason: str) -> None:
        """The status computed for GitLabAgent `agent` (`<namespace>/<name>`): its phase and Ready reason.

        Exactly one series per agent: a change removes the previous (phase, reason) series, so an alert on
        a reason resolves as soon as the status moves on."""
        previous = self._agent_phase_labels.get(agent)
        if previous == (phase, reason):
            return
        if previous is not None:
            self._agent_phase.remove(agent, *previous)
        self._agent_phase.labels(agent, phase, reason).set(1)
        self._agent_phase_labels[agent] = (phase, reason)

    def observe_status(self, agent: str, status: GitLabAgentStatus) -> None:
        """`observe_agent()` from a computed status."""
        ready = status.condition("Ready")
        phase = status.phase.value if status.phase is not None else "Unknown"
        self.observe_agent(agent, phase, ready.reason if ready is not None else "")

    def forget_agent(self, agent: str) -> None:
        """The operator no longer handles GitLabAgent `agent` (deleted, or handed over): drop its series."""
        previous = self._agent_phase_labels.pop(agent, None)
        if previous is not None:
            self._agent_phase.remove(agent, *previous)
