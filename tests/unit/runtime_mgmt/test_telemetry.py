"""Telemetry: /metrics, /liveness, /readiness over loopback HTTP; metric families; JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from agent_runtime.secret import Secret
from agent_runtime.spec import Phase, WorkerSnapshot
from agent_runtime.telemetry import (
    JsonFormatter,
    ObservabilityServer,
    RuntimeMetrics,
    parse_listen_address,
    worker_context,
    worker_logger,
)
from agent_runtime.telemetry.metrics import code_class


class Probe:
    def __init__(self) -> None:
        self.answer: bool | Exception = True

    def __call__(self) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, RuntimeMetrics, Probe]]:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry, version="v16.5.0", commit="gao-test")
    probe = Probe()
    server = ObservabilityServer("127.0.0.1:0", registry, probe)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", metrics, probe
    finally:
        await server.stop()


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text(), response.headers.get("Server", "")


async def test_metrics_endpoint_serves_per_agent_series(served: tuple[str, RuntimeMetrics, Probe]) -> None:
    base, metrics, _ = served
    since = datetime(2025, 1, 1, tzinfo=UTC)
    metrics.observe_snapshot(
        WorkerSnapshot(
            id="ns/a", phase=Phase.CONNECTED, connected_since=since, tunnels_idle=2, tunnels_active=1
        )
    )
    metrics.observe_snapshot(
        WorkerSnapshot(id="ns/a", phase=Phase.CONNECTED, connected_since=since.replace(hour=1))
    )
    metrics.observe_snapshot(WorkerSnapshot(id="ns/b", phase=Phase.CONNECTING))
    metrics.tunnel_request_done("ns/a", "/kubernetes_api.rpc.KubernetesApi/MakeRequest", "200", 0.5)
    metrics.tunnel_request_done("ns/a", "whatever", "UNAVAILABLE", 0.25)
    metrics.connection_attempt("ns/a", "Connect", "OK")
    metrics.bytes_received("ns/a", 100)
    metrics.bytes_sent("ns/a", 4000)
    status, body, server = await _get(f"{base}/metrics")
    assert status == 200
    assert server.startswith("gitlab-agent/")
    assert 'agentk_connected{agent="ns/a"} 1.0' in body
    assert 'agentk_connected{agent="ns/b"} 0.0' in body
    assert 'agentk_tunnels_active{agent="ns/a"} 0.0' in body  # the latest snapshot wins
    assert 'agentk_reconnects_total{agent="ns/a"} 1.0' in body
    assert 'agentk_reconnects_total{agent="ns/b"} 0.0' in body
    assert 'agentk_tunnel_requests_total{agent="ns/a",code_class="2xx"} 1.0' in body
    assert 'agentk_tunnel_requests_total{agent="ns/a",code_class="UNAVAILABLE"} 1.0' in body
    assert 'agentk_tunnel_request_seconds_total{agent="ns/a"} 0.75' in body
    assert 'agentk_kas_rpc_attempts_total{agent="ns/a",code="OK",rpc="Connect"} 1.0' in body
    assert 'agentk_tunnel_bytes_total{agent="ns/a",direction="in"} 100.0' in body
    assert 'agentk_tunnel_bytes_total{agent="ns/a",direction="out"} 4000.0' in body
    assert 'agentk_build_info{commit="gao-test",version="v16.5.0"} 1.0' in body
    assert "MakeRequest" not in body  # free-form values never become labels

    metrics.forget("ns/a")
    _, body, _ = await _get(f"{base}/metrics")
    assert 'agent="ns/a"' not in body
    assert 'agent="ns/b"' in body


async def test_liveness_and_readiness(served: tuple[str, RuntimeMetrics, Probe]) -> None:
    base, _, probe = served
    assert (await _get(f"{base}/liveness"))[0] == 200
    assert (await _get(f"{base}/readiness"))[0] == 200
    probe.answer = False
    assert (await _get(f"{base}/readiness"))[0] == 503
    probe.answer = RuntimeError("probe bug")
    assert (await _get(f"{base}/readiness"))[0] == 503
    assert (await _get(f"{base}/liveness"))[0] == 200
    assert (await _get(f"{base}/nothing-here"))[0] == 404


def test_code_classes_are_bounded() -> None:
    assert code_class("200") == "2xx"
    assert code_class("503") == "5xx"
    assert code_class("OK") == "OK"
    assert code_class("StatusCode.UNAVAILABLE") == "UNAVAILABLE"
    assert code_class("not a code") == "other"
    assert code_class("999") == "other"


def test_parse_listen_address() -> None:
    assert parse_listen_address(":8080") == (None, 8080)
    assert parse_listen_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen_address("[::1]:9090") == ("::1", 9090)
    for bad in ("8080", "host:http", ":70000"):
        with pytest.raises(ValueError, match="listen address"):
            parse_listen_address(bad)


def _json_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


async def test_json_logs_carry_the_worker_id_into_tasks() -> None:
    logger, stream = _json_logger("test.telemetry.context")

    async def inside_worker() -> None:
        logger.info("from a task", extra={"rpc": "Connect"})

    with worker_context("ns/agent-1"):
        task = asyncio.create_task(inside_worker(), name="test-worker-task")
    logger.info("outside")
    await task
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_msg = {line["msg"]: line for line in lines}
    assert by_msg["from a task"]["worker"] == "ns/agent-1"
    assert by_msg["from a task"]["rpc"] == "Connect"
    assert by_msg["from a task"]["level"] == "info"
    assert "worker" not in by_msg["outside"]


def _fail_with(token: Secret) -> None:
    raise ValueError(f"bad token {token}")


def test_json_logs_adapter_exceptions_and_secrets() -> None:
    logger, stream = _json_logger("test.telemetry.adapter")
    token = Secret("glagent-super-secret-value")
    adapter = worker_logger(logger, "ns/b")
    try:
        _fail_with(token)
    except ValueError:
        adapter.exception("failed with %r", token)
    [line] = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    assert line["worker"] == "ns/b"
    assert line["level"] == "error"
    assert "ValueError" in line["error"]
    assert "glagent-super-secret-value" not in stream.getvalue()


def test_version_skew_is_a_per_agent_gauge_absent_while_unknown() -> None:
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)

    def value() -> float | None:
        return registry.get_sample_value("agentk_kas_version_compatible", {"agent": "ns/a"})

    base = WorkerSnapshot(id="ns/a", phase=Phase.CONNECTED, agent_version="v16.5.0")
    metrics.observe_snapshot(replace(base, kas_version="v16.6.0"))
    assert value() == 1
    metrics.observe_snapshot(replace(base, kas_version="v18.6.0"))
    assert value() == 0
    metrics.observe_snapshot(replace(base, kas_version="v0.0.0"))  # an unstamped kas: no verdict
    assert value() is None
    metrics.observe_snapshot(replace(base, kas_version="v18.6.0"))
    metrics.forget("ns/a")
    assert value() is None


def test_snapshots_that_only_move_tunnel_counts_leave_the_other_gauges_right() -> None:
    """The per-request path sets only the tunnel gauges (issue 11); a snapshot that changes anything else
    still updates every gauge."""
    registry = CollectorRegistry()
    metrics = RuntimeMetrics(registry)
    since = datetime(2025, 1, 1, tzinfo=UTC)
    connected = WorkerSnapshot(id="ns/a", phase=Phase.CONNECTED, connected_since=since)
    metrics.observe_snapshot(connected)
    metrics.observe_snapshot(replace(connected, tunnels_idle=1, tunnels_active=1))
    assert registry.get_sample_value("agentk_tunnels_active", {"agent": "ns/a"}) == 1
    assert registry.get_sample_value("agentk_connected", {"agent": "ns/a"}) == 1

    metrics.observe_snapshot(replace(connected, phase=Phase.CONNECTING, connected_since=None, tunnels_idle=1))
    assert registry.get_sample_value("agentk_connected", {"agent": "ns/a"}) == 0
    assert registry.get_sample_value("agentk_tunnels_active", {"agent": "ns/a"}) == 0
    metrics.observe_snapshot(replace(connected, connected_since=since.replace(hour=1)))
    assert registry.get_sample_value("agentk_connected", {"agent": "ns/a"}) == 1
    assert registry.get_sample_value("agentk_reconnects_total", {"agent": "ns/a"}) == 1
