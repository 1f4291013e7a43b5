"""What a worker should run (WorkerSpec) and what it reports (WorkerSnapshot).

These two types are the whole contract between the operator and the runtime: the operator maps a
GitLabAgent resource (+ its Secret) to a WorkerSpec, and turns snapshots into the resource's status.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime

from agent_proto.flavor import WireFlavor
from agent_runtime.secret import Secret


@dataclass(frozen=True)
class TlsSettings:
    """How the worker verifies kas's certificate (grpcs:// and wss://)."""

    ca_pem: bytes | None = None
    """Extra PEM CA certificates, added to the system roots (agentk's --ca-cert-file)."""
    server_name: str | None = None
    """SNI and verification name override (agentk's --kas-tls-server-name)."""
    insecure_skip_verify: bool = False
    """Do not verify kas's certificate at all (agentk's --kas-insecure-skip-tls-verify)."""


@dataclass(frozen=True)
class ProxySettings:
    """An explicit HTTP CONNECT proxy for kas; None in WorkerSpec means the process environment applies."""

    url: str = field(repr=False)
    """http:// or https:// URL of the proxy; its user info may hold credentials (kept out of repr)."""
    no_proxy: str = ""
    """Comma-separated hosts/domains/CIDRs that bypass the proxy, as in NO_PROXY."""


@dataclass(frozen=True)
class TunnelSettings:
    """Reverse-tunnel pool size (PROTOCOL.md §8 defaults)."""

    min_idle: int = 2
    """Idle Connect streams kept open, waiting for requests."""
    max: int = 500
    """Cap on idle + active Connect streams."""


@dataclass(frozen=True)
class ServiceAccountRef:
    """The identity a worker impersonates for every request it serves through the tunnel."""

    namespace: str
    """Namespace of the ServiceAccount."""
    name: str
    """Name of the ServiceAccount."""

    @property
    def username(self) -> str:
        """The Kubernetes username of this ServiceAccount."""
        return f"system:serviceaccount:{self.namespace}:{self.name}"


class FluxMode(enum.StrEnum):
    """How a push is turned into a Flux fetch (spec.flux.mode)."""

    REQUESTED_AT = "requestedAt"
    """Patch `reconcile.fluxcd.io/requestedAt` on the GitRepository (what `flux reconcile` does)."""
    RECEIVER = "receiver"
    """Upstream agentk's way: a generic Flux Receiver per GitRepository, and a POST to its webhook."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one tunnel worker needs. Equal specs mean nothing to do."""

    id: str
    """Stable worker id; the operator uses `<namespace>/<name>` of the GitLabAgent."""
    kas_address: str
    """grpc://, grpcs://, ws:// or wss:// URL of kas's agent endpoint."""
    token: Secret
    """The agent token; sent as `authorization: Bearer` on every RPC, never logged."""
    tls: TlsSettings = field(default_factory=TlsSettings)
    """TLS verification settings."""
    kas_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Extra headers: WebSocket handshake headers for ws/wss, gRPC metadata for grpc/grpcs. Values may
    come from Secrets (kept out of repr)."""
    proxy: ProxySettings | None = None
    """Explicit proxy; None = HTTPS_PROXY/NO_PROXY of the process, as for agentk."""
    identity: ServiceAccountRef | None = None
    """ServiceAccount to impersonate for tunnelled requests; None = the process's own credentials."""
    tunnels: TunnelSettings = field(default_factory=TunnelSettings)
    """Reverse-tunnel pool size."""
    flavor: WireFlavor = WireFlavor.GITLAB
    """Proto package prefix on the wire (PROTOCOL.md §2.3)."""
    tenant: str | None = None
    """Whose share of the process this worker uses: the workers of one tenant share its caps on open
    tunnels and buffered bytes (policy.TenantBudget). The operator sets the GitLabAgent's namespace;
    None = a tenant of its own (the single-agent CLI)."""
    flux_enabled: bool = True
    """Run the Flux module (push → reconcile of the GitRepositories of the pushed project)."""
    flux_mode: FluxMode = FluxMode.REQUESTED_AT
    """How the Flux module makes Flux fetch (docs/flux.md, "the modes")."""

    def same_connection_as(self, other: WorkerSpec) -> bool:
        """True when only the token differs: the worker can reconnect in place."""
        return dataclasses.replace(self, token=other.token) == other


class Phase(enum.StrEnum):
    """Coarse state of a worker, shown as the resource's phase."""

    CONNECTING = "Connecting"
    CONNECTED = "Connected"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"
    FAILED = "Failed"


class ErrorReason(enum.StrEnum):
    """Typed failure reasons; each maps to a status condition reason and a fix hint."""

    UNAUTHENTICATED = "Unauthenticated"
    PERMISSION_DENIED = "PermissionDenied"
    AGENT_NOT_FOUND = "AgentNotFound"
    KAS_UNREACHABLE = "KasUnreachable"
    TLS_UNKNOWN_AUTHORITY = "TLSUnknownAuthority"
    TLS_ERROR = "TLSError"
    WEBSOCKET_HANDSHAKE = "WebSocketHandshakeFailed"
    PROXY_REFUSED = "ProxyRefused"
    DESTINATION_REFUSED = "DestinationRefused"
    """The operator's destination policy forbids this kas address, proxy, scheme or TLS setting."""
    CONFIGURATION_REJECTED = "ConfigurationRejected"
    PROTOCOL_ERROR = "ProtocolError"
    RATE_LIMITED = "RateLimited"
    INTERNAL = "Internal"


@dataclass(frozen=True)
class WorkerError:
    """The last error a worker saw, safe to show to users (no secrets)."""

    reason: ErrorReason
    """What kind of failure this is."""
    message: str
    """What happened, in one sentence."""
    hint: str = ""
    """What the user can do about it."""


class FluxState(enum.StrEnum):
    """What the Flux module of a worker is doing (PROTOCOL.md §17); each maps to a condition reason."""

    DISABLED = "Disabled"
    """spec.flux.enabled is false (or the process offers no shared informers)."""
    WAITING = "WaitingForConfiguration"
    """No agent configuration (agent id, GitLab URL) yet."""
    NO_GITLAB_URL = "NoGitLabURL"
    """kas sent no usable gitlab_external_url: no GitRepository can be matched."""
    FLUX_NOT_INSTALLED = "FluxNotInstalled"
    """The GitRepository CRD (source.toolkit.fluxcd.io, v1) is absent or not established."""
    LIST_FAILED = "GitRepositoriesUnreadable"
    """The GitRepository CRD or the GitRepositories cannot be listed (the operator's RBAC, mostly)."""
    NO_GITREPOSITORIES = "NoGitRepositories"
    """Flux is installed but no GitRepository points at the agent's GitLab."""
    STANDBY = "Standby"
    """Another replica (or an agentk) holds the agent's Lease and does the work."""
    LEASE_FAILED = "LeaseUnavailable"
    """The Lease cannot be read or written (RBAC, no pod namespace)."""
    WATCHING = "Watching"
    """Leader; the ReconcileProjects stream is open (or about to be) for the projects in scope."""
    NOT_SERVED = "NotServedByKas"
    """kas answered UNIMPLEMENTED (the Plural fork, or a kas without the Flux module); retried."""
    STREAM_FAILED = "StreamFailed"
    """The ReconcileProjects stream failed; retried with backoff."""
    WEBHOOK_REFUSED = "WebhookURLRefused"
    """Receiver mode: the agent configuration's flux.webhook_receiver_url is not one the operator allows."""


@dataclass(frozen=True)
class FluxStatus:
    """The Flux module's facts for the resource's status (counts are this replica's)."""

    state: FluxState = FluxState.WAITING
    """What the module is doing."""
    message: str = ""
    """Details for humans, with a hint where one helps."""
    watched: int = 0
    """GitRepositories in scope: pointing at the agent's GitLab, in namespaces the agent may patch."""
    projects: int = 0
    """Distinct project paths sent to kas."""
    triggered: int = 0
    """Reconciles requested (GitRepositories patched) since the worker started."""
    failed: int = 0
    """Patches that failed (after their retries) since the worker started."""
    ignored: int = 0
    """Projects kas reported that are malformed or were not asked for (dropped)."""
    last_trigger: datetime | None = None
    """When the last reconcile was requested."""


@dataclass(frozen=True)
class WorkerSnapshot:
    """The latest observable state of one worker; published on every change."""

    id: str
    """The WorkerSpec id."""
    phase: Phase
    """Coarse state."""
    connected_since: datetime | None = None
    """When the current connection to kas was established."""
    agent_id: int | None = None
    """The agent id kas reported in the configuration."""
    config_commit: str | None = None
    """Commit of the last configuration received."""
    kas_version: str | None = None
    """kas's version (WebSocket Server header or gRPC response metadata)."""
    agent_version: str = ""
    """The agentk protocol version this worker speaks (AgentMeta.version)."""
    kubernetes_version: str | None = None
    """The cluster's gitVersion as sent in Register."""
    registered: bool = False
    """The last Register call succeeded."""
    configuration_received: bool = False
    """At least one configuration arrived on the GetConfiguration stream."""
    tunnels_idle: int = 0
    """Connect streams waiting for a request."""
    tunnels_active: int = 0
    """Connect streams serving a request."""
    last_error: WorkerError | None = None
    """The most recent error, cleared when the worker is healthy again."""
    flux: FluxStatus = field(default_factory=FluxStatus)
    """The Flux module's state; it never changes the phase (Flux is optional)."""
