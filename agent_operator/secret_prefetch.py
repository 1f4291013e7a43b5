"""A first start's token Secrets in one list per namespace instead of one read per agent.

At a first start (nothing labelled yet) every GitLabAgent read its token Secret with a GET of its own
before its agent could start: a thousand requests queued on the operator's connections ahead of the
statuses, and each cost the operator about a millisecond of its event loop (docs/benchmarks.md,
Session 12). Where the GitLabAgents listed at start refer to at least PREFETCH_MIN_SECRETS Secrets of one
namespace that the label-selected caches do not hold, the operator lists that namespace's Secrets once,
page by page, and keeps only those referred to (as the cache would keep them: sources.kept_of_source).
Each is handed out once (sources.py), to the first read, which admits it as it would a GET's answer;
the list of a namespace with many more Secrets than referred to stops after its first page
(PREFETCH_MAX_FACTOR), and those reads GET as before. Nothing else of the list is kept.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Final

from agent_operator.kube_api import KubeApi, ListError, core_path, list_pages
from agent_operator.mapping import SourceKind, SourceRef

log = logging.getLogger(__name__)

PREFETCH_MIN_SECRETS: Final = 16
"""Referred-to Secrets of one namespace from which one list is cheaper than a GET each (our choice)."""
PREFETCH_MAX_FACTOR: Final = 4
"""A namespace holding more than this many Secrets per referred-to one is not listed past its first page
(our choice: the list would read far more than it saves)."""


async def prefetch_secrets(api: KubeApi, wanted: Collection[SourceRef]) -> dict[SourceRef, dict[str, Any]]:
    """The Secrets of `wanted` found by listing their namespaces (those with enough of them), as listed."""
    per_namespace = Counter(ref.namespace for ref in wanted if ref.kind is SourceKind.SECRET)
    found: dict[SourceRef, dict[str, Any]] = {}
    for namespace, count in sorted(per_namespace.items()):
        if count < PREFETCH_MIN_SECRETS:
            continue
        try:
            await list_wanted(api, namespace, count, wanted, found)
        except ListError as exc:
            log.info("reading the Secrets one by one instead: %s", exc, extra={"namespace": namespace})
    return found


@dataclass(frozen=True)
class Listing:
    """What one `list_wanted` learnt of a namespace."""

    complete: bool
    """The whole namespace was listed: a wanted Secret not found does not exist."""
    size: int | None
    """Secrets in the namespace, as the list counted them (None: its first page did not say)."""


async def list_wanted(
    api: KubeApi,
    namespace: str,
    count: int,
    wanted: Collection[SourceRef],
    found: dict[SourceRef, dict[str, Any]],
) -> Listing:
    """Add the Secrets of `wanted` (`count` of them in `namespace`) found by listing `namespace` to `found`;
    complete when the whole namespace was listed, not when the list stopped after its first page
    (PREFETCH_MAX_FACTOR). ListError when a page fails.

    A page holds at most PREFETCH_MAX_FACTOR objects per wanted one: a namespace full of other, large
    Secrets (Helm's releases, say) costs at most that many times the GETs' data before the list stops."""
    path, what = core_path(namespace, "secrets"), f"the Secrets of {namespace}"
    first, listed = True, 0
    async for page in list_pages(api, path, what, limit=PREFETCH_MAX_FACTOR * count):
        items = page.get("items") or []
        listed += len(items)
        for item in items:
            meta = item.get("metadata") if isinstance(item, dict) else None
            if not isinstance(meta, dict):
                continue
            ref = SourceRef(SourceKind.SECRET, namespace, str(meta.get("name", "")))
            if ref in wanted:
                found[ref] = item
        remaining = (page.get("metadata") or {}).get("remainingItemCount")
        if first and isinstance(remaining, int) and len(items) + remaining > PREFETCH_MAX_FACTOR * count:
            return Listing(False, len(items) + remaining)  # mostly other Secrets: the rest read one by one
        first = False
    return Listing(True, listed)
