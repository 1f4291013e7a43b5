"""ci_jobs/users access config, ci_access/user_access decisions and impersonation (§9.3, §10.3-§10.5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from agent_proto.gitlab.agent.agentcfg.agentcfg_pb2 import ConfigurationFile
from kas.agents import AgentInfo
from kas.k8s_proxy.access import AccessConfigError, CiJob, UserToken, load_access_config, parse_access_config
from kas.k8s_proxy.authorize import authorize_ci_job, authorize_user
from kas.k8s_proxy.errors import ProxyError
from kas.k8s_proxy.rules import AccessRules, access_rules
from kas.secret import Secret, token_digest

AGENT = AgentInfo(id=42, name="agent", project_path="platform/agents", project_id=7)


def rules(document: dict[str, Any] | None) -> AccessRules:
    return access_rules(json_format.ParseDict(document or {}, ConfigurationFile()))


def job(**overrides: Any) -> CiJob:
    fields: dict[str, Any] = {
        "token": "t",
        "job_id": 1074,
        "pipeline_id": 55,
        "project": {"id": 21, "path": "group/sub/app"},
        "groups": [{"id": 3, "path": "group"}, {"id": 4, "path": "group/sub"}],
        "user": {"id": 9, "username": "alice"},
    }
    fields.update(overrides)
    return CiJob.model_validate(fields)


PRODUCTION = {"name": "production", "slug": "production", "tier": "production"}


# -- the agents file's ci_jobs/users sections -------------------------------------------------------


def test_tokens_are_kept_hashed_and_found_by_token() -> None:
    config = parse_access_config(
        {
            "agents": [{"id": 1}],  # kas.agents' section: not ours, ignored
            "ci_jobs": [job().model_dump() | {"token_sha256": token_digest("job-token")}],
            "users": [{"token": "pat-token", "user": {"id": 1, "username": "u"}}],
        }
    )

    assert config.find_job(Secret(b"job-token")) is not None
    assert config.find_job(Secret(b"other")) is None
    user = config.find_user(Secret(b"pat-token"))
    assert user is not None
    assert user.token_sha256 == token_digest("pat-token")
    assert "pat-token" not in repr(config)


def test_invalid_access_config_names_the_field_not_the_token() -> None:
    with pytest.raises(AccessConfigError) as caught:
        parse_access_config({"ci_jobs": [{"token": "leaky-token", "job_id": "not a number"}]})

    assert "ci_jobs.0.job_id" in str(caught.value)
    assert "leaky-token" not in str(caught.value)


def test_the_same_token_twice_is_rejected() -> None:
    user = {"token": "same", "user": {"id": 1, "username": "u"}}
    with pytest.raises(AccessConfigError, match="listed twice"):
        parse_access_config({"users": [user, user]})


# -- CI jobs ------------------------------------------------------------------------------------------


def test_config_project_jobs_are_admitted_implicitly_as_the_agent() -> None:
    grant = authorize_ci_job(AGENT, rules(None), job(project={"id": 7, "path": "platform/agents"}, groups=[]))

    assert grant.impersonation is None


def test_job_of_an_unlisted_project_is_forbidden() -> None:
    with pytest.raises(ProxyError) as caught:
        authorize_ci_job(AGENT, rules({"ci_access": {"projects": [{"id": "other/app"}]}}), job())

    assert (caught.value.code, caught.value.message) == (403, "Forbidden: agentId is not allowed")


def test_allowed_agent_ids_can_only_narrow_access() -> None:
    config = rules({"ci_access": {"projects": [{"id": "group/sub/app"}]}})

    with pytest.raises(ProxyError):
        authorize_ci_job(AGENT, config, job(allowed_agent_ids=[41]))
    assert authorize_ci_job(AGENT, config, job(allowed_agent_ids=[42])).impersonation is None


def test_project_entry_wins_over_group_entries() -> None:
    config = rules(
        {
            "ci_access": {
                "projects": [{"id": "group/sub/app", "default_namespace": "app"}],
                "groups": [{"id": "group", "access_as": {"ci_job": {}}}],
            }
        }
    )

    grant = authorize_ci_job(AGENT, config, job())

    assert (grant.impersonation, grant.default_namespace) == (None, "app")


def test_closest_group_entry_wins() -> None:
    config = rules(
        {
            "ci_access": {
                "groups": [
                    {"id": "group", "default_namespace": "outer"},
                    {"id": "group/sub", "default_namespace": "inner", "access_as": {"ci_job": {}}},
                ]
            }
        }
    )

    grant = authorize_ci_job(AGENT, config, job())

    assert grant.default_namespace == "inner"
    assert grant.impersonation is not None


def test_environments_restrict_entries() -> None:
    config = rules(
        {"ci_access": {"projects": [{"id": "group/sub/app", "environments": ["review/*", "staging"]}]}}
    )
    review = {"name": "review/feature-1", "slug": "review-feature-1", "tier": "development"}

    assert authorize_ci_job(AGENT, config, job(environment=review)).impersonation is None
    with pytest.raises(ProxyError):
        authorize_ci_job(AGENT, config, job(environment=PRODUCTION))
    with pytest.raises(ProxyError):
        authorize_ci_job(AGENT, config, job())  # no environment at all


def test_impersonate_copies_the_configured_identity() -> None:
    config = rules(
        {
            "ci_access": {
                "projects": [
                    {
                        "id": "group/sub/app",
                        "access_as": {
                            "impersonate": {
                                "username": "deployer",
                                "groups": ["deployers", "ops"],
                                "uid": "u-1",
                                "extra": [{"key": "team", "val": ["a", "b"]}],
                            }
                        },
                    }
                ]
            }
        }
    )

    imp = authorize_ci_job(AGENT, config, job()).impersonation

    assert imp is not None
    assert (imp.username, imp.groups, imp.uid, imp.extra) == (
        "deployer",
        ["deployers", "ops"],
        "u-1",
        {"team": ["a", "b"]},
    )


def test_ci_job_identity_in_gitlabs_exact_order() -> None:
    config = rules({"ci_access": {"groups": [{"id": "group", "access_as": {"ci_job": {}}}]}})

    imp = authorize_ci_job(AGENT, config, job(environment=PRODUCTION)).impersonation

    assert imp is not None
    assert imp.username == "gitlab:ci_job:1074"
    assert imp.groups == [
        "gitlab:ci_job",
        "gitlab:group:3",
        "gitlab:group_env_tier:3:production",
        "gitlab:group:4",
        "gitlab:group_env_tier:4:production",
        "gitlab:project:21",
        "gitlab:project_env:21:production",
        "gitlab:project_env_tier:21:production",
    ]
    assert imp.extra == {
        "agent.gitlab.com/id": ["42"],
        "agent.gitlab.com/config_project_id": ["7"],
        "agent.gitlab.com/project_id": ["21"],
        "agent.gitlab.com/ci_pipeline_id": ["55"],
        "agent.gitlab.com/ci_job_id": ["1074"],
        "agent.gitlab.com/username": ["alice"],
        "agent.gitlab.com/environment_slug": ["production"],
        "agent.gitlab.com/environment_tier": ["production"],
    }


def test_ci_job_identity_without_environment() -> None:
    config = rules({"ci_access": {"projects": [{"id": "group/sub/app", "access_as": {"ci_job": {}}}]}})

    imp = authorize_ci_job(AGENT, config, job(groups=[{"id": 3, "path": "group"}])).impersonation

    assert imp is not None
    assert imp.groups == ["gitlab:ci_job", "gitlab:group:3", "gitlab:project:21"]
    assert "agent.gitlab.com/environment_slug" not in imp.extra


# -- users (personal access tokens) -----------------------------------------------------------------


def user(**overrides: Any) -> UserToken:
    fields: dict[str, Any] = {
        "token": "p",
        "user": {"id": 9, "username": "alice"},
        "projects": [{"id": 21, "path": "group/sub/app", "roles": ["developer", "maintainer"]}],
        "groups": [
            {"id": 3, "path": "group", "roles": ["reporter"]},
            {"id": 4, "path": "group/sub", "roles": ["owner"]},
        ],
    }
    fields.update(overrides)
    return UserToken.model_validate(fields)


def test_user_as_user_gets_role_groups() -> None:
    config = rules(
        {
            "user_access": {
                "access_as": {"user": {}},
                "projects": [{"id": "group/sub/app"}],
                "groups": [{"id": "group"}, {"id": "group/sub"}],
            }
        }
    )

    imp = authorize_user(AGENT, config, user()).impersonation

    assert imp is not None
    assert imp.username == "gitlab:user:alice"
    # group 3 is named but alice is only a reporter there: Developer or more is needed
    assert imp.groups == [
        "gitlab:user",
        "gitlab:project_role:21:developer",
        "gitlab:project_role:21:maintainer",
        "gitlab:group_role:4:owner",
    ]
    assert imp.extra["agent.gitlab.com/access_type"] == ["personal_access_token"]
    assert imp.extra["agent.gitlab.com/config_project_id"] == ["7"]


def test_user_as_agent_has_no_impersonation() -> None:
    config = rules({"user_access": {"access_as": {"agent": {}}, "projects": [{"id": "group/sub/app"}]}})

    assert authorize_user(AGENT, config, user()).impersonation is None


@pytest.mark.parametrize(
    "document",
    [
        None,  # no user_access at all
        {"user_access": {"access_as": {"agent": {}}, "projects": [{"id": "elsewhere"}]}},
        {"user_access": {"access_as": {"agent": {}}, "groups": [{"id": "group"}]}},  # only a reporter there
    ],
)
def test_unauthorized_users_get_401(document: dict[str, Any] | None) -> None:
    with pytest.raises(ProxyError) as caught:
        authorize_user(AGENT, rules(document), user())

    assert caught.value.code == 401


def test_access_config_is_read_from_the_agents_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text("agents: []\nusers:\n  - token: pat\n    user: {id: 1, username: u}\n")
    assert load_access_config(path).find_user(Secret(b"pat")) is not None

    path.write_text("users: [token: 'secret-in-a-broken-line\n")
    with pytest.raises(AccessConfigError) as caught:
        load_access_config(path)
    assert "secret" not in str(caught.value)
