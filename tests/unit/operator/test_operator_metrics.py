"""The operator's per-GitLabAgent phase series: one per agent, replaced on change, gone when forgotten."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from agent_operator.api import GitLabAgentStatus, Phase
from agent_operator.api.status import Condition
from agent_operator.metrics import OperatorMetrics

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def _series(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["agent"], s.labels["phase"], s.labels["reason"]): s.value
        for family in registry.collect()
        if family.name == "agentk_operator_agent_phase"
        for s in family.samples
    }


def test_one_series_per_agent_follows_its_status() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.observe_agent("ns/a", "Connected", "Connected")
    metrics.observe_agent("ns/b", "Failed", "SecretNotFound")
    assert _series(registry) == {
        ("ns/a", "Connected", "Connected"): 1.0,
        ("ns/b", "Failed", "SecretNotFound"): 1.0,
    }

    metrics.observe_agent("ns/a", "Failed", "Unauthenticated")  # the token was revoked
    metrics.observe_agent("ns/a", "Failed", "Unauthenticated")  # unchanged: nothing to do
    assert _series(registry) == {
        ("ns/a", "Failed", "Unauthenticated"): 1.0,
        ("ns/b", "Failed", "SecretNotFound"): 1.0,
    }

    metrics.forget_agent("ns/a")
    metrics.forget_agent("ns/a")  # twice is harmless (deleted, then handed over)
    assert _series(registry) == {("ns/b", "Failed", "SecretNotFound"): 1.0}


def test_observe_status_reads_the_phase_and_the_ready_reason() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    ready = Condition(
        type="Ready", status="False", reason="Unauthenticated", message="", last_transition_time=NOW
    )
    metrics.observe_status("ns/a", GitLabAgentStatus(phase=Phase.FAILED, conditions=[ready]))
    metrics.observe_status("ns/b", GitLabAgentStatus())  # nothing computed yet
    assert _series(registry) == {("ns/a", "Failed", "Unauthenticated"): 1.0, ("ns/b", "Unknown", ""): 1.0}


def test_readiness_gauge_starts_at_zero() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    assert registry.get_sample_value("agentk_operator_ready") == 0.0
    metrics.ready.set(1)
    assert registry.get_sample_value("agentk_operator_ready") == 1.0
