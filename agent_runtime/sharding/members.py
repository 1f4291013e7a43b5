"""Which members are live, from the Leases they renew, judged by this process's monotonic clock.

A member renews its Lease every few seconds; each renewal changes the Lease (renewTime, and so its
resourceVersion). A member is live while this process has seen its Lease change within the Lease's
duration. The clocks of other machines are never compared with ours (client-go's leader election judges
the same way): a replica whose clock is off cannot make a live member look dead, or the reverse.

A Lease first seen counts as just renewed, so a process that starts next to a dead member's Lease waits
one duration before calling it dead; the other replicas, which watched it stop changing, know sooner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class _Seen:
    holder: str
    marker: str
    """What changes at every renewal (the Lease's resourceVersion)."""
    duration: float
    seen_at: float
    """Our monotonic time when `marker` was first seen."""


class Membership:
    """The member Leases as observed; `live()` is the current member set."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, _Seen] = {}

    def observe(self, lease: str, holder: str, marker: str, duration: float) -> None:
        """Lease `lease` of member `holder` reads `marker` now."""
        seen = self._leases.get(lease)
        if seen is not None and seen.marker == marker and seen.holder == holder:
            return
        self._leases[lease] = _Seen(holder, marker, duration, self._clock())

    def forget(self, lease: str) -> None:
        """The Lease was deleted: its member left."""
        self._leases.pop(lease, None)

    def live(self) -> frozenset[str]:
        """The members whose Lease changed within its duration."""
        now = self._clock()
        return frozenset(s.holder for s in self._leases.values() if now - s.seen_at < s.duration)

    def marker(self, holder: str) -> str | None:
        """The last marker seen for `holder`'s Lease (None when it has none)."""
        return next((s.marker for s in self._leases.values() if s.holder == holder), None)

    def stale(self, age: float) -> list[tuple[str, str]]:
        """(lease, marker) of the Leases that have not changed for `age` seconds: long-dead members."""
        now = self._clock()
        return [(lease, s.marker) for lease, s in self._leases.items() if now - s.seen_at >= age]
