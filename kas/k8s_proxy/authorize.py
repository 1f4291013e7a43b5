"""Does this CI job or user may use this agent, and as whom (PROTOCOL.md §10.3-§10.5)?

CI jobs: an explicit `ci_access.projects` entry for the job's project wins; else the most specific
`ci_access.groups` entry naming one of the project's groups; else the agent's own configuration project
is admitted implicitly with the agent's identity. Entries with `environments` admit only jobs whose
environment matches. `allowed_agent_ids` in the job's entry can only narrow this down.

Users: `user_access` must name a project or group the user is a member of with at least the Developer
role. GitLab answers every refusal there with 401 "Unauthorized", and so does this proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent_proto.flavor import ImpersonationConfig
from kas.agents import AgentInfo
from kas.k8s_proxy import impersonation
from kas.k8s_proxy.access import CiJob, RoleMembership, UserToken
from kas.k8s_proxy.errors import ProxyError
from kas.k8s_proxy.rules import AccessRules, CiAccessAs, CiAccessEntry

# Roles that GitLab lets through user_access (Developer and above).
_USER_ACCESS_ROLES: Final = frozenset({"developer", "maintainer", "owner"})


@dataclass(frozen=True)
class AccessGrant:
    """The outcome of a successful authorization."""

    impersonation: ImpersonationConfig | None
    """None = the agent's own identity (no HeaderExtra; client Impersonate-* headers pass through)."""
    default_namespace: str = ""


def authorize_ci_job(agent: AgentInfo, rules: AccessRules, job: CiJob) -> AccessGrant:
    """The grant for `job` on `agent`, or ProxyError(403) "agentId is not allowed"."""
    if job.allowed_agent_ids is not None and agent.id not in job.allowed_agent_ids:
        raise ProxyError.forbidden("agentId is not allowed")
    entry = _ci_entry(agent, rules, job)
    if entry is None:
        if _is_config_project(agent, job):
            return AccessGrant(None)
        raise ProxyError.forbidden("agentId is not allowed")
    mode = entry.mode
    if mode is CiAccessAs.IMPERSONATE and entry.access_as and entry.access_as.impersonate:
        return AccessGrant(impersonation.configured(entry.access_as.impersonate), entry.default_namespace)
    if mode is CiAccessAs.CI_JOB:
        return AccessGrant(impersonation.for_ci_job(agent, job), entry.default_namespace)
    return AccessGrant(None, entry.default_namespace)


def _ci_entry(agent: AgentInfo, rules: AccessRules, job: CiJob) -> CiAccessEntry | None:
    ci_access = rules.ci_access
    if ci_access is None:
        return None
    env_name = job.environment.match_name if job.environment is not None else None
    for entry in ci_access.projects:
        if entry.id == job.project.path and entry.admits_environment(env_name):
            return entry
    group_paths = {g.path for g in job.groups}
    candidates = [
        entry
        for entry in ci_access.groups
        if (entry.id in group_paths or job.project.path.startswith(entry.id + "/"))
        and entry.admits_environment(env_name)
    ]
    # the closest ancestor group (longest path) is the most specific authorization
    return max(candidates, key=lambda e: len(e.id), default=None)


def _is_config_project(agent: AgentInfo, job: CiJob) -> bool:
    if agent.project_id and job.project.id == agent.project_id:
        return True
    return job.project.path == agent.project_path


def authorize_user(agent: AgentInfo, rules: AccessRules, user: UserToken) -> AccessGrant:
    """The grant for a personal access token's user on `agent`, or ProxyError(401)."""
    user_access = rules.user_access
    if user_access is None:
        raise ProxyError.unauthorized("user access is not configured for this agent")
    if user.allowed_agent_ids is not None and agent.id not in user.allowed_agent_ids:
        raise ProxyError.unauthorized("agentId is not allowed")
    projects = _developer_of(user.projects, user_access.project_paths)
    groups = _developer_of(user.groups, user_access.group_paths)
    if not projects and not groups:
        raise ProxyError.unauthorized("user is not authorized to use this agent")
    if not user_access.as_user:
        return AccessGrant(None)
    return AccessGrant(impersonation.for_user(agent, user, projects, groups))


def _developer_of(memberships: list[RoleMembership], authorized_paths: frozenset[str]) -> list[int]:
    return [
        m.id for m in memberships if m.path in authorized_paths and _USER_ACCESS_ROLES.intersection(m.roles)
    ]
