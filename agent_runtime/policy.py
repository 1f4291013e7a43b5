"""What one tenant's agent may do inside a shared process: the operator admin's policy (docs/security.md).

A tenant who may create a GitLabAgent chooses its kas address, so "kas" can be the tenant itself: every
byte kas sends is untrusted input. These settings are set by whoever runs the process (operator flags),
never by a tenant's resource, and every worker of the process gets the same policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

FLUX_WEBHOOK_SERVICE_URL: Final = "http://webhook-receiver.flux-system.svc.cluster.local"
"""Flux's notification-controller webhook Service (agentk's default webhook_receiver_url)."""

DEFAULT_IMPERSONATION_PREFIXES: Final = ("gitlab:",)
"""kas impersonates CI jobs and users as `gitlab:ci_job:<id>`, `gitlab:user:<name>` and groups
`gitlab:…` (PROTOCOL.md §10): that is all a GitLab kas ever asks for."""


@dataclass(frozen=True)
class DestinationPolicy:
    """Where a worker may dial kas (and an explicit proxy), checked after DNS on every dial."""

    allowed_hosts: tuple[str, ...] = ()
    """Host patterns a kas address or proxy may name: `kas.example.com`, `*.example.com`, or a CIDR
    (`10.0.0.0/8`). Empty = any public host."""
    allow_private: bool = False
    """Also allow loopback, link-local, private (RFC 1918, ULA), CGNAT and unspecified addresses."""
    allow_plaintext: bool = False
    """Allow `grpc://` and `ws://` (anyone on the path can then act as kas)."""
    allow_insecure_skip_verify: bool = False
    """Allow `insecureSkipTLSVerify: true` (same risk as plaintext)."""
    flux_webhook_urls: tuple[str, ...] = (FLUX_WEBHOOK_SERVICE_URL,)
    """Base URLs the Flux module's receiver mode may POST to (the agent configuration chooses one of
    them; anything else is refused): exact http(s) URLs, not patterns. Default Flux's webhook Service."""


@dataclass(frozen=True)
class TunnelBudget:
    """How much of the process one agent's tunnelled requests may hold at once."""

    max_inflight_requests: int = 200
    """Requests from kas served at once per agent; further Connect streams wait for one to end. Also the
    size of the agent's own pool of API server connections (agent_runtime.kube.PrivatePool)."""
    max_buffered_bytes: int = 16 * 1024 * 1024
    """Request bytes read from kas but not yet sent to the API server, over all the agent's tunnels; when
    reached, the tunnels stop reading and HTTP/2 flow control pushes back on kas (reverse_tunnel/budget.py).
    Each open tunnel may hold one more message (≤ 256 KiB) on top."""


@dataclass(frozen=True)
class TenantBudget:
    """How much of the process all the agents of one tenant (the operator: one namespace) may hold at once,
    whatever their number (agent_runtime.tenancy). A stuck request costs ≈0.7 MiB of worker memory
    (measured, tests/security/test_budget_tunnel.py), so a tenant at both defaults holds ≈140 MiB of
    streams plus 32 MiB of bytes: two hostile tenants at their caps still fit, with the process's own
    ~75 MiB, in the Deployment's 512 Mi."""

    max_inflight_requests: int = 200
    """Connect streams (idle or serving) open at once over all the tenant's agents. Each agent keeps its
    `min_idle` of them reserved (50 agents at the default 2 leave 100 to share); the others wait."""
    max_buffered_bytes: int = 32 * 1024 * 1024
    """Request bytes from kas held for the API server over all the tenant's agents (on top of each
    agent's own `TunnelBudget.max_buffered_bytes`): when reached, every tunnel of the tenant stops
    reading. Each open tunnel may hold one more message (≤ 256 KiB) on top."""


@dataclass(frozen=True)
class ImpersonationPolicy:
    """Which identities kas may ask an agent to impersonate (on top of the ServiceAccount's RBAC)."""

    allowed_prefixes: tuple[str, ...] = DEFAULT_IMPERSONATION_PREFIXES
    """Every impersonated user name and group must start with one of these."""
    refused_prefixes: tuple[str, ...] = ("system:",)
    """Never impersonated, whatever `allowed_prefixes` says (system:masters, system:admin, nodes...)."""


@dataclass(frozen=True)
class TenantPolicy:
    """The whole isolation policy of a process."""

    destinations: DestinationPolicy = field(default_factory=DestinationPolicy)
    """Where workers may dial."""
    budget: TunnelBudget = field(default_factory=TunnelBudget)
    """Per-agent resource caps."""
    tenant_budget: TenantBudget = field(default_factory=TenantBudget)
    """Per-tenant resource caps, shared by all the agents of one tenant."""
    impersonation: ImpersonationPolicy = field(default_factory=ImpersonationPolicy)
    """Which identities may be impersonated for kas."""


PERMISSIVE_POLICY: Final = TenantPolicy(
    destinations=DestinationPolicy(allow_private=True, allow_plaintext=True, allow_insecure_skip_verify=True)
)
"""For the single-agent CLI (`python -m agent_runtime`), where the one tenant is whoever runs it: agentk's
own behaviour, any destination."""
