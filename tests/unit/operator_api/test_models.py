"""The pydantic models accept and refuse the same specs as the CRD, and serialize as the API expects."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from agent_operator.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    GitLabAgent,
    GitLabAgentSpec,
    GitLabAgentStatus,
    LastError,
    Phase,
    TunnelCounts,
    WireFlavor,
    tunnels_summary,
)
from tests.unit.operator_api.cases import INVALID, VALID, VALID_SPEC, Invalid


def _path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def test_defaults_match_agentk() -> None:
    spec = GitLabAgentSpec.model_validate(VALID_SPEC)
    assert spec.token_secret_ref.key == "token"
    assert spec.service_account_name == "default"
    assert (spec.tunnels.min_idle, spec.tunnels.max) == (2, 500)
    assert spec.wire_flavor is WireFlavor.GITLAB
    assert spec.suspend is False
    assert spec.insecure_skip_tls_verify is False
    assert spec.kas_headers == []
    assert spec.ca_cert is None
    assert spec.proxy is None


@pytest.mark.parametrize(("name", "raw"), VALID, ids=[name for name, _ in VALID])
def test_valid_specs_round_trip_through_camel_case(name: str, raw: dict[str, Any]) -> None:
    spec = GitLabAgentSpec.model_validate(raw)
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert GitLabAgentSpec.model_validate(dumped) == spec
    for key, value in raw.items():
        assert dumped[key] == value or isinstance(value, dict), key


@pytest.mark.parametrize("case", [c for c in INVALID if c.model_too], ids=lambda c: c.id)
def test_invalid_specs_are_refused_at_the_same_field(case: Invalid) -> None:
    with pytest.raises(ValidationError) as caught:
        GitLabAgentSpec.model_validate(case.spec())
    errors = [(_path(error["loc"]), error["msg"]) for error in caught.value.errors()]
    # Field errors name the field; a cross-field rule is reported on the object that holds the field and
    # names the field in its message. Not any error under `spec`: that passed whatever went wrong.
    parent, _, leaf = case.field.rpartition(".")
    value = _value_at(case.spec(), case.field)
    named = [leaf.split("[")[0]] + ([str(value)] if value is not None else [])
    reported = [
        path == case.field or (path == parent and any(n in msg for n in named)) for path, msg in errors
    ]
    assert any(reported), (case.field, errors)


def _value_at(spec: dict[str, Any], field: str) -> Any:
    """The value a case puts at `field` (spec.a.b[0].c), or None where it sets none."""
    value: Any = spec
    for name, index in re.findall(r"\.(\w+)(?:\[(\d+)\])?", field.removeprefix("spec")):
        value = value.get(name) if isinstance(value, dict) else None
        if index and isinstance(value, list):
            value = value[int(index)]
    return value


def test_the_full_resource_parses_and_renders_as_a_manifest() -> None:
    agent = GitLabAgent.model_validate(
        {
            "apiVersion": "agentk.dev/v1alpha1",
            "kind": "GitLabAgent",
            "metadata": {"name": "a", "namespace": "n", "generation": 3},
            "spec": VALID_SPEC,
            "status": {"phase": "Connected", "agentId": 42, "tunnels": {"idle": 2, "active": 1}},
        }
    )
    assert agent.status is not None
    assert agent.status.phase is Phase.CONNECTED
    manifest = agent.to_manifest()
    assert manifest["apiVersion"] == "agentk.dev/v1alpha1"
    assert manifest["spec"]["tokenSecretRef"] == {"name": "agent-token", "key": "token"}
    assert manifest["status"]["tunnels"] == {"idle": 2, "active": 1}


def test_status_serializes_timestamps_as_kubernetes_does() -> None:
    moment = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    condition = Condition(
        type=ConditionType.READY,
        status=ConditionStatus.TRUE,
        reason="Connected",
        message="",
        last_transition_time=moment,
    )
    naive = datetime(2024, 5, 1, 12, 0)  # taken as UTC
    status = GitLabAgentStatus(conditions=[condition], connected_since=naive)
    stored = status.to_dict()
    assert stored["conditions"][0]["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    assert stored["connectedSince"] == "2024-05-01T12:00:00Z"
    assert GitLabAgentStatus.model_validate(stored).conditions[0].last_transition_time == datetime(
        2024, 5, 1, 12, tzinfo=UTC
    )


def test_merge_patch_clears_what_is_unset() -> None:
    healthy = GitLabAgentStatus(
        phase=Phase.CONNECTED,
        tunnels=TunnelCounts(idle=2, active=0),
        tunnels_summary=tunnels_summary(2, 0),
        conditions=[
            Condition(
                type="Ready",
                status=ConditionStatus.TRUE,
                reason="Connected",
                message="",
                last_transition_time=datetime.now(UTC),
            )
        ],
    )
    patch = healthy.to_merge_patch()
    assert patch["lastError"] is None, "a recovered agent must lose its stale lastError"
    assert patch["tunnelsSummary"] == "2 idle/0 active"
    assert "observedGeneration" not in patch["conditions"][0], "list items carry no nulls"
    assert "lastError" not in healthy.to_dict()


def test_condition_lookup() -> None:
    failing = GitLabAgentStatus(
        conditions=[
            Condition(
                type=ConditionType.TOKEN_AVAILABLE,
                status=ConditionStatus.FALSE,
                reason="SecretNotFound",
                message="Secret agent-token not found",
                last_transition_time=datetime.now(UTC),
            )
        ],
        last_error=LastError(reason="SecretNotFound", message="x", hint="create it"),
    )
    token = failing.condition(ConditionType.TOKEN_AVAILABLE)
    assert token is not None
    assert token.status is ConditionStatus.FALSE
    assert failing.condition(ConditionType.READY) is None


def test_condition_reason_must_be_camel_case() -> None:
    with pytest.raises(ValidationError):
        LastError(reason="not a reason", message="x")


def test_models_are_immutable() -> None:
    spec = GitLabAgentSpec.model_validate(VALID_SPEC)
    with pytest.raises(ValidationError):
        spec.suspend = True  # type: ignore[misc]
