"""A burst's token Secret reads: one list of their namespace instead of a GET each.

A new GitLabAgent reads its token Secret (GET) before its agent starts. When fifty were applied at once,
their fifty GETs queued behind the operator's few connections to the API server, beside the status
writes, and the last ones waited over 200 ms: most of the time from apply to Connected for those agents
(docs/benchmarks.md, Session 14). So a read GETs while fewer than BATCH_FROM reads of its
namespace are in flight (a single apply costs no more than before); past that it joins the namespace's
next list. One list per namespace is in flight at a time, and the next one gathers the reads that come
meanwhile. Each read takes its Secret from the list by name; one the list does not hold does not exist
(the list began after the read was asked for). A namespace with many more Secrets than the list waits for
is listed one page only (secret_prefetch.list_wanted), and a read its page does not answer GETs, as does
every read of a list that failed or was given up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from agent_operator.kube_api import KubeApi, ListError
from agent_operator.mapping import SourceKind, SourceRef
from agent_operator.secret_prefetch import list_wanted

log = logging.getLogger(__name__)

BATCH_FROM: Final = 4
"""GETs of one namespace's Secrets in flight from which a further read joins a list (our choice: half the
operator's connections, kube_api.CONNECTION_LIMIT)."""

GetOne = Callable[[SourceRef], Awaitable[dict[str, Any] | None]]
"""Reads one object (None: it does not exist)."""


@dataclass(eq=False)
class _Batch:
    """The reads one list of a namespace answers."""

    after: _Batch | None
    """The namespace's list before this one: this one begins once it is done."""
    wanted: set[SourceRef] = field(default_factory=set)
    started: bool = False
    """Listing: a read that comes now joins the next batch."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    found: dict[SourceRef, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False
    """The whole namespace was listed: a wanted Secret not found does not exist."""


class SecretBatches:
    """Reads Secrets one by one, or a burst of them in one namespace with lists (see the module)."""

    def __init__(self, api: KubeApi, get_one: GetOne) -> None:
        self._api = api
        self._get_one = get_one
        self._gets: Counter[str] = Counter()
        """GETs in flight per namespace."""
        self._latest: dict[str, _Batch] = {}
        """Per namespace, its newest batch while it is not done."""

    async def read(self, source: SourceRef) -> dict[str, Any] | None:
        """The object as the API server has it now; None when it does not exist."""
        namespace = source.namespace
        if source.kind is not SourceKind.SECRET or (
            self._gets[namespace] < BATCH_FROM and namespace not in self._latest
        ):
            return await self._get(source)
        batch = self._latest.get(namespace)
        if batch is None or batch.started:
            batch = self._latest[namespace] = _Batch(after=batch)
            batch.wanted.add(source)
            await self._list(namespace, batch)
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

    async def _list(self, namespace: str, batch: _Batch) -> None:
        """List for `batch`, once the namespace's list before it is done; its reads wait for `done`, also
        when this one is cancelled (they GET then)."""
        try:
            await asyncio.sleep(0)  # the reads of the same watch events join first
            if batch.after is not None:
                await batch.after.done.wait()
                batch.after = None  # its Secrets are its own readers' to keep, not this batch's
            batch.started = True
            try:
                batch.complete = await list_wanted(
                    self._api, namespace, len(batch.wanted), batch.wanted, batch.found
                )
            except ListError as exc:
                log.info("reading the Secrets one by one instead: %s", exc, extra={"namespace": namespace})
        finally:
            batch.started = True
            batch.done.set()
            if self._latest.get(namespace) is batch:
                del self._latest[namespace]
