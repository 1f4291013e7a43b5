"""agentk_configuration_received: 0 until kas sent the configuration, 1 after; gone with the worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from agent_runtime.spec import Phase, WorkerSnapshot
from agent_runtime.telemetry import RuntimeMetrics


def test_configuration_received_follows_the_snapshot() -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    labels = {"agent": "ns/a"}
    metrics.observe_snapshot(WorkerSnapshot(id="ns/a", phase=Phase.CONNECTED))
    assert registry.get_sample_value("agentk_configuration_received", labels) == 0.0
    metrics.observe_snapshot(WorkerSnapshot(id="ns/a", phase=Phase.CONNECTED, configuration_received=True))
    assert registry.get_sample_value("agentk_configuration_received", labels) == 1.0
    metrics.forget("ns/a")
    assert registry.get_sample_value("agentk_configuration_received", labels) is None
