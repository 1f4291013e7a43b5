"""The operator's own metric families, on the registry the runtime's /metrics serves.

Labels are closed sets (result classes, reasons), never resource names: per-agent series belong to the
runtime, which deletes them when an agent goes away.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
