"""Telemetry of the runtime: Prometheus metrics, JSON logs with the worker id, the :8080 endpoints."""

from agent_runtime.telemetry.endpoints import ObservabilityServer, parse_listen_address
from agent_runtime.telemetry.logs import JsonFormatter, configure_json_logging, worker_context, worker_logger
from agent_runtime.telemetry.metrics import RuntimeMetrics

__all__ = [
    "JsonFormatter",
    "ObservabilityServer",
    "RuntimeMetrics",
    "configure_json_logging",
    "parse_listen_address",
    "worker_context",
    "worker_logger",
]
