"""The ways a GitLab client reaches the cluster through kas (CI job tokens with each `access_as`, a
personal access token), and whom the API server must see for each. Shared by the interop tests of our
runtime and of the operator."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from tests.interop.conftest import AGENT
from tests.interop.helpers import AGENT_SA, Identity
from tests.support.gitlab_api import AccessAs, CiJob, GitLabApi, PatUser

JOB_ID, PROJECT_ID, GROUP_ID, PIPELINE_ID = 100, 3, 20, 50
IMPERSONATE = {
    "username": "gitlab:deployer",
    "groups": ["gitlab:deployers"],
    "extra": [{"key": "example.com/team", "val": ["payments"]}],
}
TEAM_EXTRA = "example.com/team"
"""The one extra key of IMPERSONATE: not among those kas sends, so the operator's role is extended."""


@dataclass(frozen=True)
class Mode:
    """One way a GitLab client reaches the cluster through kas: its `access_as`, and whom RBAC sees."""

    access_as: AccessAs
    identity: Identity
    pat: bool = False


def _ci_extra(**values: str) -> dict[str, list[str]]:
    return {f"agent.gitlab.com/{k}": [v] for k, v in values.items()}


MODES: Mapping[str, Mode] = {
    "agent": Mode(
        {"agent": {}},
        Identity(
            f"system:serviceaccount:{{ns}}:{AGENT_SA}",
            frozenset({"system:serviceaccounts", "system:serviceaccounts:{ns}"}),
        ),
    ),
    "ci_job": Mode(
        {"ci_job": {}},
        Identity(
            f"gitlab:ci_job:{JOB_ID}",
            frozenset({"gitlab:ci_job", f"gitlab:group:{GROUP_ID}", f"gitlab:project:{PROJECT_ID}"}),
            _ci_extra(id=str(AGENT.id), ci_job_id=str(JOB_ID), ci_pipeline_id=str(PIPELINE_ID)),
        ),
    ),
    "impersonate": Mode(
        {"impersonate": IMPERSONATE},
        Identity("gitlab:deployer", frozenset({"gitlab:deployers"}), {"example.com/team": ["payments"]}),
    ),
    "pat_user": Mode(
        {"user": {"projects": [{"id": PROJECT_ID, "roles": ["developer"]}]}},
        Identity(
            "gitlab:user:interop-pat-user",
            frozenset({"gitlab:user", f"gitlab:project_role:{PROJECT_ID}:developer"}),
            _ci_extra(id=str(AGENT.id), access_type="personal_access_token"),
        ),
        pat=True,
    ),
}
VIEWERS = ("gitlab:ci_job:100", "gitlab:deployer", "gitlab:user:interop-pat-user")


def mode_bearer(api: GitLabApi, mode: Mode) -> str:
    """Register a CI job (or a PAT user) with this mode for AGENT; the bearer kas must be given."""
    token = secrets.token_hex(16)
    if mode.pat:
        api.add_user(PatUser(pat=token, agents={AGENT.id: mode.access_as}))
        return f"pat:{AGENT.id}:{token}"
    api.add_job(
        CiJob(
            token=token,
            agents={AGENT.id: mode.access_as},
            job_id=JOB_ID,
            pipeline_id=PIPELINE_ID,
            project_id=PROJECT_ID,
            group_ids=(GROUP_ID,),
        )
    )
    return f"ci:{AGENT.id}:{token}"
