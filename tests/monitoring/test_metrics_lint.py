"""`promtool check metrics` on every family the operator process registers, each with a sample.

The e2e test checks a live scrape too; this one needs no servers, so a new family that breaks
Prometheus's conventions fails here first."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from agent_operator.metrics import OperatorMetrics
from agent_runtime.spec import Phase, WorkerSnapshot
from agent_runtime.telemetry import RuntimeMetrics
from tests.monitoring.conftest import require
from tests.support.prometheus import promtool


def test_promtool_accepts_the_exposition() -> None:
    require("promtool")
    registry = CollectorRegistry()
    runtime = RuntimeMetrics(registry, version="v16.5.0", commit="gao-test")
    operator = OperatorMetrics(registry)
    ProcessCollector(registry=registry)
    since = datetime(2026, 1, 1, tzinfo=UTC)
    runtime.observe_snapshot(
        WorkerSnapshot(id="ns/a", phase=Phase.CONNECTED, connected_since=since, kas_version="v16.5.0")
    )
    runtime.tunnel_request_done("ns/a", "MakeRequest", "200", 0.01)
    runtime.connection_attempt("ns/a", "Connect", "UNAUTHENTICATED")
    runtime.bytes_received("ns/a", 10)
    runtime.bytes_sent("ns/a", 20)
    operator.status_patches.labels(result="2xx").inc()
    operator.reconciles.labels(outcome="applied").inc()
    operator.token_rotations.inc()
    operator.agents.set(1)
    operator.observe_agent("ns/a", "Connected", "Connected")
    text = generate_latest(registry).decode()
    done = promtool("check", "metrics", stdin=text)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("agentk_configuration_received", "agentk_operator_agent_phase", "agentk_operator_ready"):
        assert f"# TYPE {name} gauge" in text
    assert "process_resident_memory_bytes" in text
