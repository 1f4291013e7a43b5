"""The agents' GetConfiguration streams as this kas saw them: the live ones and the recently ended ones.

Every running agent holds exactly one GetConfiguration stream, for as long as it runs. So this log says
which pods ran an agent and when, as kas saw it: an agent run by two pods at once shows two overlapping
streams. Served as JSON on the observability listener (`/api/agent_streams`), for tests and operators
of the reference kas; GitLab's kas has no such endpoint.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Final

ENDED_KEPT: Final = 10_000
"""Ended streams kept (the oldest go first): a bounded memory, enough for a test or a benchmark."""


@dataclass
class AgentStream:
    """One GetConfiguration stream."""

    agent_id: int
    """The agent, by the token it authenticated with."""
    pod_name: str
    """AgentMeta.pod_name of the request (the agentk pod, or the operator replica)."""
    peer: str
    """The client's address."""
    started: float
    """Wall-clock seconds when the stream started."""
    ended: float | None = None
    """Wall-clock seconds when it ended; None while it is live."""


class StreamLog:
    """Live and recently ended streams."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._live: dict[int, AgentStream] = {}
        self._ended: deque[AgentStream] = deque(maxlen=ENDED_KEPT)

    def started(self, agent_id: int, pod_name: str, peer: str) -> int:
        """A stream started; returns its handle for `ended`."""
        handle = next(self._ids)
        self._live[handle] = AgentStream(agent_id, pod_name, peer, time.time())
        return handle

    def ended(self, handle: int) -> None:
        """The stream ended (any way)."""
        stream = self._live.pop(handle, None)
        if stream is not None:
            stream.ended = time.time()
            self._ended.append(stream)

    def as_json(self, agent_id: int | None = None) -> dict[str, Any]:
        """`{"live": [...], "ended": [...]}`, oldest first, optionally of one agent."""

        def pick(streams: list[AgentStream]) -> list[dict[str, Any]]:
            return [asdict(s) for s in streams if agent_id is None or s.agent_id == agent_id]

        return {"live": pick(list(self._live.values())), "ended": pick(list(self._ended))}
