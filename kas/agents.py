"""Agents known to this kas and their tokens.

The agents file (YAML):

    agents:
      - id: 42                      # GitLab agent id (int64)
        name: my-agent              # agent name (RFC 1123 label)
        project_path: group/project # configuration project (where .gitlab/agents/<name>/ lives)
        project_id: 7               # optional, default 0
        tokens: [glagent-...]       # plain tokens (hashed on load, never kept or logged)
        token_sha256: [<hex>]       # or their sha256 hex digests
        projects: [group/app]       # optional: more projects this agent may see (push events)
    public_projects: [group/docs]   # optional: projects every agent may see (public in GitLab terms)

Tokens are kept only as sha256 digests. The file is re-read when its mtime or size changes; a broken
file keeps the previous agents (and logs why, without token text). The same document can come from a
Kubernetes Secret instead (kas.yaml `agents.secret`, see kas.agents_secret), loaded with `load_text`.

Project access (`AgentDirectory.may_access`, what GitLab asks Rails with `verify_project_access`,
PROTOCOL.md §17.2): an agent may see its configuration project, the projects in its `projects`, and the
document's `public_projects`; paths compare case-insensitively, as GitLab's routes do. Rails allows
public projects and the configuration project only; `projects` is the grant GitLab users asked for.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kas.secret import token_digest

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class AgentInfo:
    """What kas knows about an authenticated agent (GitLab's agent_info)."""

    id: int
    name: str
    project_path: str
    project_id: int = 0
    projects: frozenset[str] = frozenset()
    """Case-folded paths of the projects granted beyond the configuration project."""


def fold_path(path: str) -> str:
    """A project path as access checks and push filters compare it."""
    return path.casefold()


class _AgentEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=-(2**63), lt=2**63)
    name: str = Field(max_length=63, pattern=_NAME.pattern)
    project_path: str = Field(min_length=1)
    project_id: int = 0
    tokens: list[str] = Field(default_factory=list, repr=False)
    token_sha256: list[str] = Field(default_factory=list)
    projects: list[str] = Field(default_factory=list)


class _AgentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[_AgentEntry] = Field(default_factory=list)
    public_projects: list[str] = Field(default_factory=list)
    ci_jobs: Any = None
    """Read by kas.k8s_proxy.access (CI job tokens for the Kubernetes API proxy)."""
    users: Any = None
    """Read by kas.k8s_proxy.access (personal access tokens for the proxy)."""


class AgentsFileError(ValueError):
    """The agents file cannot be used; the message never contains token text."""


def describe_load_error(err: Exception) -> str:
    """What is wrong with an agents document, without quoting it (a quoted line may hold a token)."""
    if isinstance(err, AgentsFileError):
        return str(err)
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"not valid YAML ({type(err).__name__} at line {mark.line + 1}, column {mark.column + 1})"
    return type(err).__name__


def parse_agents(raw: Any) -> dict[str, AgentInfo]:
    """Agents file content (already YAML-decoded) -> {token sha256: agent}."""
    try:
        parsed = _AgentsFile.model_validate(raw or {})
    except ValidationError as err:
        # include only locations and messages: pydantic's default text would echo the bad input.
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise AgentsFileError(f"invalid agents document: {details}") from None
    by_digest: dict[str, AgentInfo] = {}
    seen_ids: set[int] = set()
    for entry in parsed.agents:
        if entry.id in seen_ids:
            raise AgentsFileError(f"agent id {entry.id} is listed twice")
        seen_ids.add(entry.id)
        projects = frozenset(fold_path(p) for p in entry.projects)
        agent = AgentInfo(entry.id, entry.name, entry.project_path, entry.project_id, projects)
        digests = [token_digest(t) for t in entry.tokens]
        for digest in entry.token_sha256:
            if not _HEX64.match(digest):
                raise AgentsFileError(
                    f"agent {entry.id}: token_sha256 entries must be 64 lower-case hex digits"
                )
            digests.append(digest)
        for digest in digests:
            if digest in by_digest and by_digest[digest].id != agent.id:
                raise AgentsFileError(
                    f"a token of agent {entry.id} is also a token of agent {by_digest[digest].id}"
                )
            by_digest[digest] = agent
    return by_digest


class AgentDirectory:
    """Token -> agent lookups, backed by a file that is reloaded when it changes, or set directly."""

    def __init__(self, path: Path | None = None, reload_period: float = 1.0) -> None:
        self._path = path
        self._reload_period = reload_period
        self._by_digest: Mapping[str, AgentInfo] = {}
        self._by_id: Mapping[int, AgentInfo] = {}
        self._document: Mapping[str, Any] = {}
        self._public_projects: frozenset[str] = frozenset()
        self._file_stamp: tuple[int, int] | None = None
        self._failed_stamp: tuple[int, int] | None = None
        if path is not None:
            self.reload()

    def authenticate(self, token: str) -> AgentInfo | None:
        return self._by_digest.get(token_digest(token))

    def by_id(self, agent_id: int) -> AgentInfo | None:
        return self._by_id.get(agent_id)

    def agents(self) -> list[AgentInfo]:
        return sorted(self._by_id.values(), key=lambda a: a.id)

    def may_access(self, agent_id: int, full_path: str) -> bool:
        """May this agent (as the directory knows it now) see the project at `full_path`?"""
        agent = self._by_id.get(agent_id)
        if agent is None:
            return False
        path = fold_path(full_path)
        if path == fold_path(agent.project_path) or path in self._public_projects:
            return True
        return any(fold_path(granted) == path for granted in agent.projects)

    def document(self) -> Mapping[str, Any]:
        """The whole last loaded file (its `ci_jobs:`/`users:` sections feed the k8s proxy)."""
        return self._document

    def set_agents(self, entries: Iterable[tuple[AgentInfo, Iterable[str]]]) -> None:
        """Replace all agents programmatically: (agent, plain tokens) pairs (tests, embedding)."""
        pairs = [(agent, list(tokens)) for agent, tokens in entries]
        self._by_digest = {token_digest(token): agent for agent, tokens in pairs for token in tokens}
        self._by_id = {agent.id: agent for agent, _ in pairs}

    def load_text(self, text: str | bytes) -> None:
        """Replace all agents with an agents document (YAML text, e.g. a Secret's value).

        Raises yaml.YAMLError or AgentsFileError (see `describe_load_error`) and keeps the previous
        agents when the document is not usable.
        """
        document = yaml.safe_load(text) or {}
        self._replace(document, parse_agents(document))

    def _replace(self, document: Any, by_digest: dict[str, AgentInfo]) -> None:
        self._by_digest, self._document = by_digest, document
        public = document.get("public_projects") if isinstance(document, Mapping) else None
        self._public_projects = frozenset(fold_path(p) for p in public or () if isinstance(p, str))
        self._by_id = {agent.id: agent for agent in by_digest.values()}

    def reload(self) -> bool:
        """Re-read the file if it changed. Returns True if the agents were replaced."""
        if self._path is None:
            return False
        stat = self._path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp in (self._file_stamp, self._failed_stamp):
            return False
        try:
            document = yaml.safe_load(self._path.read_text()) or {}
            by_digest = parse_agents(document)
        except BaseException:
            self._failed_stamp = stamp  # report a broken file once, not on every poll
            raise
        self._replace(document, by_digest)
        self._file_stamp = stamp
        log.info("loaded agents file", extra={"path": str(self._path), "agents": len(self.agents())})
        return True

    async def watch(self) -> None:
        """Reload the file whenever it changes; runs until cancelled."""
        while True:
            await asyncio.sleep(self._reload_period)
            try:
                self.reload()
            except (OSError, yaml.YAMLError, AgentsFileError) as err:
                log.warning(
                    "agents file not reloaded, keeping the previous agents: %s", describe_load_error(err)
                )
