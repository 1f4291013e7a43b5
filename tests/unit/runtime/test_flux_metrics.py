"""Per-agent Flux metrics, derived from the worker snapshots (agent_runtime/telemetry/metrics.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from agent_runtime.spec import FluxState, FluxStatus, Phase, WorkerSnapshot
from agent_runtime.telemetry.metrics import RuntimeMetrics

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def _snap(agent: str, flux: FluxStatus) -> WorkerSnapshot:
    return WorkerSnapshot(id=agent, phase=Phase.CONNECTED, flux=flux)


def test_counters_follow_the_snapshot_totals_and_a_restarted_worker_counts_in_full() -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    value = registry.get_sample_value

    metrics.observe_snapshot(
        _snap("ns/a", FluxStatus(FluxState.WATCHING, watched=3, triggered=2, last_trigger=T0))
    )
    metrics.observe_snapshot(_snap("ns/a", FluxStatus(FluxState.WATCHING, watched=3, triggered=5, failed=1)))
    assert value("agentk_flux_reconciles_triggered_total", {"agent": "ns/a", "result": "ok"}) == 5
    assert value("agentk_flux_reconciles_triggered_total", {"agent": "ns/a", "result": "failed"}) == 1
    assert value("agentk_flux_gitrepositories", {"agent": "ns/a"}) == 3
    assert value("agentk_flux_last_trigger_timestamp_seconds", {"agent": "ns/a"}) == T0.timestamp()

    metrics.observe_snapshot(_snap("ns/a", FluxStatus(FluxState.STANDBY, triggered=1)))  # a new worker
    assert value("agentk_flux_reconciles_triggered_total", {"agent": "ns/a", "result": "ok"}) == 6
    assert value("agentk_flux_state", {"agent": "ns/a", "state": "Standby"}) == 1
    assert value("agentk_flux_state", {"agent": "ns/a", "state": "Watching"}) is None  # one series per agent

    metrics.forget("ns/a")
    for name, labels in (
        ("agentk_flux_state", {"agent": "ns/a", "state": "Standby"}),
        ("agentk_flux_gitrepositories", {"agent": "ns/a"}),
        ("agentk_flux_reconciles_triggered_total", {"agent": "ns/a", "result": "ok"}),
        ("agentk_flux_last_trigger_timestamp_seconds", {"agent": "ns/a"}),
    ):
        assert value(name, labels) is None, name
