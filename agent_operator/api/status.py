"""`status` of a GitLabAgent: what the operator observed. Written only by the operator (status subresource).

Only what users need to act on is here; everything is safe to show (no token, no credentials).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from agent_operator.api import base
from agent_operator.api.base import ApiModel, Timestamp
from agent_operator.api.constants import ConditionStatus, ConditionType, Phase

_INT64: dict[str, Any] = {"format": "int64"}

Reason = Annotated[str, Field(pattern=base.CONDITION_REASON, min_length=1, max_length=1024)]
Count = Annotated[int, Field(ge=0)]


class Condition(ApiModel):
    """One aspect of the agent's state, in the shape every Kubernetes API uses."""

    type: Annotated[str, Field(pattern=base.CONDITION_TYPE, max_length=316)]
    """Which aspect this is: Ready, Connected, ConfigurationReceived, Registered, VersionCompatible,
    KubernetesVersionSupported, TokenAvailable, ServiceAccountFound, Flux, Reconciling or Stalled."""
    status: ConditionStatus
    """Whether the condition holds: True, False or Unknown."""
    reason: Reason
    """Why, as one CamelCase word that tools can match on."""
    message: Annotated[str, Field(max_length=32768)]
    """Why, for humans: what happened and what to do about it. May be empty."""
    last_transition_time: Timestamp
    """When status last changed."""
    observed_generation: Annotated[int, Field(ge=0, json_schema_extra=_INT64)] | None = None
    """The metadata.generation of the resource this condition was computed for."""


class TunnelCounts(ApiModel):
    """Reverse tunnels currently open to kas."""

    idle: Count = 0
    """Tunnels waiting for a request from kas."""
    active: Count = 0
    """Tunnels serving a request right now."""


class LastError(ApiModel):
    """The most recent failure, with a hint on how to fix it; cleared when the agent is healthy again."""

    reason: Reason
    """Kind of failure, e.g. Unauthenticated, TLSUnknownAuthority, WebSocketHandshakeFailed."""
    message: Annotated[str, Field(max_length=32768)]
    """What happened."""
    hint: Annotated[str, Field(max_length=32768)] = ""
    """What to do about it, e.g. `set spec.caCert` or `the token was revoked: create a new one`."""


class FluxStatus(ApiModel):
    """What the agent's Flux integration does; the counts are those of the replica running it, since it
    started."""

    state: Annotated[str, Field(pattern=base.CONDITION_REASON, min_length=1, max_length=64)]
    """Watching, Standby (another replica or an agentk holds the agent's Lease), NoGitRepositories,
    FluxNotInstalled, GitRepositoriesUnreadable, NotServedByKas, StreamFailed, LeaseUnavailable, NoGitLabURL,
    WebhookURLRefused, WaitingForConfiguration or Disabled; the Flux condition says more."""
    watched_git_repositories: Count = 0
    """GitRepositories pointing at this agent's GitLab, in namespaces where its ServiceAccount may patch
    GitRepositories."""
    projects: Count = 0
    """Distinct GitLab projects of those GitRepositories, whose pushes kas reports."""
    triggered_reconciles: Count = 0
    """GitRepositories whose reconcile was requested after a push."""
    failed_reconciles: Count = 0
    """Reconcile requests that failed (the GitRepository's own interval still applies)."""
    last_trigger_time: Timestamp | None = None
    """When a reconcile was last requested."""


NEW_RESOURCE_STATUS: dict[str, Any] = {"observedGeneration": 0}
"""The CRD's schema default for `status`, what a GitLabAgent shows before the operator's first write.

kstatus (Flux, Argo CD's health, `kubectl wait --for=jsonpath`) counts a custom resource without a status
as ready at once. A generation always starts at 1, so this observedGeneration lags, and kstatus reads
`InProgress` from the moment of creation until the operator writes a status of its own."""


def tunnels_summary(idle: int, active: int) -> str:
    """The TUNNELS column text, e.g. `2 idle/0 active`."""
    return f"{idle} idle/{active} active"


class GitLabAgentStatus(ApiModel):
    """Observed state of the agent, as reported by the operator."""

    observed_generation: Annotated[int, Field(ge=0, json_schema_extra=_INT64)] | None = None
    """The metadata.generation of the spec this status describes; 0 until the operator's first write."""
    phase: Phase | None = None
    """Coarse state: Connecting, Connected, Degraded (connected, but something needs attention),
    Suspended (spec.suspend) or Failed (cannot work until the spec or its Secret is fixed)."""
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=32,
            # Atomic, not a map keyed by type: the operator is the only writer of the status and
            # replaces the list as a whole (a JSON merge patch always does), and as a map the API
            # server tracked every field of every condition in managedFields: a quarter of its CPU
            # per status write of a Connected agent (docs/benchmarks.md, Session 10).
            json_schema_extra={"x-kubernetes-list-type": "atomic"},
        ),
    ] = Field(default_factory=list)
    """Detailed state, one entry per type: Ready, Connected, ConfigurationReceived, Registered,
    VersionCompatible, KubernetesVersionSupported, TokenAvailable, ServiceAccountFound, Flux, and kstatus's
    Reconciling (True while connecting) and Stalled (True when a change is needed to heal)."""
    agent_id: Annotated[int, Field(ge=0, json_schema_extra=_INT64)] | None = None
    """The agent's id in GitLab, as kas reported it."""
    config_commit: Annotated[str, Field(max_length=256)] | None = None
    """Commit of the agent configuration file (.gitlab/agents/<name>/config.yaml) last received."""
    kas_version: Annotated[str, Field(max_length=256)] | None = None
    """Version of kas (GitLab's agent server) the agent is connected to."""
    agent_version: Annotated[str, Field(max_length=256)] | None = None
    """The agentk version the operator reports to kas (the protocol level it implements)."""
    kubernetes_version: Annotated[str, Field(max_length=256)] | None = None
    """The cluster's Kubernetes version, as reported to kas."""
    connected_since: Timestamp | None = None
    """When the current connection to kas was established."""
    tunnels: TunnelCounts | None = None
    """Reverse tunnels currently open to kas."""
    tunnels_summary: Annotated[str, Field(max_length=64)] | None = None
    """The tunnel counts as text for the TUNNELS column, e.g. `2 idle/0 active`."""
    last_error: LastError | None = None
    """The most recent failure and a hint on how to fix it."""
    replica: Annotated[str, Field(max_length=253)] | None = None
    """The operator replica (pod) that runs this agent, when the operator is sharded over several
    replicas (--sharding); absent otherwise."""
    flux: FluxStatus | None = None
    """The Flux integration (spec.flux): state and counts; absent while the agent does not run."""

    def condition(self, type_: ConditionType | str) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)

    def to_dict(self) -> dict[str, Any]:
        """The status as stored in the resource (unset fields omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_merge_patch(self) -> dict[str, Any]:
        """A JSON merge patch body that makes the stored status equal to this one.

        Unset fields become `null`, which a merge patch reads as "remove", so a value cleared here (say
        lastError once the agent recovers) disappears from the resource instead of staying stale.
        """
        patch = self.model_dump(mode="json", by_alias=True, exclude_none=False, exclude={"conditions"})
        # A list is replaced as a whole, so its items need no nulls (and look cleaner without).
        patch["conditions"] = [
            c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in self.conditions
        ]
        return patch
