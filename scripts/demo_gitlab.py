"""`make demo KAS=gitlab`: the demo's GitLab side played by GitLab's own kas (scripts/gitlab-peers).

GitLab's kas needs what GitLab gives it: "Rails" (the internal-API stand-in, tests/support/gitlab_api.py,
which knows the agent, its token and the CI job), Redis, and the agent's configuration project in Gitaly
(tests/support/gitlab_project.py: a real bare repository holding `.gitlab/agents/<name>/config.yaml`,
served by the Gitaly stand-in; a push is reported to kas as Rails reports it). kas then sends the
configuration to the operator's worker, which learns the agent id from it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tests.support.gitlab_api import Agent, CiJob, GitLabApi
from tests.support.gitlab_kas import GitLabKas, GitLabPeersNotFoundError, find_gitlab_peers, make_kas_secrets
from tests.support.gitlab_project import GitLabProject, agent_config_path


@dataclass(frozen=True)
class GitLabSide:
    """What the demo needs from GitLab: where agents dial, where CI jobs go, and the project to push to."""

    kas: GitLabKas
    project: GitLabProject
    agent: Agent
    job_token_file: Path

    @property
    def agent_address(self) -> str:
        return self.kas.ws_url

    @property
    def proxy_url(self) -> str:
        return self.kas.proxy_url + "/"

    @property
    def ca_file(self) -> Path:
        return self.kas.secrets.ca

    @property
    def config_path(self) -> str:
        return agent_config_path(self.agent.name)


def start_gitlab(
    stack: ExitStack, work: Path, redis_port: int, *, agent_id: int, agent_name: str, project_path: str
) -> GitLabSide:
    """Rails stand-in, the configuration project (Gitaly stand-in) and GitLab's kas, stopped with `stack`."""
    try:
        peers = find_gitlab_peers()
    except GitLabPeersNotFoundError as err:
        raise SystemExit(f"{err}; then run make demo KAS=gitlab again") from None
    secrets_ = make_kas_secrets(work / "gitlab-secrets")
    agent = Agent(
        id=agent_id,
        name=agent_name,
        token=secrets.token_urlsafe(40),
        project_id=7,
        project_path=project_path,
    )
    (work / "agent-token").write_text(agent.token)
    job_token = secrets.token_urlsafe(24)
    job_token_file = work / "job-token"
    job_token_file.write_text(job_token)

    api = GitLabApi(secrets_.gitlab_secret)
    # The CI job of the demo's project may use the agent, as the agent itself (no impersonation).
    api.add_job(CiJob(token=job_token, agents={agent.id: {}}, project_id=agent.project_id))
    api.start()
    stack.callback(api.stop)

    project = GitLabProject(work / "project", project_id=agent.project_id, full_path=project_path)
    project.start()
    stack.callback(project.stop)
    config = f"ci_access:\n  projects:\n    - id: {project_path}\n"
    project.push({agent_config_path(agent.name): config}, "Register the agent")
    project.register(api, agent)

    kas = GitLabKas(
        peers.kas,
        work / "gitlab-kas",
        gitlab_url=api.url,
        secrets=secrets_,
        redis_port=redis_port,
        key_prefix="demo-gitlab-kas",
    )
    kas.start()
    stack.callback(kas.stop)
    project.notify(f"127.0.0.1:{kas.api_port}", secrets_.gitlab_secret)
    return GitLabSide(kas, project, agent, job_token_file)


def push_and_wait(side: GitLabSide, config_commit: Callable[[], str | None], timeout: float = 30.0) -> str:
    """Push a changed config.yaml; seconds until the GitLabAgent's status names the new commit."""
    began = time.monotonic()
    current = (side.project.clone / side.config_path).read_text()
    commit = side.project.push(
        {side.config_path: current + "observability:\n  logging:\n    level: debug\n"}, "Debug logging"
    )
    while time.monotonic() - began < timeout:
        if config_commit() == commit:
            return f"pushed {commit[:12]}; the GitLabAgent had it {time.monotonic() - began:.2f}s later"
        time.sleep(0.05)
    raise SystemExit(f"the pushed commit {commit} did not reach the GitLabAgent's status in {timeout:.0f}s")
