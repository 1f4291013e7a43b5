"""The per-namespace budget flags (policy_flags.py) and the tenant of a GitLabAgent's worker (mapping.py)."""

from __future__ import annotations

import pytest

from agent_operator.api import GitLabAgentSpec
from agent_operator.mapping import AgentKey, worker_spec
from agent_operator.settings import UsageError, parse_settings
from agent_runtime.policy import TenantBudget
from agent_runtime.secret import Secret


def test_defaults_are_the_safe_ones() -> None:
    settings = parse_settings([], environ={})
    assert settings.policy.tenant_budget == TenantBudget()
    assert settings.policy.tenant_budget.max_inflight_requests == 200
    assert settings.policy.tenant_budget.max_buffered_bytes == 32 * 1024 * 1024


def test_flags_and_environment_set_the_tenant_budget() -> None:
    environ = {"GAO_MAX_BUFFERED_BYTES_PER_NAMESPACE": "4096"}
    settings = parse_settings(["--max-inflight-requests-per-namespace=12"], environ=environ)
    assert settings.policy.tenant_budget == TenantBudget(max_inflight_requests=12, max_buffered_bytes=4096)


@pytest.mark.parametrize(
    "flag", ["--max-inflight-requests-per-namespace", "--max-buffered-bytes-per-namespace"]
)
@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_value_names_its_flag(flag: str, value: str) -> None:
    with pytest.raises(UsageError, match=flag):
        parse_settings([f"{flag}={value}"], environ={})


def test_the_worker_of_a_gitlab_agent_belongs_to_its_namespace() -> None:
    spec = GitLabAgentSpec.model_validate(
        {"kasAddress": "wss://kas.example.com", "tokenSecretRef": {"name": "t"}}
    )
    worker = worker_spec(AgentKey("team-a", "agent"), spec, Secret("glagent-" + "s" * 40), None)
    assert worker.tenant == "team-a"
