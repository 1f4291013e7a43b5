"""Which live member owns an agent: rendezvous (highest random weight) hashing.

Every member scores every agent with a hash of (member, agent); the highest score owns it. All replicas
compute the same owner from the same member set, with no state and no coordination. When a member joins,
it takes exactly the agents it now scores highest on (about 1/N of them, from every other member); when
one leaves, only its agents move, each to its runner-up. Nothing else moves, unlike `hash mod N`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(member: str, agent: str) -> int:
    """The weight of `member` for `agent`: 64 bits of BLAKE2b over both (stable across processes)."""
    digest = hashlib.blake2b(f"{member}\n{agent}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(agent: str, members: Iterable[str]) -> str | None:
    """The member that owns `agent`, or None without members. Ties (never seen in 64 bits) go to the
    greater name, so the answer never depends on the order of `members`."""
    return max(members, key=lambda m: (score(m, agent), m), default=None)


def shares(agents: Iterable[str], members: Iterable[str]) -> dict[str, list[str]]:
    """The agents of each member (every member listed, possibly with none)."""
    pool = sorted(set(members))
    result: dict[str, list[str]] = {m: [] for m in pool}
    for agent in agents:
        chosen = owner(agent, pool)
        if chosen is not None:
            result[chosen].append(agent)
    return result
