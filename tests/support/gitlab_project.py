"""A GitLab project in a box: a real bare Git repository, served as GitLab serves it, and pushes as Rails
reports them.

- to GitLab's kas through the Gitaly stand-in (tests/support/gitaly.py), registered in the internal-API
  stand-in so that `agent_info` of the project's agents names it (tests/support/gitlab_api.py);
- to any other Git client over smart HTTP (tests/support/git_http.py: Flux's source-controller, git);
- `push(files, message)` commits in a work clone, updates the branch of the bare repository and sends
  `Notifications/GitPushEvent` to every kas added with `notify`, as GitLab Rails does after a push
  (PROTOCOL.md §17.1: HS256 JWT signed with the kas shared secret, `aud` gitlab-kas).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kas.push_client import send_git_push_event_sync
from tests.support.git_http import GitHttpServer, git
from tests.support.gitaly import GitalyStandIn
from tests.support.gitlab_api import Agent, GitalyProject, GitLabApi
from tests.support.process import StartStop

STORAGE: Final = "default"


def agent_config_path(agent_name: str) -> str:
    """Where kas reads an agent's configuration file in its configuration project."""
    return f".gitlab/agents/{agent_name}/config.yaml"


@dataclass(frozen=True)
class Push:
    """One push: the new head commit, and when (time.monotonic()) the branch moved and kas was told."""

    commit: str
    pushed_at: float
    notified_at: float


@dataclass(frozen=True)
class KasApi:
    """A kas API listener that hears about pushes: host:port and the shared secret file it checks."""

    address: str
    secret_file: Path


class GitLabProject(StartStop):
    """One project (`project_id`, `full_path`) with its repository; `start()` serves it."""

    def __init__(
        self,
        work_dir: Path,
        *,
        project_id: int,
        full_path: str,
        branch: str = "main",
        gitaly_token: str = "",
        gitaly_features: Mapping[str, str] | None = None,
    ) -> None:
        self.project_id = project_id
        self.full_path = full_path
        self.branch = branch
        self.relative_path = f"@hashed/project-{project_id}.git"
        self.http = GitHttpServer(work_dir / "repositories")
        self.gitaly = GitalyStandIn(token=gitaly_token)
        self._features = dict(gitaly_features or {})
        self.bare = self.http.create_repository(f"{full_path}.git", branch=branch)
        self.gitaly.add_repository(STORAGE, self.relative_path, self.bare)
        self.clone = work_dir / "clone"
        git("init", "--quiet", f"--initial-branch={branch}", str(self.clone))
        git("remote", "add", "origin", str(self.bare), cwd=self.clone)
        self._kas: list[KasApi] = []
        self.pushes: list[Push] = []

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.http.start()
        self.gitaly.start()

    def stop(self) -> None:
        self.gitaly.stop()
        self.http.stop()

    # --- wiring -----------------------------------------------------------------------------------

    @property
    def gitaly_project(self) -> GitalyProject:
        """What agent_info says about this project's repository."""
        return GitalyProject(
            address=self.gitaly.address,
            full_path=self.full_path,
            storage_name=STORAGE,
            relative_path=self.relative_path,
            token=self.gitaly.token,
            features=self._features,
            default_branch=self.branch,
        )

    def register(self, api: GitLabApi, *agents: Agent) -> None:
        """Make `api` ("Rails") point the project's agents at this repository; `agents` are added too
        (their project_id and project_path must be this project's)."""
        for agent in agents:
            if (agent.project_id, agent.project_path) != (self.project_id, self.full_path):
                raise ValueError(f"agent {agent.name} belongs to project {agent.project_path}")
            api.add_agent(agent)
        api.serve_project(self.project_id, self.gitaly_project)

    def notify(self, api_address: str, secret_file: Path) -> None:
        """Send every later push event to this kas API listener (GitLab's kas: its `api` port)."""
        self._kas.append(KasApi(api_address, secret_file))

    @property
    def clone_url(self) -> str:
        """Smart-HTTP URL of the repository (the server must be started)."""
        return self.http.url(f"{self.full_path}.git")

    # --- pushing ----------------------------------------------------------------------------------

    def push(self, files: Mapping[str, str | None], message: str) -> str:
        """Commit `files` (path -> content; None deletes it) on the branch, push, tell every kas.

        Returns the new commit id. The event goes out after the branch moved, as Rails sends it from a
        job that runs after the push."""
        self.write(files)
        git("add", "--all", cwd=self.clone)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.clone)
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.clone)
        commit = git("rev-parse", "HEAD", cwd=self.clone)
        pushed_at = time.monotonic()
        self.notify_push()
        self.pushes.append(Push(commit, pushed_at, time.monotonic()))
        return commit

    def write(self, files: Mapping[str, str | None]) -> None:
        for name, text in files.items():
            target = self.clone / name
            if text is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)

    def notify_push(self) -> None:
        """`GitPushEvent` for this project to every kas, as Rails' NotifyGitPushWorker sends it."""
        for kas in self._kas:
            send_git_push_event_sync(kas.address, kas.secret_file, self.project_id, self.full_path)

    def head(self) -> str:
        """The commit the branch of the bare repository points at."""
        return git("rev-parse", f"refs/heads/{self.branch}", cwd=self.bare)
