"""The internal grpc.aio server behind the front listener, with GitLab's agent-server parameters (§3.6)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from kas.auth import AgentAuthInterceptor
from kas.config import AgentConfig
from kas.metrics import KasMetrics
from kas.version import VERSION_METADATA_KEY, server_header

Handler = Callable[[Any, Any], Awaitable[Any]]


MAX_PENDING_RPCS = 20_000
"""RPCs that may wait for grpc.aio to take them up. grpc core's default (1000) cancels every RPC beyond it
with CANCELLED; grpc.aio takes RPCs up one at a time, and each agent opens four at start-up, so 500 agents
connecting at once (a kas restart, an operator starting) lost some of theirs and waited for a retry."""


def server_options(agent: AgentConfig) -> list[tuple[str, Any]]:
    listen = agent.listen
    return [
        ("grpc.keepalive_time_ms", int(agent.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        # The ack deadline grpcio 1.85 actually enforces (agent_runtime/transport/channel.py): without it a
        # dead agent connection (black-holed, half-open) is noticed after ~60 s, and a request kas routed
        # into one of its tunnels hangs that long instead of getting its 502 after 20 s.
        ("grpc.http2.ping_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(agent.keepalive_min_ping_interval * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_connection_age_ms", max(1, int(listen.grpc_max_connection_age * 1000))),
        ("grpc.max_connection_age_grace_ms", max(1, int(listen.grpc_max_connection_age_grace * 1000))),
        ("grpc.max_receive_message_length", agent.max_message_size),
        ("grpc.max_send_message_length", agent.max_message_size),
        ("grpc.so_reuseport", 0),
        ("grpc.server.max_pending_requests", MAX_PENDING_RPCS),
        ("grpc.server.max_pending_requests_hard_limit", 3 * MAX_PENDING_RPCS),
    ]


def counted(metrics: KasMetrics, path: str, fn: Handler, *, announce_version: bool = True) -> Handler:
    """Count started/handled RPCs by code (grpc_server_started_total, grpc_server_handled_total).

    `announce_version` sends kas's version as initial metadata before the handler runs: grpc/grpcs agents
    have no handshake header to learn it from. Agents read it on Register and GetConfiguration; a Connect
    stream is opened for every tunnelled request, so it skips the extra send.
    """
    service, _, method = path.lstrip("/").rpartition("/")
    started = metrics.rpc_started.labels(service, method)
    version = ((VERSION_METADATA_KEY, server_header()),)

    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started.inc()
        code = "OK"
        try:
            if announce_version:
                await context.send_initial_metadata(version)
            return await fn(request, context)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except grpc.aio.AbortError:
            found = context.code()
            code = found.name if isinstance(found, grpc.StatusCode) else "UNKNOWN"
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        finally:
            metrics.rpc_handled.labels(service, method, code).inc()

    return wrapper


class _Routes(grpc.GenericRpcHandler):
    def __init__(self, routes: dict[str, grpc.RpcMethodHandler[Any, Any]]) -> None:
        self._routes = routes

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self._routes.get(handler_call_details.method)


def build_agent_server(
    agent: AgentConfig, interceptor: AgentAuthInterceptor, routes: dict[str, grpc.RpcMethodHandler[Any, Any]]
) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=server_options(agent),
        maximum_concurrent_rpcs=None,
    )
    server.add_generic_rpc_handlers((_Routes(routes),))
    return server
