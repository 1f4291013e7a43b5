"""The `ci_access` and `user_access` parts of an agent's configuration file, as typed rules (§9.3).

The agent configuration arrives as an agentcfg `ConfigurationFile` protobuf (either wire flavor: the
schema is the same); it is read through its JSON form so one code path serves both generated packages.
"""

from __future__ import annotations

import enum
import re
from functools import lru_cache
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CiAccessAs(enum.Enum):
    AGENT = "agent"
    IMPERSONATE = "impersonate"
    CI_JOB = "ci_job"


class ExtraKeyVal(_Model):
    key: str = Field(min_length=1)
    val: tuple[str, ...] = ()


class ImpersonateAs(_Model):
    username: str = Field(min_length=1)
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[ExtraKeyVal, ...] = ()


class _AccessAsCF(_Model):
    agent: dict[str, Any] | None = None
    impersonate: ImpersonateAs | None = None
    ci_job: dict[str, Any] | None = None


class CiAccessEntry(_Model):
    """One `ci_access.projects[]` or `ci_access.groups[]` item."""

    id: str = Field(min_length=1)
    """Project or group full path."""
    default_namespace: str = ""
    access_as: _AccessAsCF | None = None
    environments: tuple[str, ...] = ()

    @property
    def mode(self) -> CiAccessAs:
        if self.access_as is None or self.access_as.agent is not None:
            return CiAccessAs.AGENT
        if self.access_as.impersonate is not None:
            return CiAccessAs.IMPERSONATE
        if self.access_as.ci_job is not None:
            return CiAccessAs.CI_JOB
        return CiAccessAs.AGENT

    def admits_environment(self, environment_name: str | None) -> bool:
        """No `environments` = any job; otherwise the job's environment must match one pattern."""
        if not self.environments:
            return True
        if environment_name is None:
            return False
        return any(_environment_pattern(p).fullmatch(environment_name) for p in self.environments)


class CiAccessRules(_Model):
    projects: tuple[CiAccessEntry, ...] = ()
    groups: tuple[CiAccessEntry, ...] = ()


class _PathRef(_Model):
    id: str = Field(min_length=1)


class _UserAccessAsCF(_Model):
    agent: dict[str, Any] | None = None
    user: dict[str, Any] | None = None


class UserAccessRules(_Model):
    access_as: _UserAccessAsCF | None = None
    projects: tuple[_PathRef, ...] = ()
    groups: tuple[_PathRef, ...] = ()

    @property
    def as_user(self) -> bool:
        """`access_as: {user: {}}`; absent (GitLab 18.3+) or `agent: {}` means the agent's identity."""
        return self.access_as is not None and self.access_as.user is not None

    @property
    def project_paths(self) -> frozenset[str]:
        return frozenset(p.id for p in self.projects)

    @property
    def group_paths(self) -> frozenset[str]:
        return frozenset(g.id for g in self.groups)


class AccessRules(_Model):
    """What an agent's configuration says about proxy access; sections absent = None."""

    ci_access: CiAccessRules | None = None
    user_access: UserAccessRules | None = None


def access_rules(configuration: Message | None) -> AccessRules:
    """Rules from an agentcfg ConfigurationFile (None = empty configuration: all defaults)."""
    if configuration is None:
        return AccessRules()
    as_dict = json_format.MessageToDict(configuration, preserving_proto_field_name=True)
    return AccessRules.model_validate(as_dict)


@lru_cache(maxsize=256)
def _environment_pattern(pattern: str) -> re.Pattern[str]:
    """GitLab environment patterns: `*` matches any run of characters, everything else literally."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))
