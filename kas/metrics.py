"""kas's Prometheus metrics, in a registry of their own (several kas may run in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from kas.version import COMMIT, VERSION


class KasMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Info("gitlab_build", "kas build information", registry=r)
        self.build_info.info({"version": VERSION, "built": COMMIT})
        self.connected_agents = Gauge(
            "connected_agents_count", "Agents with a live registration (Register)", registry=r
        )
        self.routing_duration = Histogram(
            "k8s_api_proxy_routing_duration_seconds",
            "Time to find a tunnel for a routed request",
            ["status"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
            registry=r,
        )
        self.routing_timeouts = Counter(
            "k8s_api_proxy_routing_timeout", "Routed requests that found no tunnel in time", registry=r
        )
        self.tunnels = Gauge("reverse_tunnel_tunnels", "Agent tunnels on this kas", ["state"], registry=r)
        self.waiting_requests = Gauge(
            "reverse_tunnel_waiting_requests", "Requests waiting for a tunnel on this kas", registry=r
        )
        self.agent_connections = Gauge(
            "agent_server_connections", "Agent connections on the agent listener", ["transport"], registry=r
        )
        self.rpc_started = Counter(
            "grpc_server_started", "RPCs started", ["grpc_service", "grpc_method"], registry=r
        )
        self.rate_limited = Counter(
            "agent_server_rate_limited",
            "Agent RPCs refused by the per-token limit (connections_per_token_per_minute)",
            registry=r,
        )
        self.git_push_events = Counter(
            "git_push_events",
            "Git push events received on the API listener and published to every replica",
            registry=r,
        )
        self.git_push_events_invalid = Counter(
            "git_push_events_invalid",
            "Payloads on the events channel that were not a valid git push event (dropped)",
            registry=r,
        )
        self.flux_notifications = Counter(
            "flux_git_push_notifications",
            "Git push events sent to an agent on a ReconcileProjects stream",
            registry=r,
        )
        self.flux_dropped_notifications = Counter(
            "flux_dropped_git_push_notifications",
            "Git push events dropped because a ReconcileProjects stream's buffer was full",
            registry=r,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled", "RPCs completed", ["grpc_service", "grpc_method", "grpc_code"], registry=r
        )
