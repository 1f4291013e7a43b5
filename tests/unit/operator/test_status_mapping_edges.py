"""Edges of the status mapping that mutation testing found untested (docs/testing.md): message lengths,
the ws path hint, what is learnt from the snapshot versus the facts, and the text of conditions/Events."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent_operator.api import ConditionType, GitLabAgentStatus
from agent_operator.status_mapping import compute_status, refine_error, transition_events
from agent_runtime.spec import ErrorReason, WorkerError, WorkerSnapshot
from agent_runtime.spec import Phase as WorkerPhase
from tests.unit.operator.test_status_mapping import CONNECTED, FACTS, KAS, T0, T1


def message(status: GitLabAgentStatus, type_: ConditionType) -> str:
    found = status.condition(type_)
    assert found is not None, type_
    return found.message


@pytest.mark.parametrize(("length", "kept"), [(4096, 4096), (4097, 4096)])
def test_messages_are_cut_at_4096_characters_with_an_ellipsis(length: int, kept: int) -> None:
    snapshot = WorkerSnapshot(
        id="ns/a", phase=WorkerPhase.CONNECTING, last_error=WorkerError(ErrorReason.INTERNAL, "x" * length)
    )
    last_error = compute_status(FACTS, snapshot, None, T0).last_error
    assert last_error is not None
    assert len(last_error.message) == kept
    assert last_error.message.endswith("..." if length > kept else "x")


HANDSHAKE = WorkerError(ErrorReason.WEBSOCKET_HANDSHAKE, "HTTP 404")


@pytest.mark.parametrize(
    ("address", "hinted"),
    [
        ("wss://gitlab.example.com/-/kubernetes-agent", True),
        ("ws://gitlab.example.com/-/kubernetes-agent", True),
        ("wss://gitlab.example.com/-/kubernetes-agent/", False),  # the slash is there
        ("wss://kas.example.com", False),  # no path at all
        ("grpcs://gitlab.example.com/-/kubernetes-agent", False),  # not a WebSocket address
    ],
)
def test_the_trailing_slash_hint_is_given_only_for_a_ws_path_without_it(address: str, hinted: bool) -> None:
    refined = refine_error(HANDSHAKE, address)
    assert ("ending with a slash" in refined.hint) is hinted
    assert (refined == HANDSHAKE) is not hinted


def test_a_reason_that_is_no_handshake_gets_no_path_hint() -> None:
    error = WorkerError(ErrorReason.KAS_UNREACHABLE, "refused")
    assert refine_error(error, "wss://gitlab.example.com/-/kubernetes-agent") == error


def test_versions_come_from_the_worker_when_it_knows_them_else_from_the_facts() -> None:
    told = replace(CONNECTED, agent_version="v17.1.0", kubernetes_version="v1.35.9")
    status = compute_status(FACTS, told, None, T0)
    assert (status.agent_version, status.kubernetes_version) == ("v17.1.0", "v1.35.9")
    untold = replace(CONNECTED, kubernetes_version="")
    assert compute_status(FACTS, untold, None, T0).kubernetes_version == FACTS.cluster_version


def test_connected_since_only_while_connected() -> None:
    reconnecting = replace(CONNECTED, phase=WorkerPhase.CONNECTING)
    assert compute_status(FACTS, reconnecting, None, T0).connected_since is None
    assert compute_status(FACTS, CONNECTED, None, T0).connected_since == CONNECTED.connected_since


def test_ready_names_a_kas_outside_the_skew_policy_and_only_then() -> None:
    assert "skew policy" not in message(compute_status(FACTS, CONNECTED, None, T0), ConditionType.READY)
    far = replace(CONNECTED, kas_version="v99.0.0")
    ready = message(compute_status(FACTS, far, None, T0), ConditionType.READY)
    assert "kas is outside GitLab's version skew policy: see VersionCompatible." in ready


def test_condition_texts_name_kas_version_and_configuration_commit() -> None:
    status = compute_status(FACTS, CONNECTED, None, T0)
    assert message(status, ConditionType.CONNECTED).startswith(f"connected to kas {KAS}.")
    assert (
        message(status, ConditionType.CONFIGURATION_RECEIVED)
        == "kas sent the agent configuration (commit abc123)"
    )
    untold = replace(CONNECTED, kas_version="", config_commit="")
    status = compute_status(FACTS, untold, None, T0)
    assert message(status, ConditionType.CONNECTED).startswith("connected to kas.")
    assert message(status, ConditionType.CONFIGURATION_RECEIVED) == "kas sent the agent configuration"


def test_reconciling_says_connecting_without_an_error() -> None:
    connecting = WorkerSnapshot(id="ns/a", phase=WorkerPhase.CONNECTING)
    assert (
        message(compute_status(FACTS, connecting, None, T0), ConditionType.RECONCILING) == "connecting to kas"
    )


def test_an_unchecked_service_account_says_why() -> None:
    unlisted = replace(FACTS, service_account_found=None)
    assert "has not listed ServiceAccounts yet" in message(
        compute_status(unlisted, CONNECTED, None, T0), ConditionType.SERVICE_ACCOUNT_FOUND
    )
    unread = replace(unlisted, service_account="")
    assert message(compute_status(unread, CONNECTED, None, T0), ConditionType.SERVICE_ACCOUNT_FOUND) == (
        "the spec was not read"
    )


def test_the_missing_service_account_event_carries_the_conditions_text() -> None:
    missing = replace(FACTS, service_account_found=False)
    before = compute_status(FACTS, CONNECTED, None, T0)
    after = compute_status(missing, CONNECTED, before, T1)
    (event,) = transition_events(before, after, missing)
    assert event.message == message(after, ConditionType.SERVICE_ACCOUNT_FOUND)
