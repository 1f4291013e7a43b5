"""AgentController: desired state of every GitLabAgent this process handles → Runtime + StatusWriter.

Handlers hand it the latest resource body; it validates the spec, reads the token (and CA) through
`Sources`, maps everything to a WorkerSpec and applies it, or records why it cannot (status Failed with a
reason and hint; never an exception for bad input). A change of a watched Secret/ConfigMap re-maps exactly
the agents that use it (background tasks owned by `run()`). One lock per resource serialises the
handler's and the background's reconciliations, and each always uses the latest body.

Whether an agent that could run may run is `Admission`'s decision (admission.py: one token, one
connection; at most N agents per namespace); a change that moves another agent's decision re-maps that
agent. The ServiceAccountFound fact comes from `ServiceAccounts` (a name-only cache).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from pydantic import ValidationError

from agent_operator.admission import WAIT, Admission, Candidate, TokenDigest, token_digest
from agent_operator.api import GitLabAgentSpec, Phase
from agent_operator.events import EventRecorder, ObjectRef
from agent_operator.keyed import KeyedTasks
from agent_operator.label_sweep import AgentListing
from agent_operator.logs import resource_extra
from agent_operator.mapping import (
    AgentKey,
    RefKind,
    SourceRef,
    Unresolved,
    credential_sources,
    opted_in,
    resolve,
    sources_of,
)
from agent_operator.metrics import OperatorMetrics
from agent_operator.policy_flags import AdmissionLimits
from agent_operator.service_accounts import ServiceAccounts
from agent_operator.sources import Admit, SourceError, SourceIndex, Sources
from agent_operator.status_mapping import AgentFacts, EventSpec, Problem, ProblemKind, phase_of
from agent_operator.status_writer import StatusWriter, parse_status
from agent_runtime.spec import WorkerSnapshot, WorkerSpec
from agent_runtime.versions import KubernetesSupport

log = logging.getLogger(__name__)

_READY_PHASES = frozenset({Phase.CONNECTED, Phase.DEGRADED, Phase.FAILED})
_SOURCE_PROBLEMS = frozenset(
    {ProblemKind.TOKEN, ProblemKind.CA_CERT, ProblemKind.CREDENTIAL, ProblemKind.FORBIDDEN}
)
_PROBLEM_KINDS = {
    RefKind.TOKEN: ProblemKind.TOKEN,
    RefKind.CA_CERT: ProblemKind.CA_CERT,
    RefKind.CREDENTIAL: ProblemKind.CREDENTIAL,
}
EXPECT_LIMIT_S = 30.0
"""Our choice: after this long from the start, agents stop waiting for older agents that existed at start
and were never reported (e.g. one whose Secret cannot be read yet); kopf hands over all the others long
before."""
RECONCILES_IN_FLIGHT = 64
"""Our choice: at most this many watch events are reconciled at once (each reads the agent's Secrets from
the API server the first time); the others wait their turn. Bounds what a thousand resources applied at
once hold together (docs/benchmarks.md, Density)."""
RETRY_DELAY_S = 5.0
"""Our choice: a reconciliation that failed on an API hiccup is tried again this long after (and again
after each further failure)."""
_RECHECK_CAP_S = 60.0
"""Our choice: a missing Secret/ConfigMap is looked for again after 2, 4, 8, ... up to this many seconds
(it is not labelled yet, so the label-filtered watch cannot see it appear)."""


class TransientError(Exception):
    """The API server could not be asked right now; the handler should be retried later."""


class WorkerRuntime(Protocol):
    """What the controller needs from agent_runtime.Runtime."""

    def apply(self, spec: WorkerSpec) -> None: ...

    async def remove(self, worker_id: str, grace: float | None = None) -> None: ...

    def snapshot(self, worker_id: str) -> WorkerSnapshot | None: ...


_KEPT_METADATA = ("uid", "generation", "creationTimestamp")
"""The only metadata a reconciliation reads (the ObjectRef's uid, status.observedGeneration, the age
that orders admission)."""


def kept_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a resource body a reconciliation reads: spec, status, uid, generation and age.

    A record lives as long as its resource, and the full body is mostly metadata no reconciliation
    reads: managedFields, kopf's last-handled-configuration annotation, labels. Keeping all of it cost
    about 18 KiB per agent (docs/benchmarks.md, Density). The status is kept only until the status
    writer has it (`_track`).
    """
    meta = body.get("metadata") or {}
    kept: dict[str, Any] = {"metadata": {k: meta[k] for k in _KEPT_METADATA if k in meta}}
    for part in ("spec", "status"):
        if part in body:
            kept[part] = body[part]
    return kept


def _version_of(body: Mapping[str, Any]) -> tuple[str, int | None]:
    """(uid, generation): a spec change makes a new generation, a new object a new uid."""
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    return str(meta.get("uid", "")), int(generation) if generation is not None else None


@dataclass
class _Record:
    body: dict[str, Any]
    """What `kept_body` keeps of the latest resource body (a copy of ours: `_track` drops its status)."""
    facts: AgentFacts = field(default_factory=AgentFacts)
    applied: WorkerSpec | None = None
    rechecks: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: TokenDigest | None = None
    """Digest of the token the agent last could run with."""
    agent_id: int | None = None
    """The agent id kas reported for that token (forgotten when the token changes)."""
    reconciled: tuple[str, int | None] | None = None
    """(uid, generation) of the last body a handler's reconciliation finished with: a watch event of the
    same object and generation (a status write, labels, kopf's finalizer) has nothing new to reconcile."""
    seen_at: float = field(default_factory=time.monotonic)
    """When the object of the body's uid was first seen (`forget_unlisted`)."""


def format_validation_error(error: ValidationError) -> str:
    """`spec.<field>: <problem>` lines, without the offending values (a header value may be secret)."""
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in ("spec", *item["loc"]))
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines) or "the spec is invalid"


class AgentController:
    """Reconciles GitLabAgents into workers; `run()` owns the background re-mappings."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        sources: Sources,
        writer: StatusWriter,
        events: EventRecorder,
        metrics: OperatorMetrics,
        *,
        kubernetes_support: KubernetesSupport,
        cluster_version: str | None,
        drain_grace: float,
        service_accounts: ServiceAccounts,
        limits: AdmissionLimits,
        finalizer: str | None = None,
    ) -> None:
        """`finalizer`: kopf's; once a resource carries it, the status writer may write its first status
        (StatusWriter.finalized)."""
        self._runtime = runtime
        self._sources = sources
        self._service_accounts = service_accounts
        self._admission = Admission(limits)
        self._writer = writer
        self._events = events
        self._metrics = metrics
        self._base_facts = AgentFacts(kubernetes_support=kubernetes_support, cluster_version=cluster_version)
        self._drain_grace = drain_grace
        self._records: dict[AgentKey, _Record] = {}
        self._index = SourceIndex()
        self._background: KeyedTasks[AgentKey] = KeyedTasks("remap", self._remap)
        self._recheck: KeyedTasks[AgentKey] = KeyedTasks("recheck", self._recheck_later)
        self._retry: KeyedTasks[AgentKey] = KeyedTasks("retry", self._retry_after_delay)
        self._observed: KeyedTasks[AgentKey] = KeyedTasks("reconcile", self._reconcile_observed)
        self._reconciling = asyncio.Semaphore(RECONCILES_IN_FLIGHT)
        self._finalizer = finalizer
        self._unwatch: KeyedTasks[SourceRef] = KeyedTasks("unwatch", self._unwatch_if_unused)
        self._releases: KeyedTasks[AgentKey] = KeyedTasks("release", self._release_now)
        self._deletions: KeyedTasks[AgentKey] = KeyedTasks("delete", self._delete_gone)
        self._gone_uids: dict[AgentKey, str] = {}
        """The uid each pending deletion is for (`gone`)."""
        self._released_keys: dict[AgentKey, asyncio.Event] = {}
        """Callers of `release` waiting for its task (set when that task has drained the worker)."""

    async def run(self) -> None:
        """Own the re-mapping, re-check and unlabelling tasks until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._background.run(), name="agent-remaps")
            tg.create_task(self._recheck.run(), name="agent-rechecks")
            tg.create_task(self._retry.run(), name="agent-retries")
            tg.create_task(self._observed.run(), name="agent-reconciles")
            tg.create_task(self._unwatch.run(), name="source-unwatches")
            tg.create_task(self._releases.run(), name="agent-releases")
            tg.create_task(self._deletions.run(), name="agent-deletions")
            tg.create_task(self._service_accounts_listed(), name="service-accounts-listed")
            tg.create_task(self._stop_expecting(), name="admission-expectations")

    def expect(self, created: Mapping[AgentKey, str]) -> None:
        """The GitLabAgents that exist at start (key → creationTimestamp), before kopf hands any over:
        none runs before every older one has been looked at (admission.py)."""
        self._kick_all(self._admission.expect(created))

    async def _stop_expecting(self) -> None:
        await asyncio.sleep(EXPECT_LIMIT_S)
        self._kick_all(self._admission.expect({}))

    def _kick_all(self, keys: list[AgentKey]) -> None:
        for key in keys:
            self._background.kick(key)

    async def _service_accounts_listed(self) -> None:
        """Agents reconciled before the ServiceAccount cache was listed say Unknown: re-map them once."""
        await self._service_accounts.wait_synced()
        for key in self._service_accounts.users():
            self._background.kick(key)

    # --- called by the kopf handlers ---------------------------------------------------------------
    def observe(self, key: AgentKey, body: Mapping[str, Any]) -> None:
        """A watch event of the resource (created, changed, found at start-up, or only its status or
        metadata written): make its worker match in the background, unless this generation was
        reconciled already. An API hiccup is retried after RETRY_DELAY_S."""
        if self._record_of(key, body) is not None:
            self._observed.kick(key)

    async def reconcile(self, key: AgentKey, body: Mapping[str, Any]) -> None:
        """As `observe`, and wait for it; an API hiccup raises TransientError (the caller retries)."""
        record = self._record_of(key, body)
        if record is not None:
            async with record.lock:
                if self._records.get(key) is record:
                    await self._sync_latest(key, record)

    def _record_of(self, key: AgentKey, body: Mapping[str, Any]) -> _Record | None:
        """The record of `key`, now holding `body`; None when that generation was reconciled already."""
        if self._finalizer is not None and self._finalizer in (
            (body.get("metadata") or {}).get("finalizers") or ()
        ):
            self._writer.finalized(key)
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record(kept_body(body))
            self._metrics.agents.set(len(self._records))
            self._writer.expect(key)
            return record
        version = _version_of(body)
        if record.reconciled == version:
            return None
        if version[0] != _version_of(record.body)[0]:
            record.seen_at = time.monotonic()  # deleted and created again under the same name
        record.body = kept_body(body)
        return record

    async def _sync_latest(self, key: AgentKey, record: _Record) -> None:
        """Reconcile the record's latest body (under its lock) and remember its version."""
        version = _version_of(record.body)
        try:
            await self._sync(key, record)
        finally:
            self._writer.unexpect(key)  # tracked by now, unless this reconciliation wrote nothing
        record.reconciled = version

    async def _reconcile_observed(self, key: AgentKey) -> None:
        record = self._records.get(key)
        if record is None:
            return
        async with self._reconciling, record.lock:
            if self._records.get(key) is not record or record.reconciled == _version_of(record.body):
                return
            try:
                await self._sync_latest(key, record)
            except TransientError as exc:
                log.warning("reconcile failed: %s", exc, extra=resource_extra(key.namespace, key.name))
                self._retry.kick(key)

    def handles(self, key: AgentKey) -> bool:
        """The controller has a record of `key` (it was reconciled, and not deleted or released since)."""
        return key in self._records

    async def _retry_after_delay(self, key: AgentKey) -> None:
        """A reconciliation of `key` failed on an API hiccup: try again (with the latest body), and again
        after each further failure."""
        await asyncio.sleep(RETRY_DELAY_S)
        record = self._records.get(key)
        if record is None:
            return
        async with record.lock:
            if self._records.get(key) is not record:
                return
            try:
                await self._sync_latest(key, record)
            except TransientError as exc:
                log.warning("reconcile failed again: %s", exc, extra=resource_extra(key.namespace, key.name))
                self._retry.kick(key)

    def gone(self, key: AgentKey, uid: str) -> None:
        """The resource `key` with `uid` was deleted (or is being deleted): drain its worker and forget it,
        in the background (a resource created again under that name meanwhile is left alone)."""
        self._gone_uids[key] = uid
        self._deletions.kick(key)

    def forget_unlisted(self, listing: AgentListing) -> None:
        """A list of every GitLabAgent in scope (the sweep's): a resource seen before the list began and
        missing from it was deleted while the watch did not see it (no finalizer waits for us: handlers.py).
        Its worker is drained in the background, as on a DELETED event."""
        for key, record in list(self._records.items()):
            uid = _version_of(record.body)[0]
            if record.seen_at < listing.started and uid not in listing.uids:
                extra = resource_extra(key.namespace, key.name)
                log.info("the resource is gone (its deletion was not seen)", extra=extra)
                self.gone(key, uid)

    async def _delete_gone(self, key: AgentKey) -> None:
        uid = self._gone_uids.pop(key, None)
        record = self._records.get(key)
        if record is not None and _version_of(record.body)[0] == uid:
            await self.delete(key)

    async def delete(self, key: AgentKey) -> None:
        """The resource is being deleted: drain its worker, forget it (and unlabel what only it used)."""
        self._released(self._index.remove(key))
        await self._drain_and_forget(key)
        self._metrics.reconciles.labels(outcome="removed").inc()
        log.info("agent removed", extra=resource_extra(key.namespace, key.name))

    async def release(self, key: AgentKey) -> None:
        """Another operator replica takes over (peering pause): stop the worker, keep the resource as is.

        The release runs in a task of the controller's and this waits for it: kopf cancels a pausing
        daemon that takes too long, and a release cut short there (waiting for a reconcile's lock, before
        the worker's removal) left the worker running on the paused replica while the other one ran it.
        """
        done = self._released_keys.setdefault(key, asyncio.Event())
        self._releases.kick(key)
        await done.wait()

    async def _release_now(self, key: AgentKey) -> None:
        try:
            await self._drain_and_forget(key)
            log.info("agent released to another operator", extra=resource_extra(key.namespace, key.name))
        finally:
            waiting = self._released_keys.pop(key, None)
            if waiting is not None:
                waiting.set()

    async def _drain_and_forget(self, key: AgentKey) -> None:
        record = self._records.pop(key, None)
        self._index.remove(key)  # on release, another replica keeps using the objects: labels stay
        self._service_accounts.forget(key)
        self._writer.forget(key)
        self._metrics.agents.set(len(self._records))
        if record is not None:
            async with record.lock:
                record.applied = None
        await self._runtime.remove(key.worker_id, self._drain_grace)
        self._admit(key, None)  # only now: the next agent with its token must not overlap its drain

    # --- secrets and config maps -------------------------------------------------------------------
    def _released(self, sources: frozenset[SourceRef]) -> None:
        """No agent refers to these any more: unlabel them (in the background)."""
        for source in sources:
            self._unwatch.kick(source)

    async def _unwatch_if_unused(self, source: SourceRef) -> None:
        if not self._index.agents(source):  # an agent may have taken it up again meanwhile
            await self._sources.unwatch(source)

    def on_snapshot(self, snapshot: WorkerSnapshot) -> None:
        """Runtime subscription: kas reported the agent id of a worker's token for the first time, which
        admission needs (two tokens of one GitLab agent): re-map it (in the background)."""
        try:
            key = AgentKey.parse(snapshot.id)
        except ValueError:
            return
        record = self._records.get(key)
        if record is None or snapshot.agent_id is None or record.agent_id == snapshot.agent_id:
            return
        record.agent_id = snapshot.agent_id
        self._background.kick(key)

    def service_account_changed(self, key: AgentKey) -> None:
        """The ServiceAccount `key` runs as appeared or went away: re-map it (in the background)."""
        self._background.kick(key)

    def _admit(self, key: AgentKey, candidate: Candidate | None) -> Problem | None:
        """Record whether `key` could run; its refusal, if any. Agents whose decision this moved are
        re-mapped in the background (the next in line starts, or a younger one stops)."""
        refusal, moved = self._admission.update(key, candidate)
        self._kick_all(moved)
        return refusal

    def source_changed(self, source: SourceRef) -> None:
        """A watched Secret/ConfigMap changed: re-map the agents that use it (in the background)."""
        for key in self._index.agents(source):
            self._background.kick(key)

    async def _remap(self, key: AgentKey) -> None:
        record = self._records.get(key)
        if record is None:
            return
        async with record.lock:
            if self._records.get(key) is record:
                try:
                    await self._sync(key, record)
                except TransientError as exc:
                    log.warning("re-mapping failed: %s", exc, extra=resource_extra(key.namespace, key.name))

    async def _recheck_later(self, key: AgentKey) -> None:
        record = self._records.get(key)
        if record is None:
            return
        await asyncio.sleep(min(_RECHECK_CAP_S, 2.0 ** min(record.rechecks, 6)))
        if record.facts.problem is not None and record.facts.problem.kind in _SOURCE_PROBLEMS:
            await self._remap(key)

    # --- readiness ---------------------------------------------------------------------------------
    def ready(self) -> bool:
        """Every agent that should be connected is, or has failed (the operator has given up on it)."""
        for key, record in self._records.items():
            if record.facts.suspended and record.facts.problem is None:
                continue
            if phase_of(record.facts, self._runtime.snapshot(key.worker_id)) not in _READY_PHASES:
                return False
        return True

    # --- the reconciliation ------------------------------------------------------------------------
    async def _sync(self, key: AgentKey, record: _Record) -> None:
        body = record.body
        meta = body.get("metadata") or {}
        ref = ObjectRef(key.namespace, key.name, str(meta.get("uid", "")))
        generation = meta.get("generation")
        facts = replace(self._base_facts, generation=int(generation) if generation is not None else None)
        try:
            spec = GitLabAgentSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            self._released(self._index.remove(key))
            self._service_accounts.forget(key)
            problem = Problem(
                ProblemKind.SPEC_INVALID, "SpecInvalid", format_validation_error(exc), "fix the spec"
            )
            await self._not_running(key, record, ref, replace(facts, problem=problem))
            return
        self._service_accounts.use(key, key.namespace, spec.service_account_name)
        facts = replace(
            facts,
            kas_address=spec.kas_address,
            suspended=spec.suspend,
            insecure_skip_tls_verify=spec.insecure_skip_tls_verify,
            service_account=f"{key.namespace}/{spec.service_account_name}",
            service_account_found=self._service_accounts.exists(key.namespace, spec.service_account_name),
        )
        self._released(self._index.set(key, sources_of(key.namespace, spec)))
        if spec.suspend:
            await self._not_running(key, record, ref, facts)
            return
        desired = await self._desired(key, spec)
        if isinstance(desired, Problem):
            await self._not_running(key, record, ref, replace(facts, problem=desired))
            return
        refusal = self._admit(key, self._candidate(key, record, spec, desired))
        if refusal is WAIT:
            return  # re-mapped once the older agents have been looked at; nothing to write meanwhile
        if refusal is not None:
            await self._not_running(key, record, ref, replace(facts, problem=refusal))
            return
        previous, record.applied, record.facts, record.rechecks = record.applied, desired, facts, 0
        self._runtime.apply(desired)
        self._track(key, record, ref, facts)
        self._metrics.reconciles.labels(outcome="applied").inc()
        if previous is not None and previous.token != desired.token and previous.same_connection_as(desired):
            self._metrics.token_rotations.inc()
            log.info("token rotated: reconnecting in place", extra=resource_extra(key.namespace, key.name))
            await self._events.emit(
                ref, EventSpec("Normal", "TokenRotated", "the agent token changed; reconnecting")
            )

    def _candidate(
        self, key: AgentKey, record: _Record, spec: GitLabAgentSpec, desired: WorkerSpec
    ) -> Candidate:
        digest = token_digest(desired.token)
        if record.token != digest:
            record.token, record.agent_id = digest, None  # another token may belong to another agent
        created = str((record.body.get("metadata") or {}).get("creationTimestamp", ""))
        host = urlsplit(spec.kas_address).hostname or ""
        agent = (host, record.agent_id) if record.agent_id is not None else None
        return Candidate(key, created, digest, agent)

    async def _desired(self, key: AgentKey, spec: GitLabAgentSpec) -> WorkerSpec | Problem:
        try:
            return await self._read_and_map(key, spec)
        except _ForbiddenError as exc:
            hint = (
                "grant the operator's ServiceAccount get and patch on secrets and configmaps "
                "(manifests/rbac-cluster.yaml)"
            )
            return Problem(ProblemKind.FORBIDDEN, "OperatorForbidden", str(exc), hint)

    async def _read_and_map(self, key: AgentKey, spec: GitLabAgentSpec) -> WorkerSpec | Problem:
        # Secrets whose values leave the cluster are watched only once they opted in to this agent.
        credentials = credential_sources(key.namespace, spec)
        objects: dict[SourceRef, Any] = {}
        for source in sorted(sources_of(key.namespace, spec)):
            admit = (lambda obj: opted_in(obj, key.name)) if source in credentials else None
            objects[source] = await self._read(source, admit)
        resolved = resolve(key, spec, objects)
        if isinstance(resolved, Unresolved):
            missing = resolved.missing
            return Problem(_PROBLEM_KINDS[resolved.kind], missing.reason, missing.message, missing.hint)
        return resolved

    async def _read(self, source: SourceRef, admit: Admit | None = None) -> Any:
        try:
            return await self._sources.read(source, admit)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(
                f"reading {source.kind.value} {source.store_key}: {type(exc).__name__}"
            ) from None
        except SourceError as exc:
            if exc.status == 403:
                raise _ForbiddenError(str(exc)) from None
            raise TransientError(str(exc)) from None

    async def _not_running(self, key: AgentKey, record: _Record, ref: ObjectRef, facts: AgentFacts) -> None:
        record.facts = facts
        self._track(key, record, ref, facts)
        if facts.problem is not None and facts.problem.kind in _SOURCE_PROBLEMS:
            record.rechecks += 1
            self._recheck.kick(key)
        outcome = "failed" if facts.problem is not None else "suspended"
        self._metrics.reconciles.labels(outcome=outcome).inc()
        if record.applied is not None:
            record.applied = None
            await self._runtime.remove(key.worker_id, self._drain_grace)
        if facts.problem is None or facts.problem.kind is not ProblemKind.ADMISSION:
            self._admit(key, None)  # after the drain: the next agent with its token must not overlap it

    def _track(self, key: AgentKey, record: _Record, ref: ObjectRef, facts: AgentFacts) -> None:
        """Hand the facts to the status writer, with the status stored on the resource (which the writer
        reads on first sight only, then keeps what it writes itself): the record need not keep it."""
        self._writer.track(key, ref, facts, parse_status(record.body.pop("status", None)))


class _ForbiddenError(TransientError):
    """The operator lacks RBAC to read/label a referenced object."""
