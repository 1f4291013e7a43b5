"""A stand-in for GitLab Rails' internal API, as GitLab's kas calls it (GITLAB-INTERNAL-API.md).

GitLab's kas asks "Rails" who an agent is (`agent_info`), which agents a CI job may use and as whom
(`job/allowed_agents`), what a user's personal access token may do (`authorize_proxy_user`), whether an
agent may see a pushed project (`verify_project_access`, asked by kas's Flux module before it forwards a
push to the agent's ReconcileProjects stream), and reports usage counters (`usage_metrics`). This server
answers those from data a test sets (agents with tokens, CI jobs, users with PATs, public projects) and
checks the JWT kas signs every call with (except `job/allowed_agents`, which carries the job token
instead). Rails' own policy evaluation (ci_access rules, environments, roles) is not modelled: a test
states the outcome, i.e. which agents a job or PAT may use and with which `access_as`.

The server runs on its own event loop in a thread, so that synchronous tests (the operator e2e harness)
and asynchronous ones (a Runtime on the test's loop) can both use it while kas calls it at any time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from kas import jwt
from tests.support.ports import free_port

API: Final = "/api/v4/internal/kubernetes"
JWT_HEADER: Final = "Gitlab-Kas-Api-Request"
JWT_ISSUER: Final = "gitlab-kas"
JWT_AUDIENCE: Final = "gitlab"
NO_GITALY: Final = "tcp://127.0.0.1:9"
"""Where agent_info says Gitaly is: the discard port, where nothing listens on loopback, so kas's
configuration poll fails fast and the agent gets no configuration (GITLAB-INTERNAL-API.md §5)."""

AccessAs = Mapping[str, Any]
"""An `access_as` object: `{"agent": {}}`, `{"ci_job": {}}`, `{"impersonate": {...}}` or, for a PAT,
`{"user": {"projects": [...], "groups": [...]}}`."""


@dataclass(frozen=True)
class Agent:
    """An agent registered in "GitLab": its id, name, token and configuration project."""

    id: int
    name: str
    token: str = field(repr=False)
    project_id: int = 2
    project_path: str = "interop/agent-config"


@dataclass(frozen=True)
class CiJob:
    """A running CI job: its token and, per agent id, the `ci_access` entry Rails would hand kas."""

    token: str = field(repr=False)
    agents: Mapping[int, AccessAs]
    """agent id → `access_as` (an empty mapping: none given, which kas treats as `agent`)."""
    job_id: int = 100
    pipeline_id: int = 50
    project_id: int = 3
    group_ids: Sequence[int] = (20,)
    user_id: int = 5
    username: str = "interop-user"
    default_namespace: str = ""
    environment: tuple[str, str] | None = None
    """(slug, tier) of the job's deployment environment, if any."""


@dataclass(frozen=True)
class PatUser:
    """A GitLab user with a personal access token, and per agent id the `access_as` kas gets."""

    pat: str = field(repr=False)
    agents: Mapping[int, AccessAs]
    user_id: int = 6
    username: str = "interop-pat-user"


@dataclass(frozen=True)
class GitalyProject:
    """Where "Gitaly" serves a project's repository: what agent_info answers for an agent of that project
    (tests/support/gitaly.py serves it, tests/support/gitlab_project.py sets it up)."""

    address: str
    """`gitaly_info.address`, e.g. tcp://127.0.0.1:<port>."""
    full_path: str
    """`gitaly_repository.gl_project_path`: kas matches push events by it."""
    storage_name: str = "default"
    relative_path: str = ""
    token: str = field(default="", repr=False)
    """`gitaly_info.token`: kas signs its Gitaly calls with it (empty: no auth)."""
    features: Mapping[str, str] = field(default_factory=dict)
    """`gitaly_info.features`: kas passes them to Gitaly as metadata."""
    default_branch: str = "main"


@dataclass(frozen=True)
class AccessCheck:
    """One verify_project_access question from kas: the agent, the project (`id` as sent), the verdict."""

    agent_id: int
    project: str
    allowed: bool


@dataclass(frozen=True)
class Call:
    """One request kas made: method, path (no query), the status answered, and when (monotonic)."""

    method: str
    path: str
    status: int
    at: float


def new_secret_text() -> str:
    """The content of a kas↔Rails secret file: base64 of 32 random bytes (kas insists on exactly 32)."""
    return base64.b64encode(secrets.token_bytes(32)).decode() + "\n"


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"message": message})


class GitLabApi:
    """The stand-in server. `secret_file` is the file kas's `gitlab.authentication_secret_file` names."""

    def __init__(self, secret_file: Path) -> None:
        self._secret = jwt.load_secret(secret_file.read_bytes())
        self.port = free_port()
        self._lock = threading.Lock()
        self._agents: dict[str, Agent] = {}
        self._jobs: dict[str, CiJob] = {}
        self._users: dict[str, PatUser] = {}
        self._gitaly: dict[int, GitalyProject] = {}
        self._public: set[str] = set()
        self._access_checks: list[AccessCheck] = []
        self._calls: list[Call] = []
        self._usage: list[dict[str, Any]] = []
        self.jwt_failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- the data a test sets ---------------------------------------------------------------------

    def add_agent(self, agent: Agent) -> None:
        with self._lock:
            self._agents[agent.token] = agent

    def add_job(self, job: CiJob) -> None:
        with self._lock:
            self._jobs[job.token] = job

    def add_user(self, user: PatUser) -> None:
        with self._lock:
            self._users[user.pat] = user

    def serve_project(self, project_id: int, gitaly: GitalyProject) -> None:
        """agent_info of every agent whose configuration project is `project_id` points at `gitaly`."""
        with self._lock:
            self._gitaly[project_id] = gitaly

    def add_public_project(self, full_path: str) -> None:
        """A project anyone may read: verify_project_access allows it for every agent (Rails' rule)."""
        with self._lock:
            self._public.add(full_path.casefold())

    def access_checks(self) -> list[AccessCheck]:
        with self._lock:
            return list(self._access_checks)

    def calls(self, path_suffix: str = "") -> list[Call]:
        with self._lock:
            return [c for c in self._calls if c.path.endswith(path_suffix)]

    def usage_reports(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._usage)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="gitlab-api", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or self._runner is None:
            raise RuntimeError(f"the GitLab API stand-in did not start on {self.url}")

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
        finally:
            ready.set()
            loop.close()

    async def _listen(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get(f"{API}/agent_info", self._agent_info)
        app.router.add_get(f"{API}/verify_project_access", self._verify_project_access)
        app.router.add_get("/api/v4/job/allowed_agents", self._allowed_agents)
        app.router.add_post(f"{API}/authorize_proxy_user", self._authorize_proxy_user)
        app.router.add_post(f"{API}/usage_metrics", self._usage_metrics)
        app.router.add_post(f"{API}/agent_configuration", self._agent_configuration)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._runner = runner

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._loop = self._thread = None

    # --- request handling -------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
        except web.HTTPException as err:  # e.g. 404 for a path this stand-in does not model
            status = err.status
            raise
        finally:
            with self._lock:
                self._calls.append(Call(request.method, request.path, status, time.monotonic()))
        return response

    def _jwt_ok(self, request: web.Request) -> bool:
        """kas signs each call: HS256 only, issuer gitlab-kas, audience gitlab, within exp/nbf."""
        token = request.headers.get(JWT_HEADER, "")
        try:
            header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
            jwt.verify(token, self._secret, audience=JWT_AUDIENCE, issuer=JWT_ISSUER)
            valid = isinstance(header, dict) and header.get("alg") == "HS256"
        except (ValueError, jwt.JwtError):
            valid = False
        if not valid:
            with self._lock:
                self.jwt_failures += 1
        return valid

    @staticmethod
    def _bearer(request: web.Request) -> str:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return value if scheme.lower() == "bearer" else ""

    async def _agent_info(self, request: web.Request) -> web.Response:
        if not self._jwt_ok(request):
            return _error(401, "KAS JWT authentication invalid")
        with self._lock:
            agent = self._agents.get(self._bearer(request))
            gitaly = self._gitaly.get(agent.project_id) if agent is not None else None
        if agent is None:
            return _error(401, "401 Unauthorized")
        return _json(200, agent_info(agent, gitaly))

    async def _verify_project_access(self, request: web.Request) -> web.Response:
        """Rails allows a project that is public or the agent's configuration project (PROTOCOL.md §17.2):
        204; any other project 404, as Rails answers for a project the caller may not read. GitLab paths
        are case-insensitive. kas reads 401/403/404 as "no access", so an unknown agent gets 401."""
        if not self._jwt_ok(request):
            return _error(401, "KAS JWT authentication invalid")
        project = request.query.get("id", "")
        with self._lock:
            agent = self._agents.get(self._bearer(request))
            if agent is None:
                return _error(401, "401 Unauthorized")
            key = project.casefold()
            allowed = bool(project) and (key == agent.project_path.casefold() or key in self._public)
            self._access_checks.append(AccessCheck(agent.id, project, allowed))
        return web.Response(status=204) if allowed else _error(404, "404 Project Not Found")

    async def _allowed_agents(self, request: web.Request) -> web.Response:
        with self._lock:
            job = self._jobs.get(request.headers.get("Job-Token", ""))
            agents = dict(self._agents_by_id())
        if job is None:
            return _error(401, "401 Unauthorized")
        return _json(200, allowed_agents(job, agents))

    async def _authorize_proxy_user(self, request: web.Request) -> web.Response:
        if not self._jwt_ok(request):
            return _error(401, "KAS JWT authentication invalid")
        body = await request.json()
        if body.get("access_type") != "personal_access_token":
            return _error(401, "only personal access tokens are modelled here")
        with self._lock:
            user = self._users.get(str(body.get("access_key", "")))
            agents = dict(self._agents_by_id())
        agent_id = int(body.get("agent_id", 0))
        if user is None:
            return _error(401, "401 Unauthorized")
        if agent_id not in user.agents or agent_id not in agents:
            return _error(403, "403 Forbidden")
        return _json(200, authorized_user(user, agents[agent_id]))

    async def _usage_metrics(self, request: web.Request) -> web.Response:
        if not self._jwt_ok(request):
            return _error(401, "KAS JWT authentication invalid")
        report = await request.json()
        with self._lock:
            self._usage.append(dict(report))
        return web.Response(status=204)

    async def _agent_configuration(self, request: web.Request) -> web.Response:
        if not self._jwt_ok(request):
            return _error(401, "KAS JWT authentication invalid")
        return web.Response(status=204)

    def _agents_by_id(self) -> dict[int, Agent]:
        return {a.id: a for a in self._agents.values()}


def agent_info(agent: Agent, gitaly: GitalyProject | None = None) -> dict[str, Any]:
    """GetAgentInfoResponse; without `gitaly` it points nowhere (no configuration ever reaches the agent)."""
    if gitaly is None:
        gitaly = GitalyProject(NO_GITALY, agent.project_path, relative_path=f"@hashed/{agent.project_id}.git")
    return {
        "project_id": agent.project_id,
        "agent_id": agent.id,
        "agent_name": agent.name,
        "gitaly_info": {"address": gitaly.address, "token": gitaly.token, "features": dict(gitaly.features)},
        "gitaly_repository": {
            "storage_name": gitaly.storage_name,
            "relative_path": gitaly.relative_path,
            "gl_repository": f"project-{agent.project_id}",
            "gl_project_path": gitaly.full_path,
        },
        "default_branch": gitaly.default_branch,
    }


def allowed_agents(job: CiJob, agents: Mapping[int, Agent]) -> dict[str, Any]:
    """AllowedAgentsForJob: the job's agents with their ci_access entry (the outcome Rails computed)."""
    entries = []
    for agent_id, access_as in job.agents.items():
        known = agents.get(agent_id)
        configuration: dict[str, Any] = {}
        if job.default_namespace:
            configuration["default_namespace"] = job.default_namespace
        if access_as:
            configuration["access_as"] = dict(access_as)
        entries.append(
            {
                "id": agent_id,
                "config_project": {"id": known.project_id if known else 1},
                "configuration": configuration,
            }
        )
    answer: dict[str, Any] = {
        "allowed_agents": entries,
        "job": {"id": job.job_id},
        "pipeline": {"id": job.pipeline_id},
        "project": {"id": job.project_id, "groups": [{"id": g} for g in job.group_ids]},
        "user": {"id": job.user_id, "username": job.username},
    }
    if job.environment is not None:
        answer["environment"] = {"slug": job.environment[0], "tier": job.environment[1]}
    return answer


def authorized_user(user: PatUser, agent: Agent) -> dict[str, Any]:
    """AuthorizeProxyUserResponse for `user` on `agent`."""
    return {
        "agent": {"id": agent.id, "config_project": {"id": agent.project_id}},
        "user": {"id": user.user_id, "username": user.username},
        "access_as": dict(user.agents[agent.id]),
    }
