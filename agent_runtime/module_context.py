"""The typed, frozen context every agent module is built from (by the composition root, worker.py).

Modules get exactly these things and nothing else: access to kas, who the agent is, Kubernetes API
access, their settings, a reporter for their state, and the worker's shared coordination objects.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from agent_proto.flavor import WireNames
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_proto.gitlab.agent.entity import entity_pb2
from agent_runtime.auth_gate import AuthGate
from agent_runtime.clock import Clock
from agent_runtime.constants import POD_ID_BITS
from agent_runtime.grpc_calls import KasChannel
from agent_runtime.informer import SharedInformers
from agent_runtime.kube import KubeAccess, PrivatePool
from agent_runtime.latest import LatestValue, Signal
from agent_runtime.local_rpc import HandlerTable
from agent_runtime.policy import TenantPolicy
from agent_runtime.spec import ServiceAccountRef, TunnelSettings
from agent_runtime.tenancy import TenantShare
from agent_runtime.worker_state import StateReporter

SERVICE_ACCOUNT_NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""Where a pod's mounted ServiceAccount token says its namespace (when POD_NAMESPACE is unset)."""


class KasLink(Protocol):
    """The worker's current connection to kas, as modules use it."""

    @property
    def channel(self) -> KasChannel:
        """Where calls to kas are opened (one HTTP/2 connection at a time)."""
        ...

    @property
    def wire(self) -> WireNames:
        """Method paths and service names of the spec's wire flavour."""
        ...

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for a new RPC: `authorization: Bearer <current token>` plus kas headers."""
        ...

    def note_response_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Learn what kas tells about itself in response metadata (its version)."""
        ...


@dataclass(frozen=True)
class AgentInfo:
    """Who this agent is, as sent in AgentMeta (PROTOCOL.md §5) and Register (§6.2)."""

    version: str
    """AgentMeta.version."""
    commit_id: str
    """AgentMeta.commit_id."""
    pod_namespace: str
    """AgentMeta.pod_namespace: the operator pod's namespace."""
    pod_name: str
    """AgentMeta.pod_name: the operator pod's name."""
    pod_id: int
    """Random non-negative 63-bit id, one per worker (each worker is one agentk "pod" to kas)."""

    @classmethod
    def for_this_process(
        cls,
        version: str,
        commit_id: str,
        environ: Mapping[str, str] | None = None,
        namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE_FILE,
    ) -> AgentInfo:
        """Who this process is to GitLab, and a fresh pod_id.

        The pod is the one the downward API names (POD_NAMESPACE, POD_NAME: manifests/ set both). Where
        they are unset: the namespace of the mounted ServiceAccount, else empty (outside a cluster); the
        host name, which in a pod is the pod's name.
        """
        env = os.environ if environ is None else environ
        namespace = env.get("POD_NAMESPACE", "").strip()
        if not namespace:
            try:
                namespace = namespace_file.read_text().strip()
            except OSError:
                namespace = ""
        name = env.get("POD_NAME", "").strip() or env.get("HOSTNAME", "").strip() or socket.gethostname()
        return cls(
            version=version,
            commit_id=commit_id,
            pod_namespace=namespace,
            pod_name=name,
            pod_id=secrets.randbits(POD_ID_BITS),
        )

    def meta(self, kubernetes_version: entity_pb2.KubernetesVersion | None = None) -> entity_pb2.AgentMeta:
        """AgentMeta; `kubernetes_version` present-but-empty unless given (§5)."""
        return entity_pb2.AgentMeta(
            version=self.version,
            commit_id=self.commit_id,
            pod_namespace=self.pod_namespace,
            pod_name=self.pod_name,
            kubernetes_version=kubernetes_version or entity_pb2.KubernetesVersion(),
        )


@dataclass(frozen=True)
class ModuleContext:
    """Everything a module may use. Built once per worker."""

    worker_id: str
    """The WorkerSpec id, for logs."""
    kas: KasLink
    """The connection to kas."""
    agent: AgentInfo
    """AgentMeta contents."""
    kube: KubeAccess
    """Kubernetes API access (process credentials, shared aiohttp session)."""
    api_pool: PrivatePool
    """This agent's own connections to the API server, for requests from kas (never shared)."""
    identity: ServiceAccountRef | None
    """ServiceAccount to impersonate for tunnelled requests; None = process credentials."""
    tunnels: TunnelSettings
    """Reverse-tunnel pool size."""
    policy: TenantPolicy
    """The process's tenant-isolation policy: budgets and impersonation limits."""
    tenant: TenantShare
    """What this agent shares with the other agents of its tenant (caps on tunnels and bytes)."""
    state: StateReporter
    """Where the module reports health and facts."""
    auth_gate: AuthGate
    """Shared brake after kas rejected the token."""
    reconnect: Signal
    """Fires when long-lived streams must reopen (new token)."""
    draining: asyncio.Event
    """Set once when the worker stops: open no new tunnels, take no new requests."""
    configuration: LatestValue[agentcfg_pb2.AgentConfiguration | None]
    """The latest accepted agent configuration."""
    handlers: HandlerTable
    """Local services reachable through the reverse tunnel."""
    clock: Clock
    """Monotonic clock."""
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    """Logger carrying the worker id."""
    informers: SharedInformers | None = None
    """The process's shared informers (one list+watch per kind for every agent); None = none."""
