"""The sweep: list every GitLabAgent now and then; take the watch label off objects that none refers to
any more, and tell the controller which GitLabAgents exist (a deletion the watch missed).

While the operator runs, the controller unlabels an object as soon as the last GitLabAgent stops
referring to it. What changed while no operator ran (a GitLabAgent deleted, or its spec pointed at
another Secret) leaves labels behind, and anyone who may label a Secret or ConfigMap can add one; this
pass removes them at start and then every `SWEEP_INTERVAL_S`. The caches keep no data of such objects
anyway (agent_operator.sources); the sweep keeps them from holding even their names for long.

It compares the labelled objects in the caches with the references of every GitLabAgent listed from the
API server, not with the controller's index (which fills only as kopf gets to each resource), so it can
run as soon as the caches are synced, on every replica. A GitLabAgent that takes an object up while the
pass runs is safe: the unlabelled object leaves the cache, the cache reports that as a change, and the
controller labels it again when it re-maps that agent. A namespace with a GitLabAgent whose spec does
not parse is skipped: its references are not known.

The same list tells the controller which GitLabAgents exist (`AgentListing`): a GitLabAgent carries no
finalizer (handlers.py), so one deleted while the operator's watch was reconnecting leaves no trace but
its absence, and the controller drains a worker whose resource the list no longer shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from pydantic import ValidationError

from agent_operator.api import API_VERSION, PLURAL, GitLabAgentSpec
from agent_operator.kube_api import KubeApi, ListError, list_pages
from agent_operator.mapping import SourceRef, sources_of
from agent_operator.sources import Sources

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S: Final = 300.0
"""Between sweeps: one list of GitLabAgents per 5 minutes is cheap, and a label left by someone else
stays at most that long."""


@dataclass(frozen=True)
class AgentListing:
    """What one list of every GitLabAgent in scope showed."""

    started: float
    """When the list began (monotonic): a GitLabAgent created after that may be missing from it."""
    uids: frozenset[str]
    """The uid of every GitLabAgent listed."""
    referenced: frozenset[SourceRef]
    """The Secrets and ConfigMaps they refer to."""
    unknown_namespaces: frozenset[str]
    """Namespaces with a GitLabAgent whose spec does not parse (its references are not known)."""


ListingObserver = Callable[[AgentListing], None]


def _ignore_listing(_: AgentListing) -> None:
    return None


async def sweep_unreferenced(
    api: KubeApi, sources: Sources, observe: ListingObserver = _ignore_listing
) -> int:
    """Unlabel every watched object that no GitLabAgent refers to; returns how many were unlabelled.
    `observe` is given the list of GitLabAgents (not when it failed)."""
    await sources.wait_synced()
    watched = sources.watched()  # before the list: an object labelled later is not this pass's business
    try:
        listing = await list_references(api, sources.namespaces)
    except ListError as exc:
        log.warning("sweep skipped: %s", exc)
        return 0
    observe(listing)
    if not watched:
        return 0
    referenced, unknown_namespaces = listing.referenced, listing.unknown_namespaces
    sources.keep_data_of(referenced, unknown_namespaces)
    orphans = sorted(
        (s for s in watched if s not in referenced and s.namespace not in unknown_namespaces),
        key=lambda s: (s.namespace, s.kind.value, s.name),
    )
    removed = [source for source in orphans if await sources.unwatch(source)]
    if removed:
        names = [f"{s.kind.value}/{s.namespace}/{s.name}" for s in removed]
        log.info(
            "removed the watch label from objects no GitLabAgent refers to",
            extra={"count": len(removed), "objects": names},
        )
    return len(removed)


async def sweep_periodically(
    api: KubeApi,
    sources: Sources,
    observe: ListingObserver = _ignore_listing,
    interval: float = SWEEP_INTERVAL_S,
) -> None:
    """Sweep now and then every `interval` seconds, until cancelled; a failed pass is logged and the next
    one comes as planned."""
    while True:
        try:
            await sweep_unreferenced(api, sources, observe)
        except Exception:
            log.exception("sweep failed")
        await asyncio.sleep(interval)


async def list_references(api: KubeApi, namespaces: tuple[str, ...] | None) -> AgentListing:
    """Every GitLabAgent in scope, and the objects they refer to; ListError when the list failed."""
    started = time.monotonic()
    uids: set[str] = set()
    referenced: set[SourceRef] = set()
    unknown: set[str] = set()
    async for item in list_agents_in_scope(api, namespaces):
        meta = item.get("metadata") or {}
        uids.add(str(meta.get("uid", "")))
        namespace = str(meta.get("namespace", ""))
        try:
            spec = GitLabAgentSpec.model_validate(item.get("spec") or {})
        except ValidationError:
            unknown.add(namespace)
            continue
        referenced |= sources_of(namespace, spec)
    return AgentListing(started, frozenset(uids), frozenset(referenced), frozenset(unknown))


async def list_agents_in_scope(
    api: KubeApi, namespaces: tuple[str, ...] | None
) -> AsyncIterator[dict[str, Any]]:
    """Every GitLabAgent of the operator's scope (None: the whole cluster); ListError on failure."""
    scopes: list[str | None] = [None] if namespaces is None else list(namespaces)
    for scope in scopes:
        async for item in list_agents(api, scope):
            yield item


async def list_agents(api: KubeApi, namespace: str | None) -> AsyncIterator[dict[str, Any]]:
    """Every GitLabAgent of `namespace` (None: of all namespaces), page by page; ListError on failure."""
    base = f"/apis/{API_VERSION}/{PLURAL}"
    if namespace is not None:
        base = f"/apis/{API_VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}"
    async for page in list_pages(api, base, "GitLabAgents"):
        for item in page.get("items") or []:
            if isinstance(item, dict):
                yield item
