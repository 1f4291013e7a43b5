"""Per-agent Prometheus metrics on an injected CollectorRegistry.

The only per-agent label is `agent` (the worker id), plus small closed sets (`code_class`, `rpc`,
`code`, `direction`), so the number of series is bounded by the number of workers; a removed worker's
series are deleted by `forget()`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Info

from agent_runtime.spec import FluxState, Phase, WorkerSnapshot
from agent_runtime.version import AGENT_VERSION
from agent_runtime.versions import check_kas_version

_PREFIX: Final = "agentk"

_GRPC_CODES: Final = frozenset(
    {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)
_RPCS: Final = frozenset({"GetConfiguration", "Register", "Connect", "ReconcileProjects"})


def code_class(code: str) -> str:
    """Bounded label for a result: `2xx`..`5xx` for HTTP status codes, the gRPC code name otherwise."""
    code = code.strip()
    if len(code) == 3 and code.isdigit() and code[0] in "12345":
        return f"{code[0]}xx"
    name = code.upper().removeprefix("STATUSCODE.")
    return name if name in _GRPC_CODES else "other"


class RuntimeMetrics:
    """The runtime's metric families; implements agent_runtime.environment.WorkerMetrics."""

    def __init__(self, registry: CollectorRegistry, *, version: str = "", commit: str = "") -> None:
        self.registry = registry
        """Where the families are registered (the one /metrics serves)."""
        p = _PREFIX
        self._connected = Gauge(
            f"{p}_connected", "1 while the worker is connected to kas", ["agent"], registry=registry
        )
        self._tunnels_idle = Gauge(
            f"{p}_tunnels_idle", "Reverse tunnel streams waiting for a request", ["agent"], registry=registry
        )
        self._tunnels_active = Gauge(
            f"{p}_tunnels_active", "Reverse tunnel streams serving a request", ["agent"], registry=registry
        )
        self._requests = Counter(
            f"{p}_tunnel_requests",
            "Requests served through the reverse tunnel, by result class",
            ["agent", "code_class"],
            registry=registry,
        )
        self._request_seconds = Counter(
            f"{p}_tunnel_request_seconds",
            "Total time spent serving tunnelled requests",
            ["agent"],
            registry=registry,
        )
        self._reconnects = Counter(
            f"{p}_reconnects",
            "Connections to kas re-established after the first",
            ["agent"],
            registry=registry,
        )
        self._attempts = Counter(
            f"{p}_kas_rpc_attempts",
            "Ended GetConfiguration/Register/Connect attempts, by gRPC code",
            ["agent", "rpc", "code"],
            registry=registry,
        )
        self._bytes = Counter(
            f"{p}_tunnel_bytes",
            "Body bytes moved through the tunnel; direction=in is from kas, out is towards kas",
            ["agent", "direction"],
            registry=registry,
        )
        self._configuration_received = Gauge(
            f"{p}_configuration_received",
            "1 once kas has sent the agent configuration on the current worker, 0 before",
            ["agent"],
            registry=registry,
        )
        self._version_compatible = Gauge(
            f"{p}_kas_version_compatible",
            "1 while kas is within GitLab's version skew policy for this agent, 0 outside it "
            "(advice: the agent keeps working); no series while kas's version is unknown",
            ["agent"],
            registry=registry,
        )
        self._flux_watched = Gauge(
            f"{p}_flux_gitrepositories",
            "GitRepositories the agent's Flux module covers (its GitLab, namespaces it may patch); "
            "0 on a replica that does not hold the agent's Lease",
            ["agent"],
            registry=registry,
        )
        self._flux_triggered = Counter(
            f"{p}_flux_reconciles_triggered",
            "GitRepositories patched with reconcile.fluxcd.io/requestedAt after a push, by result",
            ["agent", "result"],
            registry=registry,
        )
        self._flux_last_trigger = Gauge(
            f"{p}_flux_last_trigger_timestamp_seconds",
            "Unix time of the agent's last successful Flux reconcile request",
            ["agent"],
            registry=registry,
        )
        self._flux_state = Gauge(
            f"{p}_flux_state",
            "1 for the state of the agent's Flux module (Watching, Standby, FluxNotInstalled, ...); "
            "one series per agent",
            ["agent", "state"],
            registry=registry,
        )
        self._flux_seen: dict[str, tuple[int, int, FluxState | None]] = {}
        self._build = Info(f"{p}_build", "Version of this engine", registry=registry)
        self._build.info({"version": version, "commit": commit})
        self._connected_since: dict[str, datetime] = {}
        self._observed: dict[str, WorkerSnapshot] = {}
        """The last snapshot observed per worker: most snapshots only move the tunnel counts."""

    # --- agent_runtime.environment.WorkerMetrics ------------------------------------------------
    def tunnel_request_done(self, worker_id: str, method: str, code: str, seconds: float) -> None:
        """One tunnelled request finished with `code` (gRPC name or HTTP status) after `seconds`."""
        del method  # not a label: free-form, would make the series unbounded
        self._requests.labels(worker_id, code_class(code)).inc()
        self._request_seconds.labels(worker_id).inc(max(seconds, 0.0))

    def connection_attempt(self, worker_id: str, rpc: str, code: str) -> None:
        """One GetConfiguration/Register/Connect attempt ended with gRPC status `code`."""
        rpc_label = rpc if rpc in _RPCS else "other"
        self._attempts.labels(worker_id, rpc_label, code_class(code)).inc()

    def bytes_received(self, worker_id: str, count: int) -> None:
        """`count` body bytes arrived from kas through a tunnel (requests towards the API server)."""
        self._bytes.labels(worker_id, "in").inc(count)

    def bytes_sent(self, worker_id: str, count: int) -> None:
        """`count` body bytes went to kas through a tunnel (API server responses)."""
        self._bytes.labels(worker_id, "out").inc(count)

    # --- driven by the manager's snapshots -----------------------------------------------------
    def observe_snapshot(self, snapshot: WorkerSnapshot) -> None:
        """Update the gauges (and the reconnect counter) from a worker's latest snapshot."""
        agent = snapshot.id
        self._tunnels_idle.labels(agent).set(snapshot.tunnels_idle)
        self._tunnels_active.labels(agent).set(snapshot.tunnels_active)
        last, self._observed[agent] = self._observed.get(agent), snapshot
        if last is not None and _same_but_tunnels(last, snapshot):
            return  # every tunnelled request moves the tunnel counts twice: nothing else to derive again
        connected = snapshot.phase in (Phase.CONNECTED, Phase.DEGRADED)
        self._connected.labels(agent).set(1 if connected else 0)
        self._configuration_received.labels(agent).set(1 if snapshot.configuration_received else 0)
        self._observe_flux(snapshot)
        verdict = check_kas_version(snapshot.kas_version, snapshot.agent_version or AGENT_VERSION)
        if verdict.compatible is None:
            self._version_compatible.remove(agent)
        else:
            self._version_compatible.labels(agent).set(1 if verdict.compatible else 0)
        since = snapshot.connected_since
        if since is not None:
            previous = self._connected_since.get(agent)
            if previous is not None and previous != since:
                self._reconnects.labels(agent).inc()
            self._connected_since[agent] = since
        else:
            self._reconnects.labels(agent)  # the series exists (at 0) from the first snapshot on

    def _observe_flux(self, snapshot: WorkerSnapshot) -> None:
        """Flux gauges, and the counters advanced by what the snapshot's totals grew (a new worker of the
        same agent starts its totals at 0: they count in full)."""
        agent, flux = snapshot.id, snapshot.flux
        triggered, failed, state = self._flux_seen.get(agent, (0, 0, None))
        self._flux_watched.labels(agent).set(flux.watched)
        for result, now, before in (("ok", flux.triggered, triggered), ("failed", flux.failed, failed)):
            grown = now - before if now >= before else now
            if grown:
                self._flux_triggered.labels(agent, result).inc(grown)
        if flux.last_trigger is not None:
            self._flux_last_trigger.labels(agent).set(flux.last_trigger.timestamp())
        if state is not flux.state:
            if state is not None:
                self._flux_state.remove(agent, state.value)
            self._flux_state.labels(agent, flux.state.value).set(1)
        self._flux_seen[agent] = (flux.triggered, flux.failed, flux.state)

    def forget(self, worker_id: str) -> None:
        """Delete every series of a removed worker, so label cardinality follows the live workers."""
        self._connected_since.pop(worker_id, None)
        self._observed.pop(worker_id, None)
        seen = self._flux_seen.pop(worker_id, None)
        if seen is not None and seen[2] is not None:
            self._flux_state.remove(worker_id, seen[2].value)
        for result in ("ok", "failed"):
            self._flux_triggered.remove(worker_id, result)
        for family in (
            self._connected,
            self._tunnels_idle,
            self._tunnels_active,
            self._configuration_received,
            self._request_seconds,
            self._reconnects,
            self._version_compatible,
            self._flux_watched,
            self._flux_last_trigger,
        ):
            family.remove(worker_id)  # no-op when the series does not exist
        for code in (*_GRPC_CODES, "1xx", "2xx", "3xx", "4xx", "5xx", "other"):
            self._requests.remove(worker_id, code)
            for rpc in (*_RPCS, "other"):
                self._attempts.remove(worker_id, rpc, code)
        for direction in ("in", "out"):
            self._bytes.remove(worker_id, direction)


def _same_but_tunnels(previous: WorkerSnapshot, snapshot: WorkerSnapshot) -> bool:
    """`snapshot` differs from `previous` in its tunnel counts at most."""
    moved = replace(previous, tunnels_idle=snapshot.tunnels_idle, tunnels_active=snapshot.tunnels_active)
    return moved == snapshot
