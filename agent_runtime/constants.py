"""Every protocol constant the runtime uses, in one place, each citing PROTOCOL.md.

Version choice (PROTOCOL.md §13.1): the newest wire level documented in §13's milestone table is GitLab
16.5 (`AgentRegistrar.Register`, `skip_register`, `AgentMeta.kubernetes_version`); nothing later is
verified (§16.1). We therefore report `v16.5.0` as AgentMeta.version: it is the agentk protocol level
this engine implements, and GitLab's wire evolution is additive, so newer kas accept it. The commit is
`gao-<short>` so GitLab's UI shows that this is not GitLab's own agentk build.
"""

from __future__ import annotations

from typing import Final

# --- identity (§5, §3.5, §7.3, §13) -------------------------------------------------------------
AGENTK_PROTOCOL_VERSION: Final = "v16.5.0"
"""AgentMeta.version we send: the agentk protocol level implemented (§13.1, see module docstring)."""
AGENT_COMMIT_PREFIX: Final = "gao-"
"""AgentMeta.commit_id is `gao-<short>`: marks this engine (gitlab-agent-operator) in GitLab's UI."""

# --- channel (§3.5) -------------------------------------------------------------------------------
KEEPALIVE_TIME_S: Final = 55.0
"""agentk pings kas after 55 s without activity, also without active calls (§3.5)."""
KEEPALIVE_MIN_S: Final = 20.0
"""kas refuses pings closer than 20 s apart (§3.6): never configure below this."""
CHUNK_SIZE: Final = 32 * 1024
"""Every streamed body chunk is at most 32 KiB (§3.5, §7.3, §15)."""

# --- GetConfiguration (§6.1) ----------------------------------------------------------------------
CONFIG_BACKOFF_INITIAL_S: Final = 10.0
CONFIG_BACKOFF_MAX_S: Final = 300.0
CONFIG_BACKOFF_FACTOR: Final = 2.0
CONFIG_BACKOFF_JITTER: Final = 1.0
CONFIG_BACKOFF_RESET_S: Final = 600.0
"""GetConfiguration retry: 10 s → 5 min, x2, jitter 1.0, reset after 10 min (§6.1 step 4)."""

# --- Register (§6.2) -----------------------------------------------------------------------------
REGISTER_INTERVAL_S: Final = 300.0
"""Register heartbeat period after a success (§6.2)."""
REGISTER_BACKOFF_INITIAL_S: Final = 10.0
REGISTER_BACKOFF_MAX_S: Final = 300.0
REGISTER_BACKOFF_FACTOR: Final = 2.0
REGISTER_BACKOFF_JITTER: Final = 1.0
REGISTER_BACKOFF_RESET_S: Final = 600.0
"""Register retry: 10 s → 5 min, x2, jitter 1.0, reset after 10 min (§6.2)."""
POD_ID_BITS: Final = 63
"""pod_id is a random non-negative 63-bit integer drawn once per process/worker (§6.2)."""

# --- reverse tunnel pool (§8) ---------------------------------------------------------------------
TUNNEL_MIN_IDLE: Final = 2
"""minIdleConnections (§8)."""
TUNNEL_MAX: Final = 500
"""maxConnections: idle + active (§8)."""
TUNNEL_SCALE_UP_STEP: Final = 10
"""scaleUpStep: tunnels started at once when idle drops below the minimum (§8)."""
TUNNEL_MAX_IDLE_S: Final = 60.0
"""maxIdleTime: idle extras not active for this long are retired (§8)."""
TUNNEL_BACKOFF_INITIAL_S: Final = 1.0
TUNNEL_BACKOFF_MAX_S: Final = 20.0
TUNNEL_BACKOFF_FACTOR: Final = 1.6
TUNNEL_BACKOFF_JITTER: Final = 0.2
TUNNEL_BACKOFF_RESET_S: Final = 25.0
"""Tunnel reconnect: 1 s → 20 s, x1.6, jitter 0.2, reset after 25 s; only after non-cancel errors (§8)."""
TUNNEL_ESTABLISHED_AFTER_S: Final = 1.0
"""Our choice (not agentk's): an idle Connect stream alive this long counts as proof kas accepted us."""

# --- Kubernetes API proxying (§7) -----------------------------------------------------------------
VIA_REQUEST_PROTOCOL: Final = "gRPC/1.0"
"""`Via: gRPC/1.0 gitlab-agent/<version>/<commit>` appended to the request sent to the API server (§7.3)."""
GRPC_TO_HTTP_ERROR_PREFIX: Final = "gRPC -> HTTP: "
"""Failures before a response end MakeRequest with UNAVAILABLE and this prefix (§7.3)."""
NESTED_IMPERSONATION_ERROR: Final = (
    "nested impersonation is not supported - agent is already configured to impersonate an identity"
)
"""The rejection text for conflicting impersonation (§7.5)."""
IMPERSONATE_USER: Final = "Impersonate-User"
IMPERSONATE_UID: Final = "Impersonate-Uid"
IMPERSONATE_GROUP: Final = "Impersonate-Group"
IMPERSONATE_EXTRA_PREFIX: Final = "Impersonate-Extra-"
"""Exact (Go-canonical) impersonation header keys agentk checks (§4.1, §7.5)."""
SAR_CACHE_TTL_S: Final = 10.0
"""Our choice: how long a SubjectAccessReview verdict for impersonation is reused."""
