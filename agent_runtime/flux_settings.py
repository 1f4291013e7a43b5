"""Tuning of the Flux module (agent_runtime/modules/flux, PROTOCOL.md §17): upstream's constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from agent_runtime.backoff import BackoffPolicy

STREAM_BACKOFF: Final = BackoffPolicy(initial=10.0, cap=300.0, factor=2.0, jitter=1.0, reset_after=600.0)
"""ReconcileProjects after a failure: agentk's 10 s → 5 min, x2, jitter 1.0, reset after 10 min (§17.2)."""


@dataclass(frozen=True)
class FluxTuning:
    """How the Flux module of every worker of the process behaves."""

    debounce_s: float = 10.0
    """A changed project set reopens the stream only after it has been stable this long (agentk: 10 s).
    The first set after a start opens it at once."""
    stream_backoff: BackoffPolicy = field(default=STREAM_BACKOFF)
    """Between failed ReconcileProjects attempts (UNIMPLEMENTED included)."""
    min_stream_life_s: float = 1.0
    """A stream that kas ends cleanly sooner than this counts as a failure (backs off): agentk reopens at
    once, which a kas ending every stream at once turns into a busy loop. Our choice."""
    lease_duration_s: float = 15.0
    """Lease duration written in the Lease (agentk: 15 s, §12.4)."""
    renew_deadline_s: float = 10.0
    """The leader gives up when it could not renew for this long (agentk: 10 s)."""
    retry_period_s: float = 2.0
    """How often a candidate tries to acquire and the leader renews (agentk: 2 s)."""
    access_ttl_s: float = 60.0
    """How long a namespace's patch permission is trusted; the scope is re-checked this often. Our choice."""
    trigger_timeout_s: float = 5.0
    """Bound on one GitRepository patch (§17.13: a timeout on each trigger). Our choice."""
    min_trigger_interval_s: float = 0.1
    """One project's GitRepositories are patched at most this often; reports in between make one more
    trigger once it is due (kas is untrusted: a flood of reports must not become a flood of fetches).
    Pushes to one project are rarely this close. Our choice."""
    trigger_attempts: int = 3
    """Attempts per GitRepository and push, for 429/5xx and transport errors (bounded retry). Our choice."""
