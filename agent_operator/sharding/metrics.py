"""Metrics of sharding: what this replica runs, whom it sees, how agents moved."""

from __future__ import annotations

import enum

from prometheus_client import CollectorRegistry, Counter, Gauge


class Handover(enum.StrEnum):
    """How an agent's worker came to this replica or left it (label `kind`)."""

    CLAIMED = "claimed"
    """Started here under a claim nobody held (first start, or after the previous owner released it)."""
    TAKEN_OVER = "taken_over"
    """Started here under the claim of a replica whose member Lease expired."""
    HANDED_OFF = "handed_off"
    """Drained here and released: another replica owns it now, or it stopped being wanted."""
    LOST = "lost"
    """Stopped here at once: another replica holds its claim now, or this replica could not renew its
    member Lease in time (the others may be taking over)."""


class ShardMetrics:
    """The families on the operator's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.owned = Gauge(
            "agentk_operator_shard_agents_owned",
            "GitLabAgents whose worker runs on this replica (sharding)",
            registry=registry,
        )
        """Workers running here."""
        self.members = Gauge(
            "agentk_operator_shard_members",
            "Live operator replicas this replica shares the GitLabAgents with, itself included",
            registry=registry,
        )
        """Live members seen."""
        self.handovers = Counter(
            "agentk_operator_shard_handovers",
            "Agents that started on or left this replica, by kind (claimed, taken_over, handed_off, lost)",
            ["kind"],
            registry=registry,
        )
        """Moves of agents."""
        self.fences = Counter(
            "agentk_operator_shard_fences",
            "Times this replica could not renew its member Lease in time and stopped every worker here",
            registry=registry,
        )
        """Fences (members.py); each moves all of this replica's agents to the others."""
        for kind in Handover:
            self.handovers.labels(kind=kind.value)
