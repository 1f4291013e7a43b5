"""The label sweep: take the watch label off objects that no GitLabAgent refers to any more.

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
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import quote, urlencode

import aiohttp
from pydantic import ValidationError

from agent_operator.api import API_VERSION, PLURAL, GitLabAgentSpec
from agent_operator.kube_api import KubeApi
from agent_operator.mapping import SourceRef, sources_of
from agent_operator.sources import Sources

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 500
"""GitLabAgents per list page."""
SWEEP_INTERVAL_S: Final = 300.0
"""Between sweeps: one list of GitLabAgents per 5 minutes is cheap, and a label left by someone else
stays at most that long."""


class ListError(Exception):
    """The GitLabAgents could not be listed; nothing is unlabelled."""


async def sweep_unreferenced(api: KubeApi, sources: Sources) -> int:
    """Unlabel every watched object that no GitLabAgent refers to; returns how many were unlabelled."""
    await sources.wait_synced()
    watched = sources.watched()  # before the list: an object labelled later is not this pass's business
    if not watched:
        return 0
    try:
        referenced, unknown_namespaces = await _references(api, sources.namespaces)
    except ListError as exc:
        log.warning("label sweep skipped: %s", exc)
        return 0
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


async def sweep_periodically(api: KubeApi, sources: Sources, interval: float = SWEEP_INTERVAL_S) -> None:
    """Sweep now and then every `interval` seconds, until cancelled; a failed pass is logged and the next
    one comes as planned."""
    while True:
        try:
            await sweep_unreferenced(api, sources)
        except Exception:
            log.exception("label sweep failed")
        await asyncio.sleep(interval)


async def _references(
    api: KubeApi, namespaces: tuple[str, ...] | None
) -> tuple[frozenset[SourceRef], frozenset[str]]:
    """The objects every GitLabAgent in scope refers to, and the namespaces with an unparsable spec."""
    referenced: set[SourceRef] = set()
    unknown: set[str] = set()
    scopes: list[str | None] = [None] if namespaces is None else list(namespaces)
    for scope in scopes:
        async for item in list_agents(api, scope):
            meta = item.get("metadata") or {}
            namespace = str(meta.get("namespace", ""))
            try:
                spec = GitLabAgentSpec.model_validate(item.get("spec") or {})
            except ValidationError:
                unknown.add(namespace)
                continue
            referenced |= sources_of(namespace, spec)
    return frozenset(referenced), frozenset(unknown)


async def list_agents(api: KubeApi, namespace: str | None) -> AsyncIterator[dict[str, Any]]:
    """Every GitLabAgent of `namespace` (None: of all namespaces), page by page; ListError on failure."""
    base = f"/apis/{API_VERSION}/{PLURAL}"
    if namespace is not None:
        base = f"/apis/{API_VERSION}/namespaces/{quote(namespace, safe='')}/{PLURAL}"
    continue_token = ""
    while True:
        query = {"limit": str(PAGE_SIZE), **({"continue": continue_token} if continue_token else {})}
        try:
            answer = await api.get(f"{base}?{urlencode(query)}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ListError(f"listing GitLabAgents failed: {type(exc).__name__}") from exc
        if not answer.ok or not isinstance(answer.body, dict):
            raise ListError(f"listing GitLabAgents answered {answer.status}: {answer.reason()}")
        for item in answer.body.get("items") or []:
            if isinstance(item, dict):
                yield item
        continue_token = str((answer.body.get("metadata") or {}).get("continue") or "")
        if not continue_token:
            return
