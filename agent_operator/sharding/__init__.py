"""Sharding GitLabAgents over operator replicas, coordinated through Leases (opt-in: `--sharding`).

Every replica holds a member Lease in the operator's namespace and renews it; the live members split the
agents by rendezvous hashing of `<namespace>/<name>`; each agent's worker runs under a claim Lease that
the old owner releases only after its worker drained. See docs/operations.md, "Sharding".
"""

from agent_operator.sharding.service import Sharding
from agent_operator.sharding.settings import ShardingSettings

__all__ = ["Sharding", "ShardingSettings"]
