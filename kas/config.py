"""kas.yaml: the reference kas's configuration file, as pydantic models.

Key names follow GitLab's kascfg where one exists (`agent.listen.websocket`, `redis.key_prefix`,
`private_api.listen.authentication_secret_file`, ...). Durations are seconds (a number) or a string with
a unit (`"7200s"`, `"500ms"`, `"2h"`), so tests can shrink every timer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")


def _parse_duration(value: Any) -> Any:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"not a duration: {value!r} (use a number of seconds or e.g. '20s', '500ms', '2h')"
            )
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]
"""A duration in seconds; strings with a unit are accepted."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Model):
    """One TCP listener."""

    address: str = "127.0.0.1:0"
    """host:port; port 0 picks a free port (the bound address is reported by the running server)."""
    certificate_file: Path | None = None
    """PEM certificate (chain); TLS is on iff both this and key_file are set."""
    key_file: Path | None = None
    """PEM private key for certificate_file."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ListenConfig:
        if (self.certificate_file is None) != (self.key_file is None):
            raise ValueError("certificate_file and key_file must be set together")
        return self

    @property
    def tls(self) -> bool:
        return self.certificate_file is not None


class AgentListenConfig(ListenConfig):
    """The agent-facing listener (gRPC h2/h2c and WebSocket `ws-tunnel` on one port)."""

    websocket: bool = True
    """Accept gRPC-in-WebSocket (HTTP/1.1 upgrade) next to plain gRPC, on one port. Off: plain gRPC only,
    served by the gRPC server itself, which saves the splice hop on every message (lower latency)."""
    max_connection_age: Seconds = 7200.0
    """GitLab's `max_connection_age`; the values below derive from it (PROTOCOL.md §3.6)."""
    listen_grace_period: Seconds = 5.0
    """On shutdown, how long in-flight requests may continue."""
    connections_per_token_per_minute: int = Field(default=40000, gt=0)
    """RPCs (unary or stream) one agent token may start per wall-clock minute; more are refused with
    RESOURCE_EXHAUSTED. Counted in Redis when configured (shared by replicas), else in memory."""

    @property
    def grpc_max_connection_age(self) -> float:
        """20 %: GOAWAY is sent after this long (gRPC adds ±10 % jitter)."""
        return self.max_connection_age * 0.20

    @property
    def grpc_max_connection_age_grace(self) -> float:
        """65 %: after GOAWAY, in-flight streams may run this long before the connection is closed."""
        return self.max_connection_age * 0.65

    @property
    def age_context(self) -> float:
        """30 %: idle Connect / GetConfiguration streams end with OK this long after accept (+0-5 %)."""
        return self.max_connection_age * 0.30


class KubernetesApiConfig(_Model):
    """The Kubernetes API proxy for CI jobs and users (served by kas.k8s_proxy)."""

    listen: ListenConfig | None = None
    """None = the proxy is off."""
    url_path_prefix: str = "/"
    """Path prefix stripped from incoming requests (GitLab deployments often use /k8s-proxy)."""


class AgentConfig(_Model):
    listen: AgentListenConfig = AgentListenConfig()
    kubernetes_api: KubernetesApiConfig = KubernetesApiConfig()
    max_message_size: int = Field(default=4 * 1024 * 1024, gt=0)
    """Largest gRPC message kas accepts from an agent (gRPC's default 4 MiB)."""
    tunnel_find_timeout: Seconds = 20.0
    """GitLab's routing give-up: no tunnel within this long = NoTunnelError."""
    keepalive_time: Seconds = 50.0
    """Server pings after this long without activity."""
    keepalive_min_ping_interval: Seconds = 20.0
    """Clients pinging more often than this are told to go away (too_many_pings)."""


class AgentsSecretConfig(_Model):
    """A Kubernetes Secret whose `key` holds the agents document (the same YAML as the agents file)."""

    namespace: str = Field(min_length=1)
    """Namespace of the Secret."""
    name: str = Field(min_length=1)
    """Name of the Secret; kas lists and watches only this one object."""
    key: str = Field(default="agents.yaml", min_length=1)
    """Key in the Secret's data holding the YAML document."""
    kubeconfig: Path | None = None
    """Credentials for the API server; None = in-cluster service account, else $KUBECONFIG/~/.kube/config."""


class AgentsSourceConfig(_Model):
    """Where agents and their tokens come from: a file or a Kubernetes Secret (exactly one of them)."""

    file: Path | None = None
    """YAML file listing agents and tokens (see kas.agents); re-read when it changes."""
    secret: AgentsSecretConfig | None = None
    """A Secret holding that YAML document; watched, reloaded when it changes."""
    reload_period: Seconds = 1.0
    """How often the file's mtime/size are checked."""

    @model_validator(mode="after")
    def _one_source(self) -> AgentsSourceConfig:
        if self.file is not None and self.secret is not None:
            raise ValueError("agents: set either file or secret, not both")
        # An `agents:` section that says anything must name its source; leaving the section out
        # means no agents (an embedding sets them with AgentDirectory.set_agents).
        if self.file is None and self.secret is None and self.model_fields_set:
            raise ValueError("agents: set exactly one of file or secret")
        return self


class AgentConfigurationConfig(_Model):
    directory: Path | None = None
    """Holds `<project path>/.gitlab/agents/<agent name>/config.yaml`; None = every agent gets {}."""
    poll_period: Seconds = 0.2
    """How often watched configuration files are checked for changes."""
    max_configuration_file_size: int = Field(default=131072, gt=0)


class RedisConfig(_Model):
    url: str
    """redis://host:port/db"""
    key_prefix: str = "gitlab-kas"
    conn_info_ttl: Seconds = 300.0
    """TTL of tunnel-index and agent-tracker entries."""
    conn_info_refresh: Seconds = 240.0
    """How often this kas rewrites its entries."""
    tunnel_unregister_delay: Seconds = 5.0
    """HDEL of this kas from an agent's tunnel index this long after its last tunnel went away."""
    poll_period: Seconds = 0.05
    """While a request waits, Redis is re-read this often for kas replicas holding the agent's tunnels."""
    events_channel: str = Field(default="kas_events", min_length=1)
    """Pub/sub channel git push events reach every replica on. GitLab's kas uses `kas_events`, with no
    key prefix (so kas deployments sharing one Redis see each other's pushes, and ours sees GitLab's);
    set e.g. `<key_prefix>:kas_events` to keep deployments apart (PROTOCOL.md §17.7, §17.13)."""


class PrivateApiConfig(_Model):
    """The kas-to-kas gRPC API (the gateway side of multi-replica routing)."""

    listen: ListenConfig = ListenConfig()
    own_url: str | None = None
    """URL other replicas dial (grpc://ip:port); default: built from the bound listen address."""
    authentication_secret_file: Path
    """base64-encoded shared secret for the HS256 JWTs replicas present to each other."""
    max_connection_age: Seconds = 7200.0


class ApiConfig(_Model):
    """The listener GitLab Rails calls (GitLab's `api`, port 8153): Notifications/GitPushEvent."""

    listen: ListenConfig = ListenConfig()
    authentication_secret_file: Path
    """base64-encoded secret Rails signs its HS256 JWTs with (audience `gitlab-kas`): the same file as
    GitLab's `gitlab.authentication_secret_file`."""


class ObservabilityConfig(_Model):
    listen: ListenConfig = ListenConfig()


class AgentTrackerConfig(_Model):
    register_ttl: Seconds = 360.0
    """A Register is forgotten this long after it arrived; agentk re-registers every 5 min."""


class KasConfig(_Model):
    agent: AgentConfig = AgentConfig()
    agents: AgentsSourceConfig = AgentsSourceConfig()
    agent_configuration: AgentConfigurationConfig = AgentConfigurationConfig()
    agent_tracker: AgentTrackerConfig = AgentTrackerConfig()
    redis: RedisConfig | None = None
    private_api: PrivateApiConfig | None = None
    api: ApiConfig | None = None
    """None = no API listener (push events cannot reach this kas)."""
    observability: ObservabilityConfig = ObservabilityConfig()
    gitlab_external_url: str = "http://gitlab.example.com"
    """Sent to agents in AgentConfiguration.gitlab_external_url."""
    wire_flavor: str = Field(default="gitlab", pattern="^(gitlab|plural)$")
    """Proto package prefix served to agents (PROTOCOL.md §2.3)."""
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _private_api_needs_redis(self) -> KasConfig:
        if self.private_api is not None and self.redis is None:
            raise ValueError("private_api needs redis: replicas find each other through it")
        return self


def load_config(path: Path) -> KasConfig:
    """Read and validate kas.yaml; relative paths inside it are resolved against its directory."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: top level must be a mapping")  # noqa: TRY004 - a config error, shown as such
    return KasConfig.model_validate(_resolve_paths(raw, path.parent))


_PATH_KEYS = {
    "certificate_file",
    "key_file",
    "file",
    "directory",
    "authentication_secret_file",
    "kubeconfig",
}


def _resolve_paths(node: Any, base: Path) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                str(base / value)
                if key in _PATH_KEYS and isinstance(value, str)
                else _resolve_paths(value, base)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_resolve_paths(item, base) for item in node]
    return node
