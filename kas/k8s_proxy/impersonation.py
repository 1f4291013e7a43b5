"""The identities kas asks the agent to impersonate for CI jobs and users (PROTOCOL.md §10.5)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent_proto.flavor import ImpersonationConfig
from kas.agents import AgentInfo
from kas.k8s_proxy.access import CiJob, UserToken
from kas.k8s_proxy.rules import ImpersonateAs

EXTRA_PREFIX = "agent.gitlab.com/"


def configured(spec: ImpersonateAs) -> ImpersonationConfig:
    """`access_as: {impersonate: {...}}`: copied from the agent's configuration."""
    return ImpersonationConfig(
        username=spec.username,
        groups=list(spec.groups),
        uid=spec.uid,
        extra=_merged((kv.key, kv.val) for kv in spec.extra),
    )


def for_ci_job(agent: AgentInfo, job: CiJob) -> ImpersonationConfig:
    """`access_as: {ci_job: {}}`: the job's own identity, with groups in GitLab's exact order."""
    env = job.environment
    project_id = job.project.id
    groups = ["gitlab:ci_job"]
    for group in job.groups:
        groups.append(f"gitlab:group:{group.id}")
        if env is not None:
            groups.append(f"gitlab:group_env_tier:{group.id}:{env.tier}")
    groups.append(f"gitlab:project:{project_id}")
    if env is not None:
        groups.append(f"gitlab:project_env:{project_id}:{env.slug}")
        groups.append(f"gitlab:project_env_tier:{project_id}:{env.tier}")
    extra = [
        ("id", str(agent.id)),
        ("config_project_id", str(agent.project_id)),
        ("project_id", str(project_id)),
        ("ci_pipeline_id", str(job.pipeline_id)),
        ("ci_job_id", str(job.job_id)),
        ("username", job.user.username),
    ]
    if env is not None:
        extra += [("environment_slug", env.slug), ("environment_tier", env.tier)]
    return ImpersonationConfig(
        username=f"gitlab:ci_job:{job.job_id}",
        groups=groups,
        extra={EXTRA_PREFIX + key: [value] for key, value in extra},
    )


def for_user(
    agent: AgentInfo, user: UserToken, projects: list[int], groups: list[int]
) -> ImpersonationConfig:
    """`user_access` with `access_as: {user: {}}`; `projects`/`groups` are the authorized memberships."""
    names = ["gitlab:user"]
    roles_by_project = {m.id: m.roles for m in user.projects}
    roles_by_group = {m.id: m.roles for m in user.groups}
    names += [f"gitlab:project_role:{pid}:{role}" for pid in projects for role in roles_by_project[pid]]
    names += [f"gitlab:group_role:{gid}:{role}" for gid in groups for role in roles_by_group[gid]]
    extra = [
        ("id", str(agent.id)),
        ("username", user.user.username),
        ("access_type", "personal_access_token"),
        ("config_project_id", str(agent.project_id)),
    ]
    return ImpersonationConfig(
        username=f"gitlab:user:{user.user.username}",
        groups=names,
        extra={EXTRA_PREFIX + key: [value] for key, value in extra},
    )


def _merged(pairs: Iterable[tuple[str, Sequence[str]]]) -> dict[str, list[str]]:
    """Extra key/values in order; a key given twice keeps all its values (as repeated headers would)."""
    merged: dict[str, list[str]] = {}
    for key, values in pairs:
        merged.setdefault(key, []).extend(values)
    return merged
