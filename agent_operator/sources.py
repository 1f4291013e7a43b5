"""Secrets and ConfigMaps that GitLabAgents refer to: labelled, watched by label, indexed to agents.

The operator never caches every Secret of the cluster. Each Secret (or ConfigMap, for spec.caCert) that
a GitLabAgent names gets the label `agentk.dev/watched: "true"` (a merge patch, whose answer is also the
first read; for a credential, read and admitted first, the label goes on after its agent started:
deferred_labels.py), and one informer per kind watches only labelled objects. `SourceIndex` maps each
object to the agents that use it, so a change re-maps exactly those agents. When the last GitLabAgent
stops referring to an object (spec changed, resource deleted), the label comes off again.

Anyone who may label a Secret can put it into the watch, so the cache keeps an object's data only while a
GitLabAgent refers to it (it was read for one: `read`; or, at start, a GitLabAgent listed then refers to
it and, for a credential, it opted in to that agent: `expect`) and only up to `MAX_KEPT_DATA_BYTES`;
every other labelled object is kept as its name alone (`DATA_WITHHELD`), and `read` goes to the API
server for it.
The label sweep (label_sweep.py) runs periodically and takes the label off objects nobody refers to.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import aiohttp

from agent_operator.deferred_labels import DeferredLabels, Quiet
from agent_operator.kube_api import KubeApi, core_path
from agent_operator.mapping import (
    ALLOWED_AGENTS_ANNOTATION,
    AgentKey,
    KubeObject,
    SourceKind,
    SourceRef,
    opted_in,
)
from agent_operator.secret_batches import SecretBatches
from agent_operator.secret_prefetch import prefetch_secrets
from agent_runtime.informer import EventType, Informer, ResourceKind, Transform, object_key

log = logging.getLogger(__name__)

WATCHED_LABEL: Final = "agentk.dev/watched"
"""Label the operator puts on every Secret/ConfigMap a GitLabAgent refers to."""
WATCHED_SELECTOR: Final = f"{WATCHED_LABEL}=true"

_KEPT_METADATA: Final = ("name", "namespace", "uid", "resourceVersion", "labels")
_NAME_METADATA: Final = ("name", "namespace", "uid", "resourceVersion")

MAX_KEPT_DATA_BYTES: Final = 1024 * 1024
"""The most of one referenced object's `data` + `binaryData` (keys and values as the API server sends
them: base64 for Secrets) the cache keeps; a larger object is kept without its data and read from the
API server when needed. Agents need a token and a CA bundle, far below this."""
PREFETCH_KEPT_S: Final = 120.0
"""How long Secrets listed at a first start wait for their first read (our choice: a first start reads
them within seconds; what a sharded replica does not run is never read here)."""
DATA_WITHHELD: Final = "dataWithheld"
"""Top-level key (True) of a cached object whose data the cache does not keep."""


def kept_of_source(obj: dict[str, Any]) -> KubeObject:
    """What the cache keeps of a watched Secret or ConfigMap: its data and the metadata that names it.

    Annotations go too: `kubectl apply` leaves a copy of the whole object, token included, in one; only
    the opt-in annotation stays (a Secret that withdraws it must stop being used).
    """
    meta = obj.get("metadata") or {}
    kept: dict[str, Any] = {"metadata": {k: meta[k] for k in _KEPT_METADATA if k in meta}}
    opt_in = (meta.get("annotations") or {}).get(ALLOWED_AGENTS_ANNOTATION)
    if opt_in is not None:
        kept["metadata"]["annotations"] = {ALLOWED_AGENTS_ANNOTATION: opt_in}
    for field in ("type", "data", "binaryData"):
        if field in obj:
            kept[field] = obj[field]
    return kept


def _data_size(obj: KubeObject) -> int:
    total = 0
    for field in ("data", "binaryData"):
        values = obj.get(field)
        if isinstance(values, dict):
            total += sum(len(str(k)) + len(str(v)) for k, v in values.items())
    return total


def name_only(obj: KubeObject) -> KubeObject:
    """What the cache keeps of a labelled object no GitLabAgent refers to: who it is, no data, no labels
    but ours, no annotations (all of which its owner may make as big as the object)."""
    meta = obj.get("metadata") or {}
    kept_meta: dict[str, Any] = {k: meta[k] for k in _NAME_METADATA if k in meta}
    if WATCHED_LABEL in (meta.get("labels") or {}):
        kept_meta["labels"] = {WATCHED_LABEL: meta["labels"][WATCHED_LABEL]}
    return {"metadata": kept_meta, DATA_WITHHELD: True}


def withheld(obj: KubeObject) -> bool:
    """The cached copy carries no data (see `name_only`)."""
    return bool(obj.get(DATA_WITHHELD))


class InformerFactory(Protocol):
    """The runtime's informer accessor (Runtime.informer)."""

    def __call__(self, kind: ResourceKind, *, transform: Transform = ...) -> Informer: ...


SourceChanged = Callable[[SourceRef], None]
Admit = Callable[[KubeObject], bool]
"""Whether an object may be watched (and so cached) for the agent reading it."""


class SourceError(Exception):
    """A referenced object could not be read for a reason other than its absence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        """HTTP status (0 = no answer)."""


def watched_kinds(namespaces: Iterable[str] | None) -> list[ResourceKind]:
    """The informers' kinds: per watched namespace, or cluster-wide when `namespaces` is None."""
    scopes: list[str | None] = [None] if namespaces is None else [*sorted(set(namespaces))]
    return [
        ResourceKind("v1", kind.value, namespace=ns, label_selector=WATCHED_SELECTOR)
        for kind in SourceKind
        for ns in scopes
    ]


class SourceIndex:
    """Which agents use which Secret/ConfigMap."""

    def __init__(self) -> None:
        self._by_source: dict[SourceRef, set[AgentKey]] = {}
        self._by_agent: dict[AgentKey, frozenset[SourceRef]] = {}

    def set(self, agent: AgentKey, sources: frozenset[SourceRef]) -> frozenset[SourceRef]:
        """Record the objects `agent` refers to now (replacing the previous set); returns the objects no
        agent refers to any more."""
        released = self.remove(agent)
        self._by_agent[agent] = sources
        for source in sources:
            self._by_source.setdefault(source, set()).add(agent)
        return released - sources

    def remove(self, agent: AgentKey) -> frozenset[SourceRef]:
        """Forget `agent`; returns the objects no agent refers to any more."""
        released: set[SourceRef] = set()
        for source in self._by_agent.pop(agent, frozenset()):
            users = self._by_source.get(source)
            if users is not None:
                users.discard(agent)
                if not users:
                    del self._by_source[source]
                    released.add(source)
        return frozenset(released)

    def agents(self, source: SourceRef) -> list[AgentKey]:
        """The agents using `source`, sorted."""
        return sorted(self._by_source.get(source, ()))


class Sources:
    """Reads referenced objects from the label-filtered caches, labelling them on first use."""

    def __init__(self, api: KubeApi, namespaces: Iterable[str] | None) -> None:
        self._api = api
        self._kinds = watched_kinds(namespaces)
        self._informers: dict[tuple[SourceKind, str | None], Informer] = {}
        self._cluster_wide = namespaces is None
        self._referenced: set[SourceRef] = set()
        """Objects read for a GitLabAgent and not released since: the cache keeps their data."""
        self._expected: dict[SourceRef, frozenset[str] | None] = {}
        """Objects the GitLabAgents listed at start refer to, until the informers first see them (see
        `expect`)."""
        self._labelled: dict[SourceRef, str] = {}
        """The resourceVersion `read` labelled each object to, until the watch brings that version: the
        reader has it already, and a re-mapping of its agents for the echo of our own label was a second
        reconciliation of every agent at a first start (docs/benchmarks.md, Session 10)."""
        self._changed: SourceChanged | None = None
        self._deferred = DeferredLabels(
            api, {WATCHED_LABEL: "true"}, self._labelled.__setitem__, self._deferred_changed
        )
        """Credentials read and admitted whose label is still to be put on."""
        self._prefetched: dict[SourceRef, dict[str, Any]] = {}
        """Secrets listed at a first start for the GitLabAgents listed then, each until its first read or
        PREFETCH_KEPT_S (a sharded replica reads only its share: the sweep drops the rest then)."""
        self._prefetched_until = 0.0
        self._batches = SecretBatches(api, self._get)
        """Reads of objects not cached yet: a burst of them in one namespace as lists (secret_batches.py)."""

    def expect(self, uses: Mapping[SourceRef, frozenset[str] | None]) -> None:
        """The objects the GitLabAgents that exist at start refer to, each with the agents it must have
        opted in to (credentials; None: a CA bundle, no opt-in). Called before `start`: an object the
        informers' first LIST brings that is labelled already (an earlier run read it) and admitted keeps
        its data, so a restarted operator reads none of its agents' Secrets again (two requests per agent
        on the way to Connected, docs/benchmarks.md "Cold start")."""
        self._expected = dict(uses)

    def _admitted_at_start(self, source: SourceRef, obj: dict[str, Any]) -> bool:
        """Whether `source`, seen by an informer for the first time, was expected and is admitted."""
        if source not in self._expected:
            return False
        agents = self._expected.pop(source)
        return agents is None or any(opted_in(obj, agent) for agent in agents)

    def start(self, informer: InformerFactory, changed: SourceChanged) -> None:
        """Create the informers (through the runtime) and report every change of a watched object."""
        self._changed = changed
        for kind in self._kinds:
            source_kind = SourceKind(kind.plural)
            watcher = informer(kind, transform=functools.partial(self._keep, source_kind))
            self._informers[(source_kind, kind.namespace)] = watcher

            def on_change(
                event: EventType, old: KubeObject | None, new: KubeObject | None, k: SourceKind = source_kind
            ) -> None:
                obj = new if new is not None else old
                meta = (obj or {}).get("metadata") or {}
                if not (meta.get("namespace") and meta.get("name")):
                    return
                source = SourceRef(k, str(meta["namespace"]), str(meta["name"]))
                labelled = self._labelled.pop(source, None)
                if event is EventType.ADDED and (
                    (labelled is not None and labelled == meta.get("resourceVersion"))
                    or self._deferred.writing(source)
                ):
                    return  # the echo of our own label: its reader has this very version
                changed(source)

            watcher.add_handler(on_change, replay=False)

    def _deferred_changed(self, source: SourceRef) -> None:
        if self._changed is not None:
            self._changed(source)

    async def label_deferred(self, quiet: Quiet) -> None:
        """Put the deferred watch labels on (see deferred_labels.py) until cancelled."""
        await self._deferred.run(quiet)

    async def prefetch(self) -> None:
        """After `wait_synced`: list the Secrets the GitLabAgents listed at start refer to and the caches do
        not hold, where that saves many reads (secret_prefetch.py)."""
        kind = SourceKind.SECRET
        wanted = {ref for ref in self._expected if ref.kind is kind and self._cached(ref) is None}
        listed = await prefetch_secrets(self._api, wanted)
        for ref, obj in listed.items():
            if _data_size(obj) <= MAX_KEPT_DATA_BYTES:
                self._prefetched[ref] = dict(kept_of_source(obj))
        self._prefetched_until = time.monotonic() + PREFETCH_KEPT_S

    async def wait_synced(self) -> None:
        """Return once every informer has listed its objects."""
        for watcher in self._informers.values():
            await watcher.wait_synced()

    def watched(self) -> frozenset[SourceRef]:
        """Every object that carries the watch label now, as the caches know it."""
        found: set[SourceRef] = set()
        for (kind, _), watcher in self._informers.items():
            for obj in watcher.store.items():
                meta = obj.get("metadata") or {}
                found.add(SourceRef(kind, str(meta.get("namespace", "")), str(meta.get("name", ""))))
        return frozenset(found)

    @property
    def namespaces(self) -> tuple[str, ...] | None:
        """The watched namespaces; None = all."""
        if self._cluster_wide:
            return None
        return tuple(sorted({ns for _, ns in self._informers if ns is not None}))

    def referenced(self) -> frozenset[SourceRef]:
        """The objects whose data the cache keeps."""
        return frozenset(self._referenced)

    def _keep(self, kind: SourceKind, obj: dict[str, Any]) -> KubeObject:
        """The informers' transform: data only for referenced objects, and only up to the cap."""
        meta = obj.get("metadata") or {}
        source = SourceRef(kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
        if source not in self._referenced and self._admitted_at_start(source, obj):
            self._referenced.add(source)
        if source in self._referenced and _data_size(obj) <= MAX_KEPT_DATA_BYTES:
            return kept_of_source(obj)
        return name_only(obj)

    def _informer(self, source: SourceRef) -> Informer | None:
        scope = None if self._cluster_wide else source.namespace
        return self._informers.get((source.kind, scope))

    def _cached(self, source: SourceRef) -> KubeObject | None:
        informer = self._informer(source)
        return informer.store.get(source.store_key) if informer is not None else None

    def _refill(self, source: SourceRef, fresh: dict[str, Any]) -> None:
        """The cache holds `source` without data, and we just read it whole: keep its data from now."""
        informer = self._informer(source)
        if informer is not None and object_key(fresh) == source.store_key:
            informer.refill(fresh)

    def keep_data_of(self, referenced: frozenset[SourceRef], unknown_namespaces: frozenset[str]) -> None:
        """The sweep's view (every GitLabAgent listed): release what none refers to, except in namespaces
        whose references are unknown. An object read for a GitLabAgent created meanwhile may be released
        too; `read` then fetches it again."""
        for source in list(self._referenced):
            if source not in referenced and source.namespace not in unknown_namespaces:
                self.release(source)
        if time.monotonic() > self._prefetched_until:
            self._prefetched.clear()
        for source in list(self._prefetched):
            if source not in referenced and source.namespace not in unknown_namespaces:
                del self._prefetched[source]  # listed for a GitLabAgent that went before reading it

    def release(self, source: SourceRef) -> None:
        """No GitLabAgent refers to `source` any more: the cache drops its data now (label or not)."""
        self._referenced.discard(source)
        self._labelled.pop(source, None)
        self._deferred.discard(source)
        self._prefetched.pop(source, None)
        informer = self._informer(source)
        if informer is not None:
            informer.retransform(source.store_key)

    async def read(self, source: SourceRef, admit: Admit | None = None) -> KubeObject | None:
        """The object (None when it does not exist); labels it for the watch when it is not cached yet.

        With `admit`, an uncached object is read first and labelled only if admitted, after its agent
        started (deferred_labels.py): a Secret that has not opted in to the agent is neither changed nor
        cached (the caller re-reads it later).
        """
        cached = self._cached(source)
        if cached is not None and not withheld(cached):
            return cached
        read_unlabelled = self._deferred.get(source)
        if read_unlabelled is not None:
            return read_unlabelled
        path = core_path(source.namespace, source.kind.value, source.name)
        if admit is not None:
            whole = self._prefetched.pop(source, None) or await self._batches.read(source)
            if whole is None:
                return None
            if not admit(kept_of_source(whole)):
                return kept_of_source(whole)
            self._referenced.add(source)
            if cached is not None:  # labelled already (the cache holds it without data): no patch
                self._refill(source, whole)
            else:
                self._deferred.add(source, kept_of_source(whole))
            return whole
        self._referenced.add(source)  # before the label: the watch event that follows keeps the data
        answer = await self._api.merge_patch(path, {"metadata": {"labels": {WATCHED_LABEL: "true"}}})
        if answer.status == 404:
            return None
        if not answer.ok or not isinstance(answer.body, dict):
            verb = f"patch {source.kind.value}"
            raise SourceError(
                answer.status, f"cannot {verb} {source.namespace}/{source.name}: {answer.reason()}"
            )
        if cached is not None:
            self._refill(source, answer.body)
        else:
            version = (answer.body.get("metadata") or {}).get("resourceVersion")
            if version:
                self._labelled[source] = str(version)
        return answer.body

    async def _get(self, source: SourceRef) -> dict[str, Any] | None:
        """The object read from the API server; None when it does not exist."""
        current = await self._api.get(core_path(source.namespace, source.kind.value, source.name))
        if current.status == 404:
            return None
        if not current.ok or not isinstance(current.body, dict):
            raise SourceError(
                current.status,
                f"cannot get {source.kind.value} {source.namespace}/{source.name}: {current.reason()}",
            )
        return current.body

    async def unwatch(self, source: SourceRef) -> bool:
        """No GitLabAgent refers to `source` any more: take the watch label off (a JSON merge patch with
        null). Best effort: a missing object is fine, a refusal is logged and the label stays (False).
        Either way the cache drops its data at once."""
        self.release(source)
        path = core_path(source.namespace, source.kind.value, source.name)
        unlabel = {"metadata": {"labels": {WATCHED_LABEL: None}}}
        try:
            answer = await self._api.merge_patch(path, unlabel, decode=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = type(exc).__name__
        else:
            if answer.ok or answer.status == 404:
                return True
            why = answer.reason()
        what = f"{source.kind.value} {source.namespace}/{source.name}"
        log.warning("could not remove the %s label from %s: %s", WATCHED_LABEL, what, why)
        return False
