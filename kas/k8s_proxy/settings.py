"""Settings and collaborators of the Kubernetes API proxy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent_proto.flavor import WireFlavor, WireNames, wire_names
from agent_proto.gitlab.agent.agentcfg.agentcfg_pb2 import ConfigurationFile
from kas.agents import AgentInfo
from kas.k8s_proxy.access import ProxyAccessConfig
from kas.tunnel_call import TunnelRouter

AgentLookup = Callable[[int], AgentInfo | None]
"""Agent id -> the agent, or None if this kas does not know it (answered with 404)."""
ConfigurationLookup = Callable[[AgentInfo], Awaitable[ConfigurationFile | None] | ConfigurationFile | None]
"""The agent's current configuration file (sync or async); None = no file = all defaults."""
AccessLookup = Callable[[], ProxyAccessConfig]
"""The current `ci_jobs:`/`users:` sections (re-read with the agents file)."""


@dataclass(frozen=True)
class ProxySettings:
    """Behaviour of the proxy; defaults are GitLab's."""

    flavor: WireFlavor = WireFlavor.GITLAB
    """Selects the MakeRequest method path and the HeaderExtra type URL/numbering."""
    url_path_prefix: str = "/"
    """Every request path must start with it; it is stripped (minus its final "/") before forwarding."""
    allowed_origins: frozenset[str] = field(default_factory=frozenset)
    """Browser origins allowed by CORS (GitLab: its external URL); any other Origin gets 403."""
    kas_version: str = "v0.1.0"
    """Shown in `Via: gRPC/1.0 gitlab-kas/<version>/<commit>`."""
    kas_commit: str = "unknown"
    routing_timeout: float = 20.0
    """How long to wait for a tunnel of the agent before answering 502 (GitLab: 20 s)."""
    upgrade_write_timeout: float = 20.0
    """Per-write timeout on a hijacked (upgraded) client connection (GitLab: 20 s)."""

    @property
    def prefix(self) -> str:
        """The URL path prefix with exactly one trailing "/" (GitLab enforces it)."""
        stripped = self.url_path_prefix.rstrip("/")
        return (stripped if stripped.startswith("/") else "/" + stripped) + "/" if stripped else "/"

    @property
    def via(self) -> str:
        return f"gRPC/1.0 gitlab-kas/{self.kas_version}/{self.kas_commit}"

    @property
    def names(self) -> WireNames:
        return wire_names(self.flavor)


@dataclass(frozen=True)
class ProxyDependencies:
    """What the proxy asks others for: tunnels, agents, their configuration, CI job/user access."""

    router: TunnelRouter
    find_agent: AgentLookup
    agent_configuration: ConfigurationLookup
    access: AccessLookup
