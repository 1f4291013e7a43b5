"""Who may use the proxy: CI jobs and personal access tokens, from the agents file (`ci_jobs:`, `users:`).

The reference kas has no GitLab Rails to ask (`/api/v4/job/allowed_agents`, `authorize_proxy_user`), so
the agents file carries what Rails would answer. The same YAML file also holds `agents:` (kas.agents);
this model reads only its two sections and ignores the rest.

    ci_jobs:
      - token_sha256: <sha256 hex of CI_JOB_TOKEN>   # or `token: <plain>` (hashed on load)
        job_id: 1074
        pipeline_id: 55
        project: {id: 7, path: group1/app}
        groups: [{id: 3, path: group1}]         # the project's groups, in API order
        user: {id: 9, username: alice}
        environment: {name: review/x, slug: review-x, tier: development}   # optional
        allowed_agent_ids: [42]                 # optional: restricts further what ci_access allows
    users:
      - token_sha256: <sha256 hex of the PAT>
        user: {id: 9, username: alice}
        projects: [{id: 7, path: group1/app, roles: [developer]}]
        groups: [{id: 3, path: group1, roles: [maintainer]}]
        allowed_agent_ids: [42]                 # optional

Tokens are kept only as sha256 digests and compared in constant time.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kas.secret import Secret, token_digest

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Tokened(_Strict):
    """An entry identified by a token: `token_sha256`, or the plain `token` (hashed before validation)."""

    token_sha256: str = Field(pattern=_HEX64.pattern)

    @model_validator(mode="before")
    @classmethod
    def _hash_plain_token(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "token" in data:
            if "token_sha256" in data:
                raise ValueError("give one of token, token_sha256, not both")
            data = dict(data)
            plain = data.pop("token")
            if not isinstance(plain, str) or not plain:
                raise ValueError("token must be a non-empty string")
            data["token_sha256"] = token_digest(plain)
        return data


class ProjectRef(_Strict):
    id: Int64
    path: str = Field(min_length=1)
    """Full path (group/subgroup/project); ci_access and user_access name projects by it."""


class GroupRef(_Strict):
    id: Int64
    path: str = Field(min_length=1)


class UserRef(_Strict):
    id: Int64
    username: str = Field(min_length=1)


class Environment(_Strict):
    name: str = ""
    """What ci_access `environments` patterns match (default: the slug)."""
    slug: str = Field(min_length=1)
    tier: str = Field(min_length=1)
    """production, staging, testing, development or other."""

    @property
    def match_name(self) -> str:
        return self.name or self.slug


class CiJob(_Tokened):
    """What GitLab's allowed_agents endpoint says about one job token."""

    job_id: Int64
    pipeline_id: Int64
    project: ProjectRef
    groups: list[GroupRef] = Field(default_factory=list)
    user: UserRef
    environment: Environment | None = None
    allowed_agent_ids: list[int] | None = None
    """None: every agent whose ci_access admits the job; a list: only these (and only if admitted)."""


class RoleMembership(_Strict):
    id: Int64
    path: str = Field(min_length=1)
    roles: list[str] = Field(default_factory=list)
    """GitLab roles of the user there: guest, reporter, developer, maintainer, owner."""


class UserToken(_Tokened):
    """A personal access token (scope k8s_proxy) and what its user is a member of."""

    user: UserRef
    projects: list[RoleMembership] = Field(default_factory=list)
    groups: list[RoleMembership] = Field(default_factory=list)
    allowed_agent_ids: list[int] | None = None


class ProxyAccessConfig(BaseModel):
    """The `ci_jobs:` and `users:` sections of the agents file; other top-level keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    ci_jobs: list[CiJob] = Field(default_factory=list)
    users: list[UserToken] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_tokens(self) -> ProxyAccessConfig:
        seen: set[str] = set()
        for entry in [*self.ci_jobs, *self.users]:
            if entry.token_sha256 in seen:
                raise ValueError("the same token is listed twice in ci_jobs/users")
            seen.add(entry.token_sha256)
        return self

    def find_job(self, token: Secret) -> CiJob | None:
        """The job whose token this is (constant-time digest comparison)."""
        return _find(self.ci_jobs, token)

    def find_user(self, token: Secret) -> UserToken | None:
        return _find(self.users, token)


_T = TypeVar("_T", bound=_Tokened)


def _find(entries: list[_T], token: Secret) -> _T | None:
    digest = token_digest(token.reveal())
    found: _T | None = None
    for entry in entries:  # no early exit: the time taken does not depend on which entry matched
        if hmac.compare_digest(entry.token_sha256, digest):
            found = entry
    return found


class AccessConfigError(ValueError):
    """The ci_jobs/users sections are invalid; the message names locations, never token text."""


def load_access_config(path: Path) -> ProxyAccessConfig:
    """Read the agents file's ci_jobs/users; YAML errors are reported by type only (lines may hold tokens)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise AccessConfigError(f"{path}: not valid YAML ({type(err).__name__})") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise AccessConfigError(f"{path}: top level must be a mapping")
    return parse_access_config(raw)


def parse_access_config(raw: Mapping[str, Any] | None) -> ProxyAccessConfig:
    """Validate the YAML-decoded agents file; errors list field locations and messages only."""
    try:
        return ProxyAccessConfig.model_validate(raw or {})
    except ValidationError as err:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise AccessConfigError(f"invalid ci_jobs/users in the agents file: {details}") from None
