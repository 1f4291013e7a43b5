"""What the operator knows about a GitLabAgent + its worker's snapshot → the resource's status. Pure.

`compute_status` is deterministic given `now`: a condition keeps its lastTransitionTime while its status
does not change, and facts learnt from kas (agent id, kas version, ...) stay on the status while the
worker reconnects, so columns of `kubectl get gla` do not flicker. `transition_events` lists the
Kubernetes Events a status change deserves.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, TypeVar

from agent_operator.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    FluxStatus,
    GitLabAgentStatus,
    LastError,
    Phase,
    TunnelCounts,
    tunnels_summary,
)
from agent_runtime.spec import ErrorReason, FluxState, WorkerError, WorkerSnapshot
from agent_runtime.spec import FluxStatus as WorkerFluxStatus
from agent_runtime.spec import Phase as WorkerPhase
from agent_runtime.version import AGENT_VERSION
from agent_runtime.versions import KubernetesSupport, check_kas_version

_MAX_MESSAGE: Final = 4096
"""Condition and error messages are cut here (the schema allows 32 KiB; nobody reads that much)."""

INSECURE_WARNING: Final = (
    "WARNING: spec.insecureSkipTLSVerify is on: kas's TLS certificate is not verified, so anyone on the "
    "network path can impersonate kas; set spec.caCert instead"
)
SERVICE_ACCOUNT_NOT_FOUND: Final = "ServiceAccountNotFound"
VERSION_SKEW_EVENT: Final = "VersionIncompatible"
"""The Warning Event's reason when kas is outside GitLab's skew policy (advice: the agent keeps working)."""
_T = TypeVar("_T")


class ProblemKind(enum.Enum):
    """Why the operator runs no worker for a resource that is not suspended."""

    SPEC_INVALID = "spec"
    TOKEN = "token"  # noqa: S105 (a problem kind, not a password)
    CA_CERT = "caCert"
    CREDENTIAL = "credential"
    """A kasHeaders value or the proxy credentials from a Secret."""
    FORBIDDEN = "forbidden"
    ADMISSION = "admission"
    """Another agent holds its token, or its namespace is at the agent limit (admission.py)."""


@dataclass(frozen=True)
class Problem:
    """An operator-side reason the agent cannot run; the user must fix the resource or its Secret."""

    kind: ProblemKind
    """What is wrong."""
    reason: str
    """CamelCase reason, e.g. SecretNotFound."""
    message: str
    """What happened (never a secret value)."""
    hint: str = ""
    """What to do about it."""


@dataclass(frozen=True)
class AgentFacts:
    """What the operator knows about one GitLabAgent, apart from its worker's snapshot."""

    generation: int | None = None
    """metadata.generation of the resource this status describes."""
    kas_address: str = ""
    """spec.kasAddress (for hints), "" when the spec is invalid."""
    suspended: bool = False
    """spec.suspend."""
    insecure_skip_tls_verify: bool = False
    """spec.insecureSkipTLSVerify."""
    problem: Problem | None = None
    """Why no worker runs, if the operator refused to start one."""
    service_account: str = ""
    """`namespace/name` of spec.serviceAccountName, "" when the spec is invalid."""
    service_account_found: bool | None = None
    """Whether that ServiceAccount exists; None while the operator cannot tell (cache not synced)."""
    cluster_version: str | None = None
    """The cluster's gitVersion as the operator read it (used until Register reports one)."""
    kubernetes_support: KubernetesSupport = field(default_factory=KubernetesSupport)
    """The supported Kubernetes range."""
    replica: str | None = None
    """The operator replica that runs the agent (its pod name), when the operator is sharded."""


@dataclass(frozen=True)
class EventSpec:
    """A Kubernetes Event to record on the resource."""

    type: str
    """Normal or Warning."""
    reason: str
    """CamelCase reason."""
    message: str
    """Human-readable text."""


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _with_hint(message: str, hint: str) -> str:
    return _cut(f"{message}; {hint}" if hint else message)


def refine_error(error: WorkerError, kas_address: str) -> WorkerError:
    """Add hints the operator can give because it knows the spec (e.g. the missing trailing slash)."""
    path = kas_address.split("://", 1)[-1].partition("/")[2]
    if (
        error.reason in (ErrorReason.WEBSOCKET_HANDSHAKE, ErrorReason.AGENT_NOT_FOUND)
        and kas_address.startswith(("ws://", "wss://"))
        and path
        and not path.endswith("/")
    ):
        hint = (
            f"a self-managed GitLab serves kas under a path ending with a slash: try "
            f"spec.kasAddress {kas_address}/"
        )
        return WorkerError(error.reason, error.message, f"{hint}; {error.hint}" if error.hint else hint)
    return error


def phase_of(facts: AgentFacts, snapshot: WorkerSnapshot | None) -> Phase:
    """The resource's phase (before a missing ServiceAccount turns Connected into Degraded)."""
    if facts.problem is not None:
        return Phase.FAILED
    if facts.suspended:
        return Phase.SUSPENDED
    if snapshot is None or snapshot.phase is WorkerPhase.SUSPENDED:
        return Phase.CONNECTING  # the previous worker is draining; the new one has not reported yet
    return Phase(snapshot.phase.value)


class _Conditions:
    """Builds conditions, keeping lastTransitionTime while a condition's status stays the same."""

    def __init__(self, previous: GitLabAgentStatus | None, generation: int | None, now: datetime) -> None:
        self._previous = previous
        self._generation = generation
        self._now = now
        self.items: list[Condition] = []

    def add(self, type_: ConditionType, status: ConditionStatus, reason: str, message: str) -> Condition:
        old = self._previous.condition(type_) if self._previous is not None else None
        since = old.last_transition_time if old is not None and old.status == status else self._now
        condition = Condition(
            type=type_.value,
            status=status,
            reason=reason,
            message=_cut(message),
            last_transition_time=since,
            observed_generation=self._generation,
        )
        self.items.append(condition)
        return condition


@dataclass(frozen=True)
class _Learnt:
    """Facts learnt from kas; kept from the previous status while the snapshot does not know them."""

    agent_id: int | None
    config_commit: str | None
    kas_version: str | None
    kubernetes_version: str | None


def _pick(new: _T | None, old: _T | None) -> _T | None:
    return new if new not in (None, "") else old


def _learnt(snapshot: WorkerSnapshot | None, previous: GitLabAgentStatus | None) -> _Learnt:
    prev = previous or GitLabAgentStatus()
    if snapshot is None:
        return _Learnt(prev.agent_id, prev.config_commit, prev.kas_version, prev.kubernetes_version)
    return _Learnt(
        agent_id=_pick(snapshot.agent_id, prev.agent_id),
        config_commit=_pick(snapshot.config_commit, prev.config_commit),
        kas_version=_pick(snapshot.kas_version, prev.kas_version),
        kubernetes_version=_pick(snapshot.kubernetes_version, prev.kubernetes_version),
    )


def compute_status(
    facts: AgentFacts,
    snapshot: WorkerSnapshot | None,
    previous: GitLabAgentStatus | None,
    now: datetime,
) -> GitLabAgentStatus:
    """The status the resource should have now."""
    running = facts.problem is None and not facts.suspended
    snap = snapshot if running else None
    learnt = _learnt(snap, previous)
    error = refine_error(snap.last_error, facts.kas_address) if snap and snap.last_error else None
    phase = phase_of(facts, snap)
    agent_version = (snap.agent_version if snap else "") or AGENT_VERSION
    kas_verdict = check_kas_version(learnt.kas_version, agent_version)
    k8s_verdict = facts.kubernetes_support.check(learnt.kubernetes_version or facts.cluster_version)
    connected = phase in (Phase.CONNECTED, Phase.DEGRADED)
    # Version skew is advice (GitLab's kas keeps accepting older agents): it never changes the phase.
    # A missing ServiceAccount does: every request through the agent fails.
    if phase is Phase.CONNECTED and facts.service_account_found is False:
        phase = Phase.DEGRADED

    conditions = _Conditions(previous, facts.generation, now)
    not_running = _not_running(facts)
    _ready(conditions, facts, phase, error, kas_verdict.compatible, not_running)
    _kstatus(conditions, phase, error, not_running)
    _connected(conditions, facts, connected, error, learnt, not_running)
    _configuration(conditions, snap, error, learnt, not_running)
    _registered(conditions, snap, not_running)
    for type_, verdict in (
        (ConditionType.VERSION_COMPATIBLE, kas_verdict),
        (ConditionType.KUBERNETES_VERSION_SUPPORTED, k8s_verdict),
    ):
        status = _verdict_status(verdict.compatible)
        conditions.add(type_, status, verdict.reason, _with_hint(verdict.message, verdict.hint))
    _token(conditions, facts)
    _service_account(conditions, facts)
    _flux(conditions, snap, not_running)

    last_error: LastError | None = None
    if facts.problem is not None:
        last_error = LastError(
            reason=facts.problem.reason, message=_cut(facts.problem.message), hint=_cut(facts.problem.hint)
        )
    elif error is not None:
        last_error = LastError(reason=error.reason.value, message=_cut(error.message), hint=_cut(error.hint))

    idle = snap.tunnels_idle if snap else 0
    active = snap.tunnels_active if snap else 0
    return GitLabAgentStatus(
        observed_generation=facts.generation,
        phase=phase,
        conditions=conditions.items,
        agent_id=learnt.agent_id,
        config_commit=learnt.config_commit,
        kas_version=learnt.kas_version,
        agent_version=agent_version,
        kubernetes_version=learnt.kubernetes_version or facts.cluster_version,
        connected_since=snap.connected_since if snap and connected else None,
        tunnels=TunnelCounts(idle=idle, active=active),
        tunnels_summary=tunnels_summary(idle, active),
        last_error=last_error,
        replica=facts.replica,
        flux=_flux_status(snap.flux) if snap is not None else None,
    )


def _verdict_status(compatible: bool | None) -> ConditionStatus:
    if compatible is None:
        return ConditionStatus.UNKNOWN
    return ConditionStatus.TRUE if compatible else ConditionStatus.FALSE


def _not_running(facts: AgentFacts) -> tuple[str, str] | None:
    """(reason, message) when the operator runs no worker on purpose, else None."""
    if facts.problem is not None:
        return facts.problem.reason, _with_hint(facts.problem.message, facts.problem.hint)
    if facts.suspended:
        return "Suspended", "spec.suspend is true: the agent is disconnected from kas"
    return None


def _ready(
    c: _Conditions,
    facts: AgentFacts,
    phase: Phase,
    error: WorkerError | None,
    kas_compatible: bool | None,
    not_running: tuple[str, str] | None,
) -> None:
    warning = f" {INSECURE_WARNING}" if facts.insecure_skip_tls_verify else ""
    if not_running is not None:
        c.add(ConditionType.READY, ConditionStatus.FALSE, *not_running)
    elif phase is Phase.CONNECTED:
        skew = (
            " kas is outside GitLab's version skew policy: see VersionCompatible."
            if kas_compatible is False
            else ""
        )
        c.add(
            ConditionType.READY,
            ConditionStatus.TRUE,
            "Connected",
            f"the agent is connected to kas.{skew}{warning}",
        )
    elif error is not None:
        c.add(
            ConditionType.READY,
            ConditionStatus.FALSE,
            error.reason.value,
            _with_hint(error.message, error.hint),
        )
    elif phase is Phase.DEGRADED:
        c.add(
            ConditionType.READY,
            ConditionStatus.FALSE,
            SERVICE_ACCOUNT_NOT_FOUND,
            f"connected, but every request through the agent is forbidden: {_missing_sa(facts)}",
        )
    else:
        c.add(ConditionType.READY, ConditionStatus.FALSE, "Connecting", "connecting to kas")


def _kstatus(
    c: _Conditions, phase: Phase, error: WorkerError | None, not_running: tuple[str, str] | None
) -> None:
    """kstatus's abnormal-true pair: Reconciling while connecting, Stalled while only a change can heal.

    kstatus (Flux, Argo CD, cli-utils) reads only these two and observedGeneration on a custom resource:
    Reconciling=True is InProgress, Stalled=True is Failed, neither is Current. Never both True.
    """
    why = _with_hint(error.message, error.hint) if error is not None else ""
    if phase is Phase.FAILED:
        reason, message = not_running or (error.reason.value if error else "Failed", why)
        c.add(ConditionType.RECONCILING, ConditionStatus.FALSE, reason, "stopped: see Stalled")
        c.add(ConditionType.STALLED, ConditionStatus.TRUE, reason, message)
        return
    if phase is Phase.CONNECTING:
        reason = error.reason.value if error is not None else "Connecting"
        c.add(ConditionType.RECONCILING, ConditionStatus.TRUE, reason, why or "connecting to kas")
    else:
        c.add(ConditionType.RECONCILING, ConditionStatus.FALSE, phase.value, f"the agent is {phase.value}")
    c.add(ConditionType.STALLED, ConditionStatus.FALSE, phase.value, "nothing needs a change to work")


def _connected(
    c: _Conditions,
    facts: AgentFacts,
    connected: bool,
    error: WorkerError | None,
    learnt: _Learnt,
    not_running: tuple[str, str] | None,
) -> None:
    warning = f" {INSECURE_WARNING}" if facts.insecure_skip_tls_verify else ""
    if not_running is not None:
        c.add(ConditionType.CONNECTED, ConditionStatus.FALSE, *not_running)
    elif connected:
        kas = f" {learnt.kas_version}" if learnt.kas_version else ""
        c.add(ConditionType.CONNECTED, ConditionStatus.TRUE, "Connected", f"connected to kas{kas}.{warning}")
    elif error is not None:
        c.add(
            ConditionType.CONNECTED,
            ConditionStatus.FALSE,
            error.reason.value,
            _with_hint(error.message, error.hint),
        )
    else:
        c.add(ConditionType.CONNECTED, ConditionStatus.UNKNOWN, "Connecting", "connecting to kas")


def _configuration(
    c: _Conditions,
    snap: WorkerSnapshot | None,
    error: WorkerError | None,
    learnt: _Learnt,
    not_running: tuple[str, str] | None,
) -> None:
    t = ConditionType.CONFIGURATION_RECEIVED
    if not_running is not None:
        c.add(t, ConditionStatus.UNKNOWN, "NotRunning", "the agent is not running")
    elif error is not None and error.reason is ErrorReason.CONFIGURATION_REJECTED:
        c.add(t, ConditionStatus.FALSE, error.reason.value, _with_hint(error.message, error.hint))
    elif snap is not None and snap.configuration_received:
        commit = f" (commit {learnt.config_commit})" if learnt.config_commit else ""
        c.add(t, ConditionStatus.TRUE, "ConfigurationReceived", f"kas sent the agent configuration{commit}")
    else:
        c.add(
            t,
            ConditionStatus.UNKNOWN,
            "NotReceivedYet",
            "kas has not sent the agent configuration yet; tunnels and Register work without it",
        )


def _registered(c: _Conditions, snap: WorkerSnapshot | None, not_running: tuple[str, str] | None) -> None:
    t = ConditionType.REGISTERED
    if not_running is not None:
        c.add(t, ConditionStatus.UNKNOWN, "NotRunning", "the agent is not running")
    elif snap is not None and snap.registered:
        c.add(t, ConditionStatus.TRUE, "Registered", "the last Register call to kas succeeded")
    else:
        c.add(t, ConditionStatus.UNKNOWN, "NotRegisteredYet", "no Register call has succeeded yet")


def _token(c: _Conditions, facts: AgentFacts) -> None:
    t = ConditionType.TOKEN_AVAILABLE
    problem = facts.problem
    if problem is not None and problem.kind is ProblemKind.TOKEN:
        c.add(t, ConditionStatus.FALSE, problem.reason, _with_hint(problem.message, problem.hint))
    elif problem is not None and problem.kind in (ProblemKind.SPEC_INVALID, ProblemKind.FORBIDDEN):
        c.add(t, ConditionStatus.UNKNOWN, problem.reason, "the token Secret was not read")
    else:
        c.add(t, ConditionStatus.TRUE, "TokenFound", "the token Secret holds a token")


def _missing_sa(facts: AgentFacts) -> str:
    namespace, _, name = facts.service_account.partition("/")
    return _with_hint(
        f"ServiceAccount {facts.service_account} (spec.serviceAccountName) does not exist",
        f"create it (kubectl create serviceaccount {name} -n {namespace}) and bind it the roles the agent "
        "needs; this clears by itself once it exists",
    )


def _service_account(c: _Conditions, facts: AgentFacts) -> None:
    """Whether the identity every tunnelled request runs as exists (without it, all are forbidden)."""
    t = ConditionType.SERVICE_ACCOUNT_FOUND
    if facts.service_account_found is None:
        why = "the operator has not listed ServiceAccounts yet (it needs list and watch on serviceaccounts)"
        if not facts.service_account:
            why = "the spec was not read"
        c.add(t, ConditionStatus.UNKNOWN, "NotChecked", why)
    elif facts.service_account_found:
        c.add(
            t,
            ConditionStatus.TRUE,
            "ServiceAccountFound",
            f"requests through the agent run as ServiceAccount {facts.service_account}",
        )
    else:
        c.add(t, ConditionStatus.FALSE, SERVICE_ACCOUNT_NOT_FOUND, _missing_sa(facts))


_FLUX_WORKING: Final = frozenset({FluxState.WATCHING, FluxState.STANDBY, FluxState.NO_GITREPOSITORIES})
_FLUX_PENDING: Final = frozenset({FluxState.WAITING})


def _flux_status(flux: WorkerFluxStatus) -> FluxStatus:
    return FluxStatus(
        state=flux.state.value,
        watched_git_repositories=flux.watched,
        projects=flux.projects,
        triggered_reconciles=flux.triggered,
        failed_reconciles=flux.failed,
        last_trigger_time=flux.last_trigger,
    )


def _flux(c: _Conditions, snap: WorkerSnapshot | None, not_running: tuple[str, str] | None) -> None:
    """The Flux integration (PROTOCOL.md §17): optional, so it never changes the phase or Ready."""
    t = ConditionType.FLUX
    if not_running is not None or snap is None:
        c.add(t, ConditionStatus.UNKNOWN, "NotRunning", "the agent is not running")
        return
    flux = snap.flux
    if flux.state in _FLUX_WORKING:
        status = ConditionStatus.TRUE
    elif flux.state in _FLUX_PENDING:
        status = ConditionStatus.UNKNOWN
    else:
        status = ConditionStatus.FALSE
    c.add(t, status, flux.state.value, flux.message or flux.state.value)


def _is_true(status: GitLabAgentStatus | None, type_: ConditionType) -> bool:
    condition = status.condition(type_) if status is not None else None
    return condition is not None and condition.status is ConditionStatus.TRUE


def _is_false(status: GitLabAgentStatus | None, type_: ConditionType) -> bool:
    condition = status.condition(type_) if status is not None else None
    return condition is not None and condition.status is ConditionStatus.FALSE


def transition_events(
    old: GitLabAgentStatus | None, new: GitLabAgentStatus, facts: AgentFacts
) -> list[EventSpec]:
    """Events for the transitions from `old` to `new` (Connected, Disconnected, VersionIncompatible,
    ServiceAccountNotFound)."""
    events: list[EventSpec] = []
    was, now_connected = _is_true(old, ConditionType.CONNECTED), _is_true(new, ConditionType.CONNECTED)
    if now_connected and not was:
        who = f"agent {new.agent_id}" if new.agent_id is not None else "the agent"
        kas = f" {new.kas_version}" if new.kas_version else ""
        events.append(EventSpec("Normal", "Connected", f"{who} connected to kas{kas}"))
        if facts.insecure_skip_tls_verify:
            events.append(EventSpec("Warning", "InsecureSkipTLSVerify", INSECURE_WARNING))
    elif was and not now_connected:
        condition = new.condition(ConditionType.CONNECTED)
        why = f": {condition.reason}: {condition.message}" if condition is not None else ""
        events.append(EventSpec("Warning", "Disconnected", _cut(f"disconnected from kas{why}")))
    skew = _skew_warning(old, new)
    if skew is not None:
        events.append(skew)
    if _is_false(new, ConditionType.SERVICE_ACCOUNT_FOUND) and not _is_false(
        old, ConditionType.SERVICE_ACCOUNT_FOUND
    ):
        condition = new.condition(ConditionType.SERVICE_ACCOUNT_FOUND)
        message = condition.message if condition is not None else "the ServiceAccount does not exist"
        events.append(EventSpec("Warning", SERVICE_ACCOUNT_NOT_FOUND, message))
    return events


def _skew_warning(old: GitLabAgentStatus | None, new: GitLabAgentStatus) -> EventSpec | None:
    """A Warning once per change of the skew verdict (another kas version, another direction)."""
    condition = new.condition(ConditionType.VERSION_COMPATIBLE)
    if condition is None or condition.status is not ConditionStatus.FALSE:
        return None
    before = old.condition(ConditionType.VERSION_COMPATIBLE) if old is not None else None
    if before is not None and (before.status, before.reason, before.message) == (
        condition.status,
        condition.reason,
        condition.message,
    ):
        return None
    return EventSpec("Warning", VERSION_SKEW_EVENT, condition.message)
