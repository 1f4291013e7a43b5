"""Informer cache: one shared list+watch per resource type per process, with an indexed read-only store.

An `Informer` lists a resource (paginated), then watches it from the list's resourceVersion with
`allowWatchBookmarks=true`; after a watch ends or breaks it resumes from the last resourceVersion seen
(an object's or a bookmark's); when the API server answers 410 Gone (the version was compacted away) it
lists again and reports the difference as changes. `SharedInformers` hands out one informer per
`ResourceKind` and owns their tasks.

The first consumer is token rotation: the operator labels the Secrets and ConfigMaps its agents refer to
and watches only those (a label selector), so the cache never holds the cluster's other Secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import aiohttp

from agent_runtime.backoff import Backoff, BackoffPolicy
from agent_runtime.kube import KubeAccess

log = logging.getLogger(__name__)

KubeObject = Mapping[str, Any]
"""A Kubernetes object as decoded JSON (treat as read-only: it is shared by every reader)."""

Transform = Callable[[dict[str, Any]], KubeObject]
"""What the store keeps of each listed or watched object, before indexing and handlers. It receives
freshly decoded JSON that nobody else holds, and must keep `metadata.name`, `namespace` and
`resourceVersion`."""


def strip_managed_fields(obj: dict[str, Any]) -> KubeObject:
    """The default Transform: the object without `metadata.managedFields`, which no consumer reads and
    which is most of a small object's size."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


WATCH_TIMEOUT_RANGE_S: Final = (300, 600)
"""The server ends each watch after a random 5-10 min, as client-go's reflector asks (timeoutSeconds)."""

PAGE_SIZE: Final = 500
"""Objects per list page (client-go's default)."""

RETRY_BACKOFF: Final = BackoffPolicy(initial=0.8, cap=30.0, factor=2.0, jitter=1.0, reset_after=120.0)
"""Our choice, close to client-go's reflector: after a failed list or watch."""

_LIST_TIMEOUT_S: Final = 120.0
"""One list page must arrive within this (client-go uses no timeout; a dead connection must not hang us)."""

_MAX_LINE_BYTES: Final = 64 * 1024 * 1024
"""A watch event larger than this is a protocol error (objects are at most ~1.5 MiB in etcd)."""


@dataclass(frozen=True)
class ResourceKind:
    """Which objects one informer caches."""

    api_version: str
    """`v1` for the core group, else `<group>/<version>`, e.g. `apps/v1`."""
    plural: str
    """Resource name in URLs, e.g. `secrets`."""
    namespace: str | None = None
    """Only this namespace; None = all namespaces."""
    label_selector: str | None = None
    """Server-side label selector, e.g. `agentk.dev/watched=true`."""
    field_selector: str | None = None
    """Server-side field selector."""

    def path(self) -> str:
        """The collection URL path."""
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{prefix}{scope}/{self.plural}"

    def params(self) -> dict[str, str]:
        """Selector query parameters shared by list and watch."""
        params: dict[str, str] = {}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params


class EventType(enum.StrEnum):
    """What happened to a cached object."""

    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


ChangeCallback = Callable[[EventType, KubeObject | None, KubeObject | None], None]
"""callback(event, old, new): old is None for ADDED, new is None for DELETED."""
IndexFunc = Callable[[KubeObject], Iterable[str]]
"""Index values of an object (e.g. a label value)."""


class GoneError(Exception):
    """The API server no longer has the requested resourceVersion (HTTP 410 / watch ERROR 410)."""


class ApiError(Exception):
    """A list or watch request failed with an HTTP status (message carries the API server's reason)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def object_key(obj: KubeObject) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name", "")
    return f"{namespace}/{name}" if namespace else str(name)


def _resource_version(obj: KubeObject) -> str | None:
    meta = obj.get("metadata") or {}
    rv = meta.get("resourceVersion")
    return str(rv) if rv else None


class Store:
    """The informer's read-only view: objects by key and by named indexes."""

    def __init__(self, indexers: Mapping[str, IndexFunc]) -> None:
        self._objects: dict[str, KubeObject] = {}
        self._indexers = dict(indexers)
        self._indexes: dict[str, dict[str, set[str]]] = {name: {} for name in indexers}

    def get(self, key: str) -> KubeObject | None:
        """The object with key `namespace/name` (or `name`), or None."""
        return self._objects.get(key)

    def keys(self) -> frozenset[str]:
        """Keys of every cached object."""
        return frozenset(self._objects)

    def items(self) -> list[KubeObject]:
        """Every cached object."""
        return list(self._objects.values())

    def by_index(self, index: str, value: str) -> list[KubeObject]:
        """Objects whose index function returned `value` (KeyError for an unknown index)."""
        keys = self._indexes[index].get(value, set())
        return [self._objects[k] for k in sorted(keys)]

    def __len__(self) -> int:
        return len(self._objects)

    # --- mutation: only the informer calls these ---------------------------------------------------
    def _put(self, obj: KubeObject) -> KubeObject | None:
        key = object_key(obj)
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key, old)
        frozen = MappingProxyType(dict(obj))
        self._objects[key] = frozen
        for name, func in self._indexers.items():
            for value in func(frozen):
                self._indexes[name].setdefault(value, set()).add(key)
        return old

    def _delete(self, key: str) -> KubeObject | None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _unindex(self, key: str, obj: KubeObject) -> None:
        for name, func in self._indexers.items():
            for value in func(obj):
                keys = self._indexes[name].get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._indexes[name][value]


class Informer:
    """List+watch of one ResourceKind into a Store; `run()` until cancelled."""

    def __init__(
        self,
        kube: KubeAccess,
        kind: ResourceKind,
        *,
        indexers: Mapping[str, IndexFunc] | None = None,
        transform: Transform = strip_managed_fields,
        retry: BackoffPolicy = RETRY_BACKOFF,
        watch_timeout_range: tuple[int, int] = WATCH_TIMEOUT_RANGE_S,
    ) -> None:
        self.kind = kind
        """What this informer caches."""
        self.store = Store(indexers or {})
        """The cache; read-only for consumers."""
        self._kube = kube
        self._transform = transform
        self._retry = retry
        self._watch_timeouts = watch_timeout_range
        self._callbacks: list[ChangeCallback] = []
        self._synced = asyncio.Event()
        self.resource_version: str | None = None
        """The last resourceVersion seen (list, object or bookmark): where a watch resumes."""
        self.lists = 0
        """How many full lists have completed (1 + the relists after 410 Gone)."""
        self.bookmarks = 0
        """How many bookmark events arrived."""
        self.last_error: str | None = None
        """Why the last list or watch failed (e.g. `ApiError: HTTP 403: ...`), None once one succeeds."""

    def add_handler(self, callback: ChangeCallback, *, replay: bool = True) -> Callable[[], None]:
        """Call `callback` on every change; with `replay`, first as ADDED for each cached object."""
        if replay:
            for obj in self.store.items():
                self._call(callback, EventType.ADDED, None, obj)
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def refill(self, obj: dict[str, Any]) -> bool:
        """Store what the transform keeps of `obj`, read from the API server outside the watch, if the store
        holds that very version of it (same resourceVersion): a transform that now keeps more (see
        agent_operator.sources) gets it without waiting for the object to change. Nothing changed, so no
        handler is called. Returns whether it was stored. The transform receives `obj` itself."""
        key = object_key(obj)
        cached = self.store.get(key)
        if (
            cached is None
            or _resource_version(cached) != _resource_version(obj)
            or not _resource_version(obj)
        ):
            return False
        self.store._put(self._transform(obj))
        return True

    def retransform(self, key: str) -> None:
        """Apply the transform again to the stored copy of `key` (what it keeps has changed: it may keep
        less now); no handler is called."""
        cached = self.store.get(key)
        if cached is not None:
            self.store._put(self._transform(dict(cached)))

    async def wait_synced(self) -> None:
        """Return once the first list has filled the store."""
        await self._synced.wait()

    @property
    def synced(self) -> bool:
        """True after the first complete list."""
        return self._synced.is_set()

    async def run(self) -> None:
        """List, then watch and resume, relisting after 410 Gone, until cancelled.

        Run again after a cancel, it resumes from `resource_version` with the store as it was.
        """
        backoff = Backoff(self._retry)
        need_list = self.resource_version is None
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    self.last_error = None
                await self._watch()
                backoff.reset()  # the server closed the watch normally: resume at once
            except GoneError:
                log.info("resourceVersion too old: relisting", extra={"resource": self.kind.path()})
                need_list = True
            except (aiohttp.ClientError, ApiError, TimeoutError, ValueError) as exc:
                if isinstance(exc, ApiError) and exc.status == 401:
                    self._kube.invalidate_credentials()
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "list/watch failed; retrying",
                    extra={"resource": self.kind.path(), "error": f"{type(exc).__name__}: {exc}"},
                )
                await backoff.sleep()
            except Exception:  # one informer's bug must not stop the process's other informers
                log.exception(
                    "informer failed; retrying with a full list", extra={"resource": self.kind.path()}
                )
                need_list = True
                await backoff.sleep()

    # --- list -----------------------------------------------------------------------------------
    async def _list(self) -> None:
        fresh: dict[str, KubeObject] = {}
        continue_token: str | None = None
        list_rv: str | None = None
        while True:
            params = {**self.kind.params(), "limit": str(PAGE_SIZE)}
            if continue_token:
                params["continue"] = continue_token
            body = await self._get_json(params)
            for item in body.get("items") or []:
                fresh[object_key(item)] = self._transform(item)
            meta = body.get("metadata") or {}
            list_rv = meta.get("resourceVersion") or list_rv
            continue_token = meta.get("continue") or None
            if not continue_token:
                break
        self._replace(fresh)
        self.resource_version = list_rv
        self.lists += 1
        self._synced.set()

    def _replace(self, fresh: dict[str, KubeObject]) -> None:
        for key in self.store.keys() - fresh.keys():
            old = self.store._delete(key)
            self._emit(EventType.DELETED, old, None)
        for key, obj in fresh.items():
            existing = self.store.get(key)
            if existing is not None and _resource_version(existing) == _resource_version(obj):
                continue
            old = self.store._put(obj)
            self._emit(EventType.ADDED if old is None else EventType.MODIFIED, old, self.store.get(key))

    async def _get_json(self, params: Mapping[str, str]) -> dict[str, Any]:
        headers = {"Accept": "application/json", **self._kube.auth_headers()}
        async with self._kube.session.get(
            self._kube.url(self.kind.path()),
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=_LIST_TIMEOUT_S, sock_connect=10),
        ) as response:
            if response.status == 410:
                raise GoneError("list continue token expired")
            if response.status != 200:
                raise ApiError(response.status, await _reason(response))
            body: dict[str, Any] = await response.json()
            return body

    # --- watch ----------------------------------------------------------------------------------
    async def _watch(self) -> None:
        low, high = self._watch_timeouts
        params = {
            **self.kind.params(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(random.randint(low, high)),  # noqa: S311 - spreading load, not crypto
        }
        if self.resource_version:
            params["resourceVersion"] = self.resource_version
        headers = {"Accept": "application/json", **self._kube.auth_headers()}
        # The server ends the watch after timeoutSeconds; the margin catches a silently dead connection.
        timeout = aiohttp.ClientTimeout(total=high + 60, sock_connect=10)
        async with self._kube.session.get(
            self._kube.url(self.kind.path()),
            params=params,
            headers=headers,
            timeout=timeout,
        ) as response:
            if response.status == 410:
                raise GoneError("watch resourceVersion expired")
            if response.status != 200:
                raise ApiError(response.status, await _reason(response))
            async for line in _lines(response.content):
                self._handle_event(json.loads(line))

    def _handle_event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise GoneError(str(obj.get("message", "")))
            raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "")))
        rv = _resource_version(obj)
        if kind == "BOOKMARK":
            self.bookmarks += 1
        elif kind in ("ADDED", "MODIFIED"):
            old = self.store._put(self._transform(obj))
            new = self.store.get(object_key(obj))
            self._emit(EventType.ADDED if old is None else EventType.MODIFIED, old, new)
        elif kind == "DELETED":
            old = self.store._delete(object_key(obj))
            if old is not None:
                self._emit(EventType.DELETED, old, None)
        else:
            raise ValueError(f"unknown watch event type {kind!r}")
        if rv:
            self.resource_version = rv

    def _emit(self, event: EventType, old: KubeObject | None, new: KubeObject | None) -> None:
        for callback in list(self._callbacks):
            self._call(callback, event, old, new)

    def _call(
        self, callback: ChangeCallback, event: EventType, old: KubeObject | None, new: KubeObject | None
    ) -> None:
        try:
            callback(event, old, new)
        except Exception:
            log.exception("informer change handler failed", extra={"resource": self.kind.path()})


async def _reason(response: aiohttp.ClientResponse) -> str:
    with contextlib.suppress(aiohttp.ClientError, ValueError, UnicodeDecodeError):
        status = await response.json(content_type=None)
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])[:300]
    return response.reason or "error"


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited chunks of a watch stream, of any size (aiohttp's readline caps at 128 KiB)."""
    buffer = bytearray()
    async for chunk in stream.iter_any():
        buffer.extend(chunk)
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end]).strip()
            del buffer[: end + 1]
            if line:
                yield line
        if len(buffer) > _MAX_LINE_BYTES:
            raise ValueError("watch event larger than the limit")
    if buffer.strip():
        yield bytes(buffer).strip()


class SharedInformers:
    """One informer per ResourceKind for the whole process; `run()` owns their tasks until cancelled."""

    def __init__(self, kube: KubeAccess) -> None:
        self._kube = kube
        self._informers: dict[ResourceKind, Informer] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._started = asyncio.Event()

    def get(
        self,
        kind: ResourceKind,
        *,
        indexers: Mapping[str, IndexFunc] | None = None,
        transform: Transform = strip_managed_fields,
    ) -> Informer:
        """The informer of `kind`, created and started on first request (indexers and transform only
        count then)."""
        informer = self._informers.get(kind)
        if informer is None:
            if self._tg is None:
                raise RuntimeError("SharedInformers is not running")
            informer = Informer(self._kube, kind, indexers=indexers, transform=transform)
            self._informers[kind] = informer
            self._tg.create_task(informer.run(), name=f"informer:{kind.path()}?{kind.label_selector or ''}")
        return informer

    async def wait_started(self) -> None:
        """Return once `get()` may be called."""
        await self._started.wait()

    async def run(self) -> None:
        """Run every informer created through `get()` until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._started.set()
                await asyncio.Event().wait()
        finally:
            self._tg = None
