"""Which ServiceAccounts exist, for the ServiceAccountFound condition: a name-only cache, indexed to agents.

Every tunnelled request runs as the agent's ServiceAccount (impersonated); when it does not exist, the
agent still connects and every request is forbidden, with nothing on the resource to say why. One shared
informer per watched namespace (or one cluster-wide) keeps only each ServiceAccount's name: a thousand
agents cost one list and one watch, and a ServiceAccount that appears or goes away re-maps exactly the
agents that name it. Periodic GETs per agent would cost a request per agent per period and still report
late.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from agent_operator.mapping import AgentKey, KubeObject
from agent_operator.sources import InformerFactory
from agent_runtime.informer import EventType, Informer, ResourceKind

log = logging.getLogger(__name__)

_KEPT_METADATA: Final = ("name", "namespace", "resourceVersion")

AgentsChanged = Callable[[AgentKey], None]
"""Called for each agent whose ServiceAccount appeared or went away."""


def name_only(obj: dict[str, Any]) -> KubeObject:
    """What the cache keeps of a ServiceAccount: the metadata that names it (no secrets list, no labels)."""
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in _KEPT_METADATA if k in meta}}


def service_account_kinds(namespaces: Iterable[str] | None) -> list[ResourceKind]:
    """The informers' kinds: per watched namespace, or cluster-wide when `namespaces` is None."""
    if namespaces is None:
        return [ResourceKind("v1", "serviceaccounts")]
    return [ResourceKind("v1", "serviceaccounts", namespace=ns) for ns in sorted(set(namespaces))]


class ServiceAccounts:
    """Answers "does ServiceAccount ns/name exist?" from the cache, and reports changes to the agents
    that use the changed ServiceAccount."""

    def __init__(self, namespaces: Iterable[str] | None) -> None:
        self._kinds = service_account_kinds(namespaces)
        self._cluster_wide = namespaces is None
        self._informers: dict[str | None, Informer] = {}
        self._users: dict[tuple[str, str], set[AgentKey]] = {}
        self._used: dict[AgentKey, tuple[str, str]] = {}
        self._changed: AgentsChanged | None = None

    def start(self, informer: InformerFactory, changed: AgentsChanged) -> None:
        """Create the informers (through the runtime); `changed(agent)` for every agent whose
        ServiceAccount appears or goes away."""
        self._changed = changed
        for kind in self._kinds:
            watcher = informer(kind, transform=name_only)
            self._informers[kind.namespace] = watcher
            watcher.add_handler(self._on_change, replay=False)

    async def wait_synced(self) -> None:
        """Return once every informer has listed its ServiceAccounts."""
        for watcher in self._informers.values():
            await watcher.wait_synced()

    def exists(self, namespace: str, name: str) -> bool | None:
        """Whether ServiceAccount `namespace/name` exists; None until the cache has listed them."""
        watcher = self._informers.get(None if self._cluster_wide else namespace)
        if watcher is None or not watcher.synced:
            return None
        return watcher.store.get(f"{namespace}/{name}") is not None

    def use(self, agent: AgentKey, namespace: str, name: str) -> None:
        """`agent` runs as ServiceAccount `namespace/name` (replacing what it used before)."""
        self.forget(agent)
        self._used[agent] = (namespace, name)
        self._users.setdefault((namespace, name), set()).add(agent)

    def forget(self, agent: AgentKey) -> None:
        """`agent` is gone (or its spec names no ServiceAccount we can read)."""
        ref = self._used.pop(agent, None)
        if ref is None:
            return
        users = self._users.get(ref)
        if users is not None:
            users.discard(agent)
            if not users:
                del self._users[ref]

    def users(self) -> list[AgentKey]:
        """Every agent that names a ServiceAccount, sorted."""
        return sorted(self._used)

    def _on_change(self, event: EventType, old: KubeObject | None, new: KubeObject | None) -> None:
        if event is EventType.MODIFIED or self._changed is None:
            return  # only existence matters
        meta = (new if new is not None else old or {}).get("metadata") or {}
        for agent in sorted(self._users.get((str(meta.get("namespace", "")), str(meta.get("name", ""))), ())):
            self._changed(agent)
