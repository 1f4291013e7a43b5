"""Flux's GitRepositories in the process-wide informer cache, and the ones an agent's GitLab serves.

One informer for the whole process (every agent's module asks SharedInformers for the same kind, with the
same indexers and transform), cluster-wide, keeping only what the module reads: name, namespace, uid,
resourceVersion and spec.url. An index by URL host name lets each agent read its own GitLab's objects
without scanning the others'. A second informer watches only the GitRepository CRD (a field selector on
its name): Flux installed later is noticed without a restart.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent_runtime.informer import KubeObject, ResourceKind
from agent_runtime.modules.flux.urls import GitLabServer

GROUP: Final = "source.toolkit.fluxcd.io"
VERSION: Final = "v1"
PLURAL: Final = "gitrepositories"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

GITREPOSITORIES: Final = ResourceKind(f"{GROUP}/{VERSION}", PLURAL)
"""Every GitRepository of the cluster (Flux ≥ 2.0 serves v1)."""
GITREPOSITORY_CRD: Final = ResourceKind(
    "apiextensions.k8s.io/v1", "customresourcedefinitions", field_selector=f"metadata.name={CRD_NAME}"
)
"""Just the GitRepository CRD."""

HOST_INDEX: Final = "flux-url-host"
"""Index of GitRepositories by the lower-case host name of spec.url."""


def _pick(source: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: source[k] for k in keys if k in source}


def keep_gitrepository(obj: dict[str, Any]) -> KubeObject:
    """The informer's transform: what the module reads of a GitRepository, nothing more."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    url = spec.get("url") if isinstance(spec, dict) else None
    return {
        "metadata": _pick(meta, ("name", "namespace", "uid", "resourceVersion")),
        "spec": {"url": url} if isinstance(url, str) else {},
    }


def keep_crd(obj: dict[str, Any]) -> KubeObject:
    """The CRD informer's transform: served versions and conditions."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    versions = [_pick(v, ("name", "served")) for v in spec.get("versions") or [] if isinstance(v, dict)]
    return {
        "metadata": _pick(obj.get("metadata") or {}, ("name", "resourceVersion")),
        "spec": {"versions": versions},
        "status": {"conditions": list(status.get("conditions") or [])},
    }


def url_host(obj: KubeObject) -> tuple[str, ...]:
    """HOST_INDEX's function: the GitRepository's URL host, lower-case, without a trailing dot."""
    url = (obj.get("spec") or {}).get("url")
    return _host_of(url) if isinstance(url, str) else ()


@functools.lru_cache(maxsize=4096)
def _host_of(url: str) -> tuple[str, ...]:
    # Cached: every agent's change handler asks for the hosts of every changed GitRepository.
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return ()
    return (host.rstrip("."),) if host else ()


INDEXERS: Final = {HOST_INDEX: url_host}


def crd_serves_v1(obj: KubeObject | None) -> bool:
    """The CRD exists, serves v1 and is Established (agentk's gate, §17.3)."""
    if obj is None:
        return False
    versions = (obj.get("spec") or {}).get("versions") or []
    served = any(v.get("name") == VERSION and v.get("served") for v in versions)
    conditions = (obj.get("status") or {}).get("conditions") or []
    established = any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
    return served and established


@dataclass(frozen=True, order=True)
class Target:
    """One GitRepository of the agent's GitLab."""

    namespace: str
    name: str
    uid: str
    project: str
    """The GitLab project path its URL names (as written in the URL)."""


def targets(objects: Iterable[KubeObject], server: GitLabServer) -> list[Target]:
    """The GitRepositories among `objects` whose URL names a project on `server`, sorted."""
    found: list[Target] = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        url = (obj.get("spec") or {}).get("url")
        if not isinstance(url, str):
            continue
        project = server.project_path(url)
        if project is not None and meta.get("namespace") and meta.get("name"):
            found.append(Target(str(meta["namespace"]), str(meta["name"]), str(meta.get("uid", "")), project))
    return sorted(found)
