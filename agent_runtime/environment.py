"""Process-wide things every worker shares: Kubernetes API access, metrics, logger.

The WorkerManager builds one WorkerEnvironment per process and hands it to every Worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from agent_runtime.flux_settings import FluxTuning
from agent_runtime.informer import SharedInformers
from agent_runtime.kube import KubeAccess
from agent_runtime.policy import TenantPolicy
from agent_runtime.tenancy import TenantRegistry
from agent_runtime.transport.channel import ChannelSettings


class WorkerMetrics(Protocol):
    """Per-agent counters the worker reports; implemented by the telemetry package."""

    def tunnel_request_done(self, worker_id: str, method: str, code: str, seconds: float) -> None:
        """One tunnelled request finished with gRPC status `code` (e.g. "OK") after `seconds`."""
        ...

    def connection_attempt(self, worker_id: str, rpc: str, code: str) -> None:
        """One GetConfiguration/Register/Connect attempt ended with gRPC status `code`."""
        ...

    def bytes_received(self, worker_id: str, count: int) -> None:
        """`count` request body bytes (incl. upgraded-connection bytes) arrived from kas through a tunnel."""
        ...

    def bytes_sent(self, worker_id: str, count: int) -> None:
        """`count` response body bytes (incl. upgraded-connection bytes) went to kas through a tunnel."""
        ...


class NoMetrics:
    """A WorkerMetrics that records nothing (telemetry off): modules can always call their sink."""

    def tunnel_request_done(self, worker_id: str, method: str, code: str, seconds: float) -> None:
        """Ignored."""

    def connection_attempt(self, worker_id: str, rpc: str, code: str) -> None:
        """Ignored."""

    def bytes_received(self, worker_id: str, count: int) -> None:
        """Ignored."""

    def bytes_sent(self, worker_id: str, count: int) -> None:
        """Ignored."""


@dataclass(frozen=True)
class WorkerEnvironment:
    """What every worker of the process shares."""

    kube: KubeAccess
    """Kubernetes API access (base URL, SSL context, credentials, aiohttp session)."""
    metrics: WorkerMetrics | None = None
    """Metrics sink, or None when telemetry is off (tests, the single-agent CLI)."""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("agent_runtime"))
    """Parent logger; each worker logs through a child adapter carrying its id."""
    user_agent: str = ""
    """HTTP/gRPC user agent; empty = the runtime's default (agentk-compatible version + commit)."""
    policy: TenantPolicy = field(default_factory=TenantPolicy)
    """The process's tenant-isolation policy (agent_runtime.policy)."""
    channel: ChannelSettings = field(default_factory=ChannelSettings)
    """Tuning of every worker's kas channel (keepalive, message limit, dial timeouts); agentk's defaults."""
    tenants: TenantRegistry = field(default_factory=TenantRegistry)
    """What the workers of each tenant share (WorkerSpec.tenant, policy.tenant_budget)."""
    informers: SharedInformers | None = None
    """The process's shared informers (the Runtime's); None = no module may watch (the Flux module then
    reports itself disabled)."""
    flux: FluxTuning = field(default_factory=FluxTuning)
    """Tuning of every worker's Flux module."""
