"""The GitLabAgents, watched by the operator's own informer: every change goes to the controller.

Without `--peering` kopf has nothing to do for a GitLabAgent (no finalizer, no change detection: see
handlers.py), yet its watch processed every event: the causes, the per-resource memories and workers,
and a debug message that formats the whole body whether or not debug logging is on. That was 14-19 % of
the operator's CPU while a thousand agents came up (docs/benchmarks.md, Session 10). The runtime's
informer (one list+watch per watched namespace, or one cluster-wide) delivers the same events for the
cost of decoding them, and on a relist after 410 Gone it reports the objects that went away meanwhile
as DELETED, which kopf's watch did not.

The store keeps what a reconciliation reads (spec, status, uid, generation, age) and what the informer
needs (name, namespace, resourceVersion). Events are delivered from the first list on, once the Secret
caches are synced: a restart's agents then read their Secrets from the caches (composition.py).
With `--peering` kopf's handlers stay (its daemons mark which replica runs an agent) and this is unused.

Earlier versions had kopf put a finalizer on every GitLabAgent; nothing would take it off any more, and
deleting such a resource (or its namespace) would hang. The watch takes it off each resource it sees it
on (a JSON patch that tests the entry first, so a concurrent change of the list is never overwritten).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import aiohttp

from agent_operator.api import API_VERSION, PLURAL
from agent_operator.controller import kept_body
from agent_operator.keyed import KeyedTasks
from agent_operator.kube_api import KubeApi, group_path
from agent_operator.logs import resource_extra
from agent_operator.mapping import AgentKey, KubeObject
from agent_operator.sources import InformerFactory
from agent_runtime.informer import EventType, Informer, ResourceKind

log = logging.getLogger(__name__)

FINALIZER: Final = "agentk.dev/worker-cleanup"
"""kopf's finalizer: on a GitLabAgent only with peering, while a daemon runs for it (handlers.py); taken
off here from resources that carry it from an earlier version."""
JSON_PATCH: Final = "application/json-patch+json"
RETRY_S: Final = 5.0
"""Our choice: the wait before taking a finalizer off again after the API server failed to."""

_INFORMER_METADATA: Final = ("name", "namespace", "resourceVersion", "uid", "deletionTimestamp", "finalizers")
"""What the informer itself reads (the key, where a watch resumes), a deletion in progress, and the
finalizers (an earlier version's comes off)."""


def agent_kinds(namespaces: Iterable[str] | None) -> list[ResourceKind]:
    """The informers' kinds: per watched namespace, or cluster-wide when `namespaces` is None."""
    if namespaces is None:
        return [ResourceKind(API_VERSION, PLURAL)]
    return [ResourceKind(API_VERSION, PLURAL, namespace=ns) for ns in sorted(set(namespaces))]


def kept_of_agent(obj: dict[str, Any]) -> KubeObject:
    """What the store keeps of a GitLabAgent: `kept_body` and the informer's metadata."""
    kept = kept_body(obj)
    meta = obj.get("metadata") or {}
    kept["metadata"].update((k, meta[k]) for k in _INFORMER_METADATA if k in meta)
    return kept


Observe = Callable[[AgentKey, Mapping[str, Any]], None]
Gone = Callable[[AgentKey, str], None]


class AgentWatch:
    """The GitLabAgent informers and the hand-over of their events."""

    def __init__(self, api: KubeApi, namespaces: Iterable[str] | None, observe: Observe, gone: Gone) -> None:
        """`observe(key, body)` for every GitLabAgent added or changed, `gone(key, uid)` for every one
        deleted or being deleted."""
        self._api = api
        self._kinds = agent_kinds(namespaces)
        self._observe = observe
        self._gone = gone
        self._informers: list[Informer] = []
        self._finalized: dict[AgentKey, list[str]] = {}
        """The finalizers of resources that carry `FINALIZER`, as last seen."""
        self._unfinalize: KeyedTasks[AgentKey] = KeyedTasks("unfinalize", self._remove_finalizer)

    async def run(self) -> None:
        """Take earlier versions' finalizers off, until cancelled."""
        await self._unfinalize.run()

    def start(self, informer: InformerFactory) -> None:
        """Create the informers (through the runtime); nothing is delivered before `deliver`."""
        self._informers = [informer(kind, transform=kept_of_agent) for kind in self._kinds]

    async def listed(self, within: float) -> list[KubeObject] | None:
        """Every GitLabAgent of the informers' first lists (as the store keeps them), None when they
        have not all come within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                for watcher in self._informers:
                    await watcher.wait_synced()
        except TimeoutError:
            return None
        return [obj for watcher in self._informers for obj in watcher.store.items()]

    async def deliver(self) -> None:
        """Hand every GitLabAgent listed so far to the controller, then every change, from now on."""
        for watcher in self._informers:
            await watcher.wait_synced()
            watcher.add_handler(self._on_change, replay=True)

    def _on_change(self, event: EventType, old: KubeObject | None, new: KubeObject | None) -> None:
        body = new if new is not None else old
        meta = (body or {}).get("metadata") or {}
        key = AgentKey(str(meta.get("namespace", "")), str(meta.get("name", "")))
        finalizers = meta.get("finalizers") or []
        if event is not EventType.DELETED and FINALIZER in finalizers:
            self._finalized[key] = list(finalizers)
            self._unfinalize.kick(key)
        if event is EventType.DELETED or meta.get("deletionTimestamp"):
            # Being deleted counts as gone: another's finalizer may keep the resource a while, but the
            # user asked for the agent to go.
            self._gone(key, str(meta.get("uid", "")))
        elif new is not None:
            self._observe(key, new)

    async def _remove_finalizer(self, key: AgentKey) -> None:
        finalizers = self._finalized.pop(key, None)
        if not finalizers or FINALIZER not in finalizers:
            return
        at = f"/metadata/finalizers/{finalizers.index(FINALIZER)}"
        patch = [{"op": "test", "path": at, "value": FINALIZER}, {"op": "remove", "path": at}]
        path = group_path(API_VERSION, key.namespace, PLURAL, key.name)
        extra = resource_extra(key.namespace, key.name)
        try:
            answer = await self._api.request("PATCH", path, patch, content_type=JSON_PATCH, decode=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = type(exc).__name__
        else:
            # 422: the list changed meanwhile (the watch brings the new one); 404: the resource is gone.
            if answer.ok or answer.status in (404, 422):
                if answer.ok:
                    log.info("took the finalizer of an earlier version off", extra=extra)
                return
            why = answer.reason()
        log.warning("could not take the finalizer %s off: %s", FINALIZER, why, extra=extra)
        await asyncio.sleep(RETRY_S)
        self._finalized.setdefault(key, finalizers)
        self._unfinalize.kick(key)
