"""Which GitRepositories an agent covers now, and the project set it asks kas about.

In scope: GitRepositories whose URL names a project on the agent's GitLab (urls.py), in namespaces where
the agent may patch GitRepositories (access.py). The project set is the distinct project paths of those,
as written in their URLs (kas matches pushes by exact path); reported projects are matched back
case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent_runtime.modules.flux.access import PatchPermission
from agent_runtime.modules.flux.gitrepositories import Target
from agent_runtime.modules.flux.urls import match_key


@dataclass(frozen=True)
class Scope:
    """The agent's GitRepositories, by project."""

    targets: tuple[Target, ...] = ()
    """GitRepositories in scope."""
    denied: int = 0
    """GitRepositories of the agent's GitLab left out: their namespace denies the agent patch."""
    _by_key: dict[str, tuple[Target, ...]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, targets: Iterable[Target], denied: int = 0) -> Scope:
        """A scope of these targets."""
        items = tuple(sorted(targets))
        by_key: dict[str, list[Target]] = {}
        for target in items:
            by_key.setdefault(match_key(target.project), []).append(target)
        return cls(items, denied, {k: tuple(v) for k, v in by_key.items()})

    @property
    def projects(self) -> frozenset[str]:
        """The project paths to send to kas."""
        return frozenset(t.project for t in self.targets)

    def for_project(self, project: str) -> tuple[Target, ...]:
        """The GitRepositories of a reported project (case-insensitive)."""
        return self._by_key.get(match_key(project), ())


async def compute_scope(candidates: list[Target], permission: PatchPermission) -> Scope:
    """Keep the candidates whose namespace lets the agent patch GitRepositories."""
    namespaces = {t.namespace for t in candidates}
    permission.forget_others(namespaces)
    allowed = {ns for ns in sorted(namespaces) if await permission.allowed(ns)}
    kept = [t for t in candidates if t.namespace in allowed]
    return Scope.of(kept, denied=len(candidates) - len(kept))
