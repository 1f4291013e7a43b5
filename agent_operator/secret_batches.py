"""A burst's token Secret reads: one list of their namespace instead of a GET each.

A new GitLabAgent reads its token Secret (GET) before its agent starts. When fifty were applied at once,
their fifty GETs queued behind the operator's few connections to the API server, beside the status
writes, and the last ones waited over 200 ms: most of the time from apply to Connected for those agents
(docs/benchmarks.md, Session 14). So a read GETs while fewer than BATCH_FROM reads of its
namespace are in flight (a single apply costs no more than before); past that it joins the namespace's
next list. At most LISTS_IN_FLIGHT lists of a namespace are in flight, and the next one gathers the reads
that come meanwhile. Each read takes its Secret from the list by name; one the list does not hold does not
exist (the list began after the read was asked for). A namespace with many more Secrets than the list
waits for is listed one page only (secret_prefetch.list_wanted), and a read its page does not answer GETs,
as does every read of a list that failed or was given up. A batch is not listed but GETs when it gathered
fewer than BATCH_FROM reads, or when its namespace lately held more Secrets than its page would (SIZE_KEPT_S).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from agent_operator.kube_api import KubeApi, ListError
from agent_operator.mapping import SourceKind, SourceRef
from agent_operator.secret_prefetch import PREFETCH_MAX_FACTOR, list_wanted

log = logging.getLogger(__name__)

BATCH_FROM: Final = 4
"""GETs of one namespace's Secrets in flight from which a further read joins a list (our choice: half the
operator's connections, kube_api.CONNECTION_LIMIT)."""
SIZE_KEPT_S: Final = 60.0
"""How long a namespace's Secret count, as a list found it, decides whether a batch lists (our choice: a
burst lasts seconds). When a thousand agents were applied at once to a namespace holding their thousand
token Secrets, a list of four Secrets per read missed most of them, and the reads GET after it: sixty lists
for nothing (docs/benchmarks.md, Session 15)."""
LISTS_IN_FLIGHT: Final = 2
"""Lists of one namespace in flight at once (our choice). With one, the reads that came while a list was
in flight (about 100 ms when fifty agents were applied at once) waited for it to end before theirs began
(docs/benchmarks.md, Session 15); more would add load while a thousand agents start."""

GetOne = Callable[[SourceRef], Awaitable[dict[str, Any] | None]]
"""Reads one object (None: it does not exist)."""


@dataclass(eq=False)
class _Batch:
    """The reads one list of a namespace answers."""

    wanted: set[SourceRef] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    found: dict[SourceRef, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False
    """The whole namespace was listed: a wanted Secret not found does not exist."""


@dataclass(eq=False)
class _Namespace:
    """One namespace's batches while any is not done."""

    lists: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(LISTS_IN_FLIGHT))
    gathering: _Batch | None = None
    """The batch a read joins: its list has not begun."""
    batches: int = 0
    """Batches not done: gathering, waiting for one of `lists`, or listing."""


class SecretBatches:
    """Reads Secrets one by one, or a burst of them in one namespace with lists (see the module)."""

    def __init__(self, api: KubeApi, get_one: GetOne) -> None:
        self._api = api
        self._get_one = get_one
        self._gets: Counter[str] = Counter()
        """GETs in flight per namespace."""
        self._namespaces: dict[str, _Namespace] = {}
        self._sizes: dict[str, tuple[int, float]] = {}
        """Per namespace, its Secrets as a list counted them, and when (monotonic): see `_worth_listing`."""

    async def read(self, source: SourceRef) -> dict[str, Any] | None:
        """The object as the API server has it now; None when it does not exist."""
        namespace = source.namespace
        state = self._namespaces.get(namespace)
        if source.kind is not SourceKind.SECRET or (self._gets[namespace] < BATCH_FROM and state is None):
            return await self._get(source)
        if state is None:
            state = self._namespaces[namespace] = _Namespace()
        batch = state.gathering
        if batch is None:
            batch = state.gathering = _Batch()
            batch.wanted.add(source)
            await self._list(namespace, state, batch)
        else:
            batch.wanted.add(source)
            await batch.done.wait()
        found = batch.found.get(source)
        if found is None and not batch.complete:
            return await self._get(source)
        return found

    async def _get(self, source: SourceRef) -> dict[str, Any] | None:
        self._gets[source.namespace] += 1
        try:
            return await self._get_one(source)
        finally:
            self._gets[source.namespace] -= 1
            if not self._gets[source.namespace]:
                del self._gets[source.namespace]

    async def _list(self, namespace: str, state: _Namespace, batch: _Batch) -> None:
        """List for `batch` once one of the namespace's lists is free; its reads wait for `done`, also
        when this one is cancelled (they GET then)."""
        state.batches += 1
        try:
            await asyncio.sleep(0)  # the reads of the same watch events join first
            async with state.lists:
                if state.gathering is batch:
                    state.gathering = None
                if not self._worth_listing(namespace, len(batch.wanted)):
                    return  # its reads GET
                try:
                    listing = await list_wanted(
                        self._api, namespace, len(batch.wanted), batch.wanted, batch.found
                    )
                    batch.complete = listing.complete
                    self._learn_size(namespace, listing.size)
                except ListError as exc:
                    extra = {"namespace": namespace}
                    log.info("reading the Secrets one by one instead: %s", exc, extra=extra)
        finally:
            if state.gathering is batch:
                state.gathering = None
            batch.done.set()
            state.batches -= 1
            if not state.batches and self._namespaces.get(namespace) is state:
                del self._namespaces[namespace]

    def _worth_listing(self, namespace: str, reads: int) -> bool:
        """Whether a list for `reads` reads of `namespace` pays: not for fewer than BATCH_FROM, nor
        where a list lately counted more Secrets than its page would hold (the page would miss most of
        them, and they would GET after it)."""
        if reads < BATCH_FROM:
            return False
        known = self._sizes.get(namespace)
        if known is None or time.monotonic() - known[1] > SIZE_KEPT_S:
            return True
        return known[0] <= PREFETCH_MAX_FACTOR * reads

    def _learn_size(self, namespace: str, size: int | None) -> None:
        """Keep `namespace`'s Secret count; forget the counts older than SIZE_KEPT_S."""
        if size is None:
            return
        now = time.monotonic()
        self._sizes = {n: known for n, known in self._sizes.items() if now - known[1] <= SIZE_KEPT_S}
        self._sizes[namespace] = (size, now)
