"""Facts + worker snapshot → GitLabAgent status, conditions and transition Events."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent_operator.api import ConditionStatus, ConditionType, GitLabAgentSpec, GitLabAgentStatus, Phase
from agent_operator.mapping import AgentKey, Missing, token_from_secret
from agent_operator.status_mapping import (
    INSECURE_WARNING,
    AgentFacts,
    Problem,
    ProblemKind,
    compute_status,
    phase_of,
    transition_events,
)
from agent_runtime.spec import ErrorReason, FluxState, FluxStatus, WorkerError, WorkerSnapshot
from agent_runtime.spec import Phase as WorkerPhase
from agent_runtime.version import AGENT_VERSION
from agent_runtime.versions import KubernetesSupport, MinorVersion, parse_minor

T0 = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
TOKEN = "glagent-secret-" + "q" * 40
_MINOR = parse_minor(AGENT_VERSION) or MinorVersion(0, 0)
KAS = f"v{_MINOR.major}.{_MINOR.minor}.7"
"""A kas of the same minor as the protocol level we speak."""
FACTS = AgentFacts(
    generation=3,
    kas_address="wss://kas.example.com",
    cluster_version="v1.36.2",
    service_account="ns/agent",
    service_account_found=True,
)
CONNECTED = WorkerSnapshot(
    id="ns/a",
    phase=WorkerPhase.CONNECTED,
    connected_since=T0,
    agent_id=42,
    config_commit="abc123",
    kas_version=KAS,
    agent_version=AGENT_VERSION,
    kubernetes_version="v1.36.2",
    registered=True,
    configuration_received=True,
    tunnels_idle=2,
    tunnels_active=1,
    flux=FluxStatus(
        FluxState.WATCHING, "2 GitRepositories of 1 project(s)", watched=2, projects=1, triggered=3
    ),
)


def cond(status: GitLabAgentStatus, type_: ConditionType) -> tuple[ConditionStatus, str]:
    c = status.condition(type_)
    assert c is not None, type_
    return c.status, c.reason


def test_connected_worker() -> None:
    status = compute_status(FACTS, CONNECTED, None, T0)

    assert status.phase is Phase.CONNECTED
    assert status.observed_generation == 3
    assert (status.agent_id, status.config_commit, status.kas_version) == (42, "abc123", KAS)
    assert status.agent_version == AGENT_VERSION
    assert status.kubernetes_version == "v1.36.2"
    assert status.connected_since == T0
    assert status.tunnels is not None
    assert (status.tunnels.idle, status.tunnels.active) == (2, 1)
    assert status.tunnels_summary == "2 idle/1 active"
    assert status.last_error is None
    abnormal_true = {ConditionType.RECONCILING, ConditionType.STALLED}  # kstatus: False when all is well
    for type_ in ConditionType:
        expected = ConditionStatus.FALSE if type_ in abnormal_true else ConditionStatus.TRUE
        assert cond(status, type_)[0] is expected, type_
    assert {c.type for c in status.conditions} == {t.value for t in ConditionType}
    assert all(c.observed_generation == 3 for c in status.conditions)


def test_transition_time_is_kept_while_the_status_does_not_change() -> None:
    first = compute_status(FACTS, CONNECTED, None, T0)
    again = compute_status(FACTS, replace(CONNECTED, tunnels_idle=1), first, T1)

    assert all(c.last_transition_time == T0 for c in again.conditions)
    broken = replace(
        CONNECTED,
        phase=WorkerPhase.CONNECTING,
        last_error=WorkerError(ErrorReason.KAS_UNREACHABLE, "dial failed", "check kasAddress"),
    )
    later = compute_status(FACTS, broken, again, T1)
    connected = later.condition(ConditionType.CONNECTED)
    registered = later.condition(ConditionType.REGISTERED)
    assert connected is not None
    assert connected.last_transition_time == T1
    assert registered is not None
    assert registered.last_transition_time == T0


def test_same_inputs_same_status_so_no_write() -> None:
    first = compute_status(FACTS, CONNECTED, None, T0)
    assert compute_status(FACTS, CONNECTED, first, T1) == first


def test_no_snapshot_yet_is_connecting() -> None:
    status = compute_status(FACTS, None, None, T0)

    assert status.phase is Phase.CONNECTING
    assert cond(status, ConditionType.READY) == (ConditionStatus.FALSE, "Connecting")
    assert cond(status, ConditionType.CONNECTED) == (ConditionStatus.UNKNOWN, "Connecting")
    assert cond(status, ConditionType.VERSION_COMPATIBLE)[0] is ConditionStatus.UNKNOWN
    assert cond(status, ConditionType.KUBERNETES_VERSION_SUPPORTED)[0] is ConditionStatus.TRUE
    assert cond(status, ConditionType.RECONCILING) == (ConditionStatus.TRUE, "Connecting")
    assert cond(status, ConditionType.STALLED)[0] is ConditionStatus.FALSE
    assert status.connected_since is None


@pytest.mark.parametrize(
    ("reason", "phase"),
    [
        (ErrorReason.UNAUTHENTICATED, WorkerPhase.FAILED),
        (ErrorReason.TLS_UNKNOWN_AUTHORITY, WorkerPhase.FAILED),
        (ErrorReason.PROXY_REFUSED, WorkerPhase.FAILED),
        (ErrorReason.KAS_UNREACHABLE, WorkerPhase.CONNECTING),
        (ErrorReason.RATE_LIMITED, WorkerPhase.CONNECTING),
    ],
)
def test_worker_errors_become_typed_reasons_with_hints(reason: ErrorReason, phase: WorkerPhase) -> None:
    snapshot = WorkerSnapshot(id="ns/a", phase=phase, last_error=WorkerError(reason, "it failed", "do this"))

    status = compute_status(FACTS, snapshot, None, T0)

    assert status.phase.value == phase.value if status.phase else False
    assert status.last_error is not None
    assert (status.last_error.reason, status.last_error.hint) == (reason.value, "do this")
    ready = status.condition(ConditionType.READY)
    assert ready is not None
    assert ready.reason == reason.value
    assert "do this" in ready.message
    assert cond(status, ConditionType.CONNECTED) == (ConditionStatus.FALSE, reason.value)
    # kstatus: a failure only a change heals is Stalled (Failed); one that retrying may heal, Reconciling.
    stalled = phase is WorkerPhase.FAILED
    assert cond(status, ConditionType.STALLED) == (
        ConditionStatus.TRUE if stalled else ConditionStatus.FALSE,
        reason.value if stalled else "Connecting",
    )
    assert cond(status, ConditionType.RECONCILING) == (
        ConditionStatus.FALSE if stalled else ConditionStatus.TRUE,
        reason.value,
    )
    assert not (stalled and cond(status, ConditionType.RECONCILING)[0] is ConditionStatus.TRUE)


def test_degraded_keeps_connected_true() -> None:
    snapshot = replace(
        CONNECTED,
        phase=WorkerPhase.DEGRADED,
        last_error=WorkerError(ErrorReason.CONFIGURATION_REJECTED, "bad config.yaml", "fix it"),
    )
    status = compute_status(FACTS, snapshot, None, T0)

    assert status.phase is Phase.DEGRADED
    assert cond(status, ConditionType.CONNECTED)[0] is ConditionStatus.TRUE
    assert cond(status, ConditionType.CONFIGURATION_RECEIVED) == (
        ConditionStatus.FALSE,
        "ConfigurationRejected",
    )
    assert cond(status, ConditionType.READY) == (ConditionStatus.FALSE, "ConfigurationRejected")


@pytest.mark.parametrize(
    ("minors", "reason", "hint"),
    [(-3, "KasTooOld", "GitLab is older than this agent"), (+3, "KasTooNew", "upgrade the operator")],
)
def test_version_skew_is_advice_and_one_event_per_change(minors: int, reason: str, hint: str) -> None:
    old = compute_status(FACTS, CONNECTED, None, T0)
    skewed = replace(CONNECTED, kas_version=f"v{_MINOR.major}.{_MINOR.minor + minors}.0")
    new = compute_status(FACTS, skewed, old, T1)

    assert new.phase is Phase.CONNECTED
    assert cond(new, ConditionType.READY) == (ConditionStatus.TRUE, "Connected")
    assert cond(new, ConditionType.STALLED)[0] is ConditionStatus.FALSE
    assert cond(new, ConditionType.RECONCILING)[0] is ConditionStatus.FALSE
    assert cond(new, ConditionType.VERSION_COMPATIBLE) == (ConditionStatus.FALSE, reason)
    version = new.condition(ConditionType.VERSION_COMPATIBLE)
    assert version is not None
    assert skewed.kas_version is not None
    for text in (skewed.kas_version, AGENT_VERSION, "one minor older or newer is supported", hint):
        assert text in version.message
    events = transition_events(old, new, FACTS)
    assert [(e.type, e.reason) for e in events] == [("Warning", "VersionIncompatible")]
    assert hint in events[0].message
    again = compute_status(FACTS, replace(skewed, tunnels_idle=5), new, T1)
    assert transition_events(new, again, FACTS) == []  # no new Event while nothing changed
    further = minors + (1 if minors > 0 else -1)
    other = replace(skewed, kas_version=f"v{_MINOR.major}.{_MINOR.minor + further}.0")
    moved = compute_status(FACTS, other, again, T1)
    assert [e.reason for e in transition_events(again, moved, FACTS)] == ["VersionIncompatible"]


@pytest.mark.parametrize("kas", ["v0.0.0", "v18.7.0-pre", None])
def test_a_kas_that_names_no_release_is_unknown_never_false(kas: str | None) -> None:
    status = compute_status(FACTS, replace(CONNECTED, kas_version=kas), None, T0)

    assert cond(status, ConditionType.VERSION_COMPATIBLE) == (ConditionStatus.UNKNOWN, "KasVersionUnknown")
    assert cond(status, ConditionType.READY) == (ConditionStatus.TRUE, "Connected")
    assert transition_events(None, status, FACTS)[-1].reason == "Connected"


def test_cluster_outside_the_supported_range() -> None:
    facts = replace(FACTS, kubernetes_support=KubernetesSupport(MinorVersion(1, 30), MinorVersion(1, 32)))
    status = compute_status(facts, CONNECTED, None, T0)
    assert cond(status, ConditionType.KUBERNETES_VERSION_SUPPORTED) == (ConditionStatus.FALSE, "Unsupported")
    assert status.phase is Phase.CONNECTED  # advice, like the kas version skew
    assert cond(status, ConditionType.READY)[0] is ConditionStatus.TRUE


@pytest.mark.parametrize(
    ("kind", "token_status"),
    [
        (ProblemKind.TOKEN, ConditionStatus.FALSE),
        (ProblemKind.SPEC_INVALID, ConditionStatus.UNKNOWN),
        (ProblemKind.CA_CERT, ConditionStatus.TRUE),
        (ProblemKind.FORBIDDEN, ConditionStatus.UNKNOWN),
        (ProblemKind.ADMISSION, ConditionStatus.TRUE),
    ],
)
def test_operator_problems_fail_with_their_reason(kind: ProblemKind, token_status: ConditionStatus) -> None:
    facts = replace(FACTS, problem=Problem(kind, "SomethingMissing", "what is wrong", "how to fix"))

    status = compute_status(facts, CONNECTED, None, T0)  # a stale snapshot is ignored

    assert status.phase is Phase.FAILED
    assert status.last_error is not None
    assert status.last_error.reason == "SomethingMissing"
    assert cond(status, ConditionType.READY) == (ConditionStatus.FALSE, "SomethingMissing")
    assert cond(status, ConditionType.STALLED) == (ConditionStatus.TRUE, "SomethingMissing")
    assert cond(status, ConditionType.RECONCILING)[0] is ConditionStatus.FALSE
    stalled = status.condition(ConditionType.STALLED)
    assert stalled is not None
    assert "how to fix" in stalled.message
    assert cond(status, ConditionType.TOKEN_AVAILABLE)[0] is token_status
    assert status.connected_since is None
    assert status.tunnels_summary == "0 idle/0 active"
    assert status.agent_id is None


def test_suspended_ignores_the_draining_worker_and_keeps_learnt_facts() -> None:
    connected = compute_status(FACTS, CONNECTED, None, T0)
    facts = replace(FACTS, suspended=True)

    status = compute_status(facts, replace(CONNECTED, phase=WorkerPhase.SUSPENDED), connected, T1)

    assert status.phase is Phase.SUSPENDED
    assert cond(status, ConditionType.CONNECTED) == (ConditionStatus.FALSE, "Suspended")
    assert cond(status, ConditionType.REGISTERED) == (ConditionStatus.UNKNOWN, "NotRunning")
    assert status.last_error is None
    assert status.connected_since is None
    assert (status.agent_id, status.kas_version) == (42, KAS)  # still useful in `kubectl get gla`
    assert [e.reason for e in transition_events(connected, status, facts)] == ["Disconnected"]


def test_a_draining_worker_without_suspend_is_connecting() -> None:
    assert phase_of(FACTS, replace(CONNECTED, phase=WorkerPhase.SUSPENDED)) is Phase.CONNECTING


def test_learnt_facts_survive_a_reconnect() -> None:
    connected = compute_status(FACTS, CONNECTED, None, T0)
    fresh = WorkerSnapshot(id="ns/a", phase=WorkerPhase.CONNECTING)
    status = compute_status(FACTS, fresh, connected, T1)
    assert (status.agent_id, status.config_commit, status.kas_version) == (42, "abc123", KAS)
    assert status.phase is Phase.CONNECTING


def test_insecure_skip_tls_verify_is_loud() -> None:
    facts = replace(FACTS, insecure_skip_tls_verify=True)
    status = compute_status(facts, CONNECTED, None, T0)

    for type_ in (ConditionType.READY, ConditionType.CONNECTED):
        c = status.condition(type_)
        assert c is not None
        assert INSECURE_WARNING in c.message
    events = transition_events(None, status, facts)
    assert [(e.type, e.reason) for e in events] == [
        ("Normal", "Connected"),
        ("Warning", "InsecureSkipTLSVerify"),
    ]


def test_connect_and_disconnect_events() -> None:
    connecting = compute_status(FACTS, None, None, T0)
    connected = compute_status(FACTS, CONNECTED, connecting, T0)
    lost = compute_status(
        FACTS,
        WorkerSnapshot(
            id="ns/a",
            phase=WorkerPhase.FAILED,
            last_error=WorkerError(ErrorReason.UNAUTHENTICATED, "Register: UNAUTHENTICATED", "new token"),
        ),
        connected,
        T1,
    )

    up = transition_events(connecting, connected, FACTS)
    assert [(e.type, e.reason) for e in up] == [("Normal", "Connected")]
    assert "42" in up[0].message
    assert KAS in up[0].message
    down = transition_events(connected, lost, FACTS)
    assert [(e.type, e.reason) for e in down] == [("Warning", "Disconnected")]
    assert "Unauthenticated" in down[0].message
    assert transition_events(connected, connected, FACTS) == []


def test_missing_trailing_slash_hint_for_self_managed_wss() -> None:
    facts = replace(FACTS, kas_address="wss://gitlab.example.com/-/kubernetes-agent")
    snapshot = WorkerSnapshot(
        id="ns/a",
        phase=WorkerPhase.FAILED,
        last_error=WorkerError(ErrorReason.WEBSOCKET_HANDSHAKE, "handshake: 404", "check the address"),
    )
    status = compute_status(facts, snapshot, None, T0)
    assert status.last_error is not None
    assert "wss://gitlab.example.com/-/kubernetes-agent/" in status.last_error.hint
    assert "check the address" in status.last_error.hint


def test_status_round_trips_through_the_resource() -> None:
    status = compute_status(FACTS, CONNECTED, None, T0)
    stored = GitLabAgentStatus.model_validate(status.to_dict())
    assert stored == status
    assert compute_status(FACTS, CONNECTED, stored, T1) == stored


def test_long_messages_are_cut() -> None:
    snapshot = WorkerSnapshot(
        id="ns/a", phase=WorkerPhase.CONNECTING, last_error=WorkerError(ErrorReason.INTERNAL, "x" * 50_000)
    )
    status = compute_status(FACTS, snapshot, None, T0)
    assert status.last_error is not None
    assert len(status.last_error.message) <= 4096
    assert all(len(c.message) <= 4096 for c in status.conditions)


@pytest.mark.parametrize(
    "stored",
    [
        f"{TOKEN} {TOKEN}",  # whitespace inside
        f"{TOKEN}\x00",  # a control character
        f"{TOKEN}\n\n",  # more than the one trailing newline
        f"{TOKEN}\udcff",  # not UTF-8 once encoded
    ],
    ids=["inner-space", "nul", "extra-newline", "not-utf8"],
)
def test_the_token_never_reaches_the_status(stored: str) -> None:
    """A Secret holding a token the operator refuses: the Problem the controller builds from it, the
    status and the Events show why, never the value."""
    key = AgentKey("ns", "a")
    agent = GitLabAgentSpec.model_validate(
        {"kasAddress": "wss://kas.example.com", "tokenSecretRef": {"name": "tok"}}
    )
    data = base64.b64encode(stored.encode("utf-8", "surrogateescape")).decode()
    secret = {
        "metadata": {"name": "tok", "namespace": "ns", "annotations": {"agentk.dev/allowed-agents": "a"}},
        "data": {"token": data},
    }
    missing = token_from_secret(secret, key, agent)
    assert isinstance(missing, Missing), "the test needs a token the operator refuses"
    facts = replace(FACTS, problem=Problem(ProblemKind.TOKEN, missing.reason, missing.message, missing.hint))
    before = compute_status(FACTS, CONNECTED, None, T0)
    status = compute_status(facts, None, before, T1)
    assert status.phase is Phase.FAILED
    rendered = str(status.to_dict()) + str(status.to_merge_patch())
    rendered += str(transition_events(before, status, facts))
    assert missing.reason in rendered
    assert "q" * 40 not in rendered


def test_a_missing_service_account_degrades_a_connected_agent_with_a_hint_and_an_event() -> None:
    """Issue 17: the agent showed Connected while every request through it was forbidden."""
    missing = replace(FACTS, service_account_found=False)

    status = compute_status(missing, CONNECTED, None, T0)

    assert status.phase is Phase.DEGRADED
    assert cond(status, ConditionType.CONNECTED) == (ConditionStatus.TRUE, "Connected")
    assert cond(status, ConditionType.READY) == (ConditionStatus.FALSE, "ServiceAccountNotFound")
    found = status.condition(ConditionType.SERVICE_ACCOUNT_FOUND)
    assert found is not None
    assert (found.status, found.reason) == (ConditionStatus.FALSE, "ServiceAccountNotFound")
    assert "ServiceAccount ns/agent" in found.message
    assert "kubectl create serviceaccount agent -n ns" in found.message
    before = compute_status(FACTS, CONNECTED, None, T0)
    assert [e.reason for e in transition_events(before, status, missing)] == ["ServiceAccountNotFound"]
    assert transition_events(status, status, missing) == []

    back = compute_status(FACTS, CONNECTED, status, T1)  # it was created: cleared
    assert back.phase is Phase.CONNECTED
    assert cond(back, ConditionType.SERVICE_ACCOUNT_FOUND) == (ConditionStatus.TRUE, "ServiceAccountFound")


def test_service_account_unknown_until_the_operator_could_list_them() -> None:
    status = compute_status(replace(FACTS, service_account_found=None), CONNECTED, None, T0)

    assert status.phase is Phase.CONNECTED
    assert cond(status, ConditionType.SERVICE_ACCOUNT_FOUND) == (ConditionStatus.UNKNOWN, "NotChecked")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (FluxState.WATCHING, ConditionStatus.TRUE),
        (FluxState.STANDBY, ConditionStatus.TRUE),
        (FluxState.NO_GITREPOSITORIES, ConditionStatus.TRUE),
        (FluxState.WAITING, ConditionStatus.UNKNOWN),
        (FluxState.FLUX_NOT_INSTALLED, ConditionStatus.FALSE),
        (FluxState.NOT_SERVED, ConditionStatus.FALSE),
        (FluxState.STREAM_FAILED, ConditionStatus.FALSE),
        (FluxState.LEASE_FAILED, ConditionStatus.FALSE),
        (FluxState.LIST_FAILED, ConditionStatus.FALSE),
        (FluxState.NO_GITLAB_URL, ConditionStatus.FALSE),
        (FluxState.DISABLED, ConditionStatus.FALSE),
    ],
)
def test_the_flux_condition_follows_the_module_and_never_the_phase(
    state: FluxState, expected: ConditionStatus
) -> None:
    flux = FluxStatus(
        state, "what the module says", watched=4, projects=2, triggered=7, failed=1, last_trigger=T0
    )
    status = compute_status(FACTS, replace(CONNECTED, flux=flux), None, T0)

    condition = status.condition(ConditionType.FLUX)
    assert condition is not None
    assert (condition.status, condition.reason, condition.message) == (
        expected,
        state.value,
        "what the module says",
    )
    assert status.phase is Phase.CONNECTED
    assert cond(status, ConditionType.READY)[0] is ConditionStatus.TRUE
    assert status.flux is not None
    assert status.flux.model_dump(by_alias=True, mode="json", exclude={"last_trigger_time"}) == {
        "state": state.value,
        "watchedGitRepositories": 4,
        "projects": 2,
        "triggeredReconciles": 7,
        "failedReconciles": 1,
    }
    assert status.flux.last_trigger_time == T0


def test_a_stopped_agent_shows_no_flux_facts() -> None:
    status = compute_status(replace(FACTS, suspended=True), CONNECTED, None, T0)

    assert status.flux is None
    assert cond(status, ConditionType.FLUX) == (ConditionStatus.UNKNOWN, "NotRunning")
