"""A few GitLabAgents run by operator processes (as deployed, tests/e2e/harness.py), a steady client
through kas, and what kas sees of them: live agent connections and Register entries.

Used by test_operator_restarts.py (issue 13 §9).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tests.e2e.harness import KasAgent, KasProcess, Kube, OperatorProcess, phase, wait_for
from tests.support.tcp import established_on

CONNECTIONS_PER_WORKER = 1
"""A worker holds one connection to kas (the own HTTP/2 client carries every call), as agentk does."""


def kas_agent_connections(kas: KasProcess) -> int:
    """Established TCP connections on kas's agent port: CONNECTIONS_PER_WORKER for every live worker."""
    return established_on(kas.agent_port)


def registrations(kas: KasProcess, pods: Iterable[str]) -> dict[int, set[int]]:
    """kas's Register entries (/api/connected_agents) made by the pods `pods`: agent id -> connection ids
    (one per worker: each worker draws its own pod_id). Entries of dead processes live on until their TTL,
    so only the live pods' count."""
    url = f"http://127.0.0.1:{kas.observability_port}/api/connected_agents"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    wanted = set(pods)
    found: dict[int, set[int]] = {}
    for entry in body["agents"]:
        if entry["agent_meta"]["pod_name"] in wanted:
            found.setdefault(int(entry["agent_id"]), set()).add(int(entry["connection_id"]))
    return found


def pod_name(operator: OperatorProcess) -> str:
    """The POD_NAME the harness gave the operator's current process (kopf peering's identity too)."""
    return f"operator-{operator.work_dir.name}-{operator.starts}"


def sigkill(operator: OperatorProcess) -> None:
    """A crash: no drain, no peering goodbye."""
    proc, operator.proc = operator.proc, None
    assert proc is not None
    proc.kill()
    proc.wait(timeout=10)


@dataclass(frozen=True)
class Outcome:
    agent_id: int
    started: float
    ended: float
    status: int


@dataclass
class SteadyClient:
    """One thread per agent, each sending GET /version through kas's proxy (as the CI job) in a loop.

    kas answers a request for an agent without a tunnel after tunnel_find_timeout (10 s) with an error,
    so a lost request is seen as a non-200 outcome, never as a hang.
    """

    kas: KasProcess
    agents: Sequence[KasAgent]
    pause: float = 0.05
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for agent in self.agents:
            thread = threading.Thread(
                target=self._loop, args=(agent,), name=f"client-{agent.id}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _loop(self, agent: KasAgent) -> None:
        for _ in range(100_000):  # bounded; stop() ends it long before
            if self._stop.is_set():
                return
            began = time.monotonic()
            try:
                status, _ = self.kas.proxy_get(agent.id, "/version")
            except OSError:
                status = 0
            with self._lock:
                self.outcomes.append(Outcome(agent.id, began, time.monotonic(), status))
            time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), f"{thread.name} still running"

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def recovered(self, since: float) -> dict[int, float]:
        """agent id -> end of its first successful request started after `since`."""
        first: dict[int, float] = {}
        for outcome in sorted(self.snapshot(), key=lambda o: o.started):
            if outcome.started >= since and outcome.status == 200:
                first.setdefault(outcome.agent_id, outcome.ended)
        return first

    def wait_recovered(self, since: float, timeout: float) -> dict[int, float]:
        ids = {a.id for a in self.agents}

        def all_served() -> dict[int, float] | None:
            found = self.recovered(since)
            return found if set(found) == ids else None

        return wait_for("every agent served again", all_served, timeout=timeout)


def connected_since(kube: Kube, namespace: str, name: str) -> str | None:
    """status.connectedSince when the resource reads Connected, else None."""
    body = kube.gla(namespace, name)
    if phase(body) != "Connected":
        return None
    return str(((body or {}).get("status") or {}).get("connectedSince") or "") or None
