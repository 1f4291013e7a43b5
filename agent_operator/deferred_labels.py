"""Watch labels put on credentials after their agents started: a fleet's statuses before housekeeping.

An opted-in Secret is read (GET) and admitted before its agent starts. The watch label that lets the
informer see its later changes (sources.py) is a write of its own, and when a thousand agents start at
once, a thousand label writes (and their watch events) took API server time from the statuses that say
the agents are Connected (docs/benchmarks.md, Session 12). So the label goes on here, once no status waits
to be written, or at the latest LABEL_YIELD_S after the read; with the version read as a precondition: a
Secret changed in between (409) or gone (404) is reported as changed, and its agents read it again. Until
its label is on, `get` answers for the object as it was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp

from agent_operator.kube_api import KubeApi, core_path
from agent_operator.mapping import KubeObject, SourceRef

log = logging.getLogger(__name__)

LABEL_YIELD_S: Final = 10.0
"""A label waits while statuses are being written, at most this long after its object was read (our
choice: Events yield to status writes the same way, status_writer.EVENTS_YIELD_TO_WRITES_S)."""
LABELS_IN_FLIGHT: Final = 2
"""Label writes at once (our choice: background work, beside the status writes' slots)."""
RETRY_S: Final = 5.0
"""Wait before labelling again after a failed write (a transport error, 429 or 5xx)."""

Quiet = Callable[[], Awaitable[None]]
"""Returns once no status waits to be written, a first one included (StatusWriter.wait_idle)."""


@dataclass(frozen=True)
class _Pending:
    obj: KubeObject
    """The object as it was read (and admitted)."""
    version: str
    """Its resourceVersion: the label goes on this version only."""
    due: float
    """time.monotonic() after which the label stops yielding to status writes."""


class DeferredLabels:
    """Objects read for an agent whose watch label is still to be put on."""

    def __init__(
        self,
        api: KubeApi,
        labels: Mapping[str, str],
        labelled: Callable[[SourceRef, str], None],
        changed: Callable[[SourceRef], None],
    ) -> None:
        """`labels`: the labels to put on; `labelled(source, version)`: the label is on
        (the version it made); `changed(source)`: the object changed or went before it was labelled."""
        self._api = api
        self._labels = dict(labels)
        self._labelled = labelled
        self._changed = changed
        self._pending: dict[SourceRef, _Pending] = {}
        self._writing: dict[SourceRef, _Pending] = {}
        self._queued = asyncio.Event()

    def add(self, source: SourceRef, obj: KubeObject) -> None:
        """Label `source` (as read: `obj`) later."""
        version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        self._pending[source] = _Pending(obj, version, time.monotonic() + LABEL_YIELD_S)
        self._queued.set()

    def get(self, source: SourceRef) -> KubeObject | None:
        """The object as read, while its label is not on yet."""
        pending = self._pending.get(source) or self._writing.get(source)
        return pending.obj if pending is not None else None

    def writing(self, source: SourceRef) -> bool:
        """The label of `source` is being written: a watch event that brings the object now is its echo
        (a change in between fails the write, which reports it)."""
        return source in self._writing

    def discard(self, source: SourceRef) -> None:
        """No agent refers to `source` any more: no label for it (one being written stays: the sweep takes
        it off again)."""
        self._pending.pop(source, None)
        self._writing.pop(source, None)

    def __len__(self) -> int:
        return len(self._pending) + len(self._writing)

    async def run(self, quiet: Quiet) -> None:
        """Put the labels on until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for n in range(LABELS_IN_FLIGHT):
                tg.create_task(self._work(quiet), name=f"deferred-labels-{n}")

    async def _work(self, quiet: Quiet) -> None:
        while True:
            while not self._pending:
                self._queued.clear()
                await self._queued.wait()
            source, pending = next(iter(self._pending.items()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, pending.due - time.monotonic())):
                    await quiet()
            if self._pending.get(source) is not pending:
                continue  # discarded, or taken by the other writer, while this one waited
            del self._pending[source]
            self._writing[source] = pending
            try:
                retry = await self._write(source, pending)
            finally:
                taken = self._writing.pop(source, None)
            if retry and taken is pending and source not in self._pending:
                await asyncio.sleep(RETRY_S)
                self._pending.setdefault(source, pending)

    async def _write(self, source: SourceRef, pending: _Pending) -> bool:
        """Label `source` if it is still the version read; True when it is worth another try."""
        path = core_path(source.namespace, source.kind.value, source.name)
        patch = {"metadata": {"labels": self._labels, "resourceVersion": pending.version}}
        what = f"{source.kind.value} {source.namespace}/{source.name}"
        try:
            answer = await self._api.merge_patch(path, patch)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not label %s for the watch: %s; trying again", what, type(exc).__name__)
            return True
        if answer.ok and isinstance(answer.body, dict):
            version = (answer.body.get("metadata") or {}).get("resourceVersion")
            if self._writing.get(source) is pending and version:
                self._labelled(source, str(version))
            return False
        if answer.status in (404, 409):
            self._changed(source)  # gone, or changed since it was read: its agents read it again
            return False
        retry = answer.status == 429 or answer.status >= 500
        log.warning("could not label %s for the watch: %s", what, answer.reason())
        return retry
