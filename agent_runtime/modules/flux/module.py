"""The Flux module: a push to a GitLab project makes Flux fetch that project's GitRepositories now.

Shape (PROTOCOL.md §17, with §17.13's changes):

1. wait for the agent configuration (agent id, `gitlab_external_url`); a changed one restarts the rest;
2. wait until the GitRepository CRD serves v1 (a shared informer on that one CRD: Flux installed later
   is picked up without a restart);
3. read the process-wide GitRepository informer (one watch for every agent of the pod); until some
   GitRepository points at the agent's GitLab, nothing else happens (no Lease traffic for agents
   without Flux sources);
4. campaign for the Lease `agent-<id>-lock` (lease.py); only the holder goes on:
5. scope (namespaces the agent may patch, checked as the agent) → project set, debounced → the
   ReconcileProjects stream (stream.py) → for each reported project, patch `requestedAt` on exactly its
   GitRepositories (trigger.py), as the agent. In receiver mode (spec.flux.mode), the agent keeps one
   Flux Receiver per GitRepository in scope instead (receivers.py) and POSTs to each Receiver's webhook
   of the reported project (webhook.py), at a base URL the operator allows.

Facts go to the worker's snapshot (FluxStatus): state, counts, last trigger.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp

from agent_runtime.environment import NoMetrics, WorkerMetrics
from agent_runtime.flux_settings import FluxTuning
from agent_runtime.informer import ChangeCallback, EventType, Informer, KubeObject
from agent_runtime.latest import LatestValue
from agent_runtime.module_context import ModuleContext
from agent_runtime.modules.flux import gitrepositories as gr
from agent_runtime.modules.flux.access import PatchPermission
from agent_runtime.modules.flux.lease import LeaseElector, LeaseTiming, lease_name
from agent_runtime.modules.flux.receivers import GROUP as RECEIVER_GROUP
from agent_runtime.modules.flux.receivers import PLURAL as RECEIVER_PLURAL
from agent_runtime.modules.flux.receivers import AgentRequests, ReceiverSync, receiver_name
from agent_runtime.modules.flux.scope import Scope, compute_scope
from agent_runtime.modules.flux.stream import ProjectStream
from agent_runtime.modules.flux.trigger import request_reconcile
from agent_runtime.modules.flux.urls import ExternalUrlError, GitLabServer, is_project_path, match_key
from agent_runtime.modules.flux.webhook import BaseUrl, WebhookUrlError, allowed_base, post_webhook
from agent_runtime.spec import FluxMode, FluxState, FluxStatus

TRIGGERS_IN_FLIGHT: Final = 8
"""GitRepositories patched at once for one agent (our choice: a push to a project with many sources)."""

MAX_REMEMBERED_TRIGGERS: Final = 4096
"""Projects whose last trigger time is kept (bounded: forgetting only allows one early trigger)."""
RESTART_AFTER_S: Final = 10.0
"""Pause before the module starts over after a bug (our choice)."""

NOT_INSTALLED_HINT: Final = (
    "install Flux (>= 2.0, source-controller's GitRepository v1); it is picked up without a restart"
)


class FluxModule:
    """Runs until cancelled."""

    def __init__(
        self,
        ctx: ModuleContext,
        tuning: FluxTuning,
        metrics: WorkerMetrics,
        mode: FluxMode = FluxMode.REQUESTED_AT,
    ) -> None:
        self._ctx = ctx
        self._mode = mode
        self._receivers: ReceiverSync | None = None
        """Receiver mode: the leader's Receivers."""
        self._webhook: tuple[BaseUrl, aiohttp.ClientSession] | None = None
        """Receiver mode: the allowed base URL and the leader's HTTP session for webhook calls."""
        self._tuning = tuning
        self._metrics = metrics
        self._status = FluxStatus()
        self._scope = Scope()
        self._pending: dict[str, str] = {}
        self._pending_event = asyncio.Event()
        self.streams: ProjectStream | None = None
        """The stream of the current leadership (tests read its counters)."""

    # --- state ------------------------------------------------------------------------------------
    def _set(self, **changes: Any) -> None:
        status = FluxStatus(**{**self._status.__dict__, **changes})
        if status != self._status:
            self._status = status
            self._ctx.state.flux(status)

    def _state(self, state: FluxState, message: str) -> None:
        self._set(state=state, message=message)

    # --- 1. configuration ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Follow the configuration; run the rest for each (agent id, GitLab URL)."""
        informers = self._ctx.informers
        if informers is None:
            self._state(FluxState.DISABLED, "this process shares no informers (the single-agent engine)")
            await asyncio.Event().wait()
        self._state(FluxState.WAITING, "waiting for the agent configuration from kas")
        config, version = self._ctx.configuration.value, self._ctx.configuration.version
        while True:
            if config is None or not config.agent_id:
                config, version = await self._ctx.configuration.wait_newer(version)
                continue
            webhook_url = str(config.flux.webhook_receiver_url) if self._mode is FluxMode.RECEIVER else ""
            key = (int(config.agent_id), str(config.gitlab_external_url), webhook_url)
            body = asyncio.create_task(self._supervised(*key), name=f"{self._ctx.worker_id}/flux-agent")
            try:
                while True:
                    config, version = await self._ctx.configuration.wait_newer(version)
                    if (
                        config is not None
                        and (
                            config.agent_id,
                            config.gitlab_external_url,
                            config.flux.webhook_receiver_url if self._mode is FluxMode.RECEIVER else "",
                        )
                        != key
                    ):
                        break
            finally:
                body.cancel()
                await asyncio.gather(body, return_exceptions=True)

    async def _supervised(self, agent_id: int, external_url: str, webhook_url: str) -> None:
        """`_for_agent`, restarted after a bug (logged) instead of ending the module silently."""
        while True:
            try:
                await self._for_agent(agent_id, external_url, webhook_url)
            except Exception:  # any bug: log it, report it, start over after a pause
                self._ctx.logger.exception("Failed to run module flux; restarting")
                self._state(
                    FluxState.STREAM_FAILED,
                    f"the Flux module failed (the operator log has the details); restarting in "
                    f"{RESTART_AFTER_S:.0f} s",
                )
                await asyncio.sleep(RESTART_AFTER_S)
            else:
                return

    async def _for_agent(self, agent_id: int, external_url: str, webhook_url: str) -> None:
        try:
            server = GitLabServer.parse(external_url)
        except ExternalUrlError as e:
            self._state(
                FluxState.NO_GITLAB_URL,
                f"{e}: no GitRepository can be matched to a GitLab project; set gitlab.external_url in "
                "kas's configuration",
            )
            await asyncio.Event().wait()
            return
        base: BaseUrl | None = None
        if self._mode is FluxMode.RECEIVER:
            try:
                base = allowed_base(webhook_url, self._ctx.policy.destinations.flux_webhook_urls)
            except WebhookUrlError as e:  # kas chose it: refused before any object or call exists
                self._state(FluxState.WEBHOOK_REFUSED, f"receiver mode: {e}")
                await asyncio.Event().wait()
                return
        await self._wait_for_flux()
        repos = self._gitrepositories()
        await self._wait_listed(
            repos, "GitRepositories", f"list and watch on {gr.CRD_NAME} in every namespace"
        )
        changed = asyncio.Event()
        remove = repos.add_handler(self._change_handler(server, changed), replay=False)
        try:
            await self._wait_for_targets(repos, server, changed)
            await self._campaign(agent_id, server, repos, changed, base)
        finally:
            remove()

    # --- 2. the CRD gate ----------------------------------------------------------------------------
    async def _wait_for_flux(self) -> None:
        informers = self._ctx.informers
        assert informers is not None
        await informers.wait_started()
        crds = informers.get(gr.GITREPOSITORY_CRD, transform=gr.keep_crd)
        ready = asyncio.Event()

        def check(*_: object) -> None:
            if gr.crd_serves_v1(crds.store.get(gr.CRD_NAME)):
                ready.set()

        remove = crds.add_handler(check)
        try:
            await self._wait_listed(
                crds, f"the CRD {gr.CRD_NAME}", "get, list and watch on customresourcedefinitions"
            )
            check()
            if not ready.is_set():
                self._state(
                    FluxState.FLUX_NOT_INSTALLED,
                    f"the CRD {gr.CRD_NAME} (version v1, established) is not in the cluster; "
                    + NOT_INSTALLED_HINT,
                )
            await ready.wait()
        finally:
            remove()

    async def _wait_listed(self, informer: Informer, what: str, rights: str) -> None:
        """Wait for a shared informer's first list, saying why it fails meanwhile (RBAC, mostly)."""
        while not informer.synced:
            error = informer.last_error
            if error is None:
                self._state(FluxState.WAITING, f"reading {what}")
            else:
                self._state(
                    FluxState.LIST_FAILED, f"cannot read {what}: {error}; the operator needs {rights}"
                )
            try:
                async with asyncio.timeout(1.0):
                    await informer.wait_synced()
            except TimeoutError:
                pass

    def _gitrepositories(self) -> Informer:
        informers = self._ctx.informers
        assert informers is not None
        return informers.get(gr.GITREPOSITORIES, indexers=gr.INDEXERS, transform=gr.keep_gitrepository)

    @staticmethod
    def _change_handler(server: GitLabServer, changed: asyncio.Event) -> ChangeCallback:
        def on_change(_: EventType, old: KubeObject | None, new: KubeObject | None) -> None:
            # Cheap, for every agent of the process: only this GitLab's host counts.
            if (old is not None and server.host in gr.url_host(old)) or (
                new is not None and server.host in gr.url_host(new)
            ):
                changed.set()

        return on_change

    # --- 3. any GitRepository of this GitLab? -------------------------------------------------------------
    def _candidates(self, repos: Informer, server: GitLabServer) -> list[gr.Target]:
        return gr.targets(repos.store.by_index(gr.HOST_INDEX, server.host), server)

    async def _wait_for_targets(self, repos: Informer, server: GitLabServer, changed: asyncio.Event) -> None:
        while not self._candidates(repos, server):
            self._state(
                FluxState.NO_GITREPOSITORIES,
                f"no GitRepository points at {server.scheme}://{server.host}:{server.port}{server.root}",
            )
            changed.clear()
            await changed.wait()

    # --- 4. leadership -------------------------------------------------------------------------------
    async def _campaign(
        self,
        agent_id: int,
        server: GitLabServer,
        repos: Informer,
        changed: asyncio.Event,
        base: BaseUrl | None,
    ) -> None:
        agent = self._ctx.agent
        if not agent.pod_namespace:
            self._state(
                FluxState.LEASE_FAILED,
                "the operator's namespace is unknown, so the agent's Lease cannot be held: set POD_NAMESPACE",
            )
            await asyncio.Event().wait()
        t = self._tuning
        elector = LeaseElector(
            self._ctx.kube,
            agent.pod_namespace,
            lease_name(agent_id),
            agent.pod_name,
            LeaseTiming(t.lease_duration_s, t.renew_deadline_s, t.retry_period_s),
            self._ctx.clock,
        )

        def standby(holder: str) -> None:
            self._set(
                state=FluxState.STANDBY,
                message=f"{holder} holds the Lease {lease_name(agent_id)} and handles pushes for this agent",
                watched=0,
                projects=0,
            )

        def lease_error(text: str) -> None:
            self._state(
                FluxState.LEASE_FAILED,
                f"cannot hold the Lease {agent.pod_namespace}/{lease_name(agent_id)}: {text}; the operator "
                "needs get, create and update on leases in its namespace",
            )

        await elector.lead(lambda: self._lead(agent_id, server, repos, changed, base), standby, lease_error)

    # --- 5. the leader's work ----------------------------------------------------------------------
    async def _lead(
        self,
        agent_id: int,
        server: GitLabServer,
        repos: Informer,
        changed: asyncio.Event,
        base: BaseUrl | None,
    ) -> None:
        async with contextlib.AsyncExitStack() as stack:
            permission = self._permission()
            if base is not None:
                # Not the process's proxy settings: the allowed URL is dialled, nothing else.
                session = await stack.enter_async_context(aiohttp.ClientSession(trust_env=False))
                self._webhook = (base, session)
                self._receivers = ReceiverSync(AgentRequests(self._ctx.kube, self._ctx.identity), agent_id)
            try:
                await self._lead_tasks(server, repos, changed, permission)
            finally:
                self._webhook, self._receivers = None, None

    def _permission(self) -> PatchPermission:
        """What the agent must be allowed in a namespace for its GitRepositories to be in scope: patch them,
        or in receiver mode patch Receivers (the API server checks the rest of each request)."""
        ctx, ttl = self._ctx, self._tuning.access_ttl_s
        if self._mode is FluxMode.RECEIVER:
            return PatchPermission(
                ctx.kube, ctx.identity, ctx.clock, ttl, group=RECEIVER_GROUP, resource=RECEIVER_PLURAL
            )
        return PatchPermission(ctx.kube, ctx.identity, ctx.clock, ttl)

    async def _lead_tasks(
        self, server: GitLabServer, repos: Informer, changed: asyncio.Event, permission: PatchPermission
    ) -> None:
        ctx = self._ctx
        projects: LatestValue[frozenset[str]] = LatestValue(frozenset())
        self._pending.clear()
        self.streams = ProjectStream(ctx, self._tuning, self._metrics, projects, self._reported, self._state)
        name = ctx.worker_id
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(
                    self._maintain_scope(server, repos, changed, permission, projects),
                    name=f"{name}/flux-scope",
                )
                tg.create_task(self.streams.run(), name=f"{name}/flux-stream-loop")
                tg.create_task(self._trigger_loop(), name=f"{name}/flux-triggers")
        finally:
            self._scope = Scope()

    async def _maintain_scope(
        self,
        server: GitLabServer,
        repos: Informer,
        changed: asyncio.Event,
        permission: PatchPermission,
        projects: LatestValue[frozenset[str]],
    ) -> None:
        """Recompute the scope on every change and every access TTL; publish the project set, debounced
        (the first non-empty set at once)."""
        published = False
        while True:
            changed.clear()
            await self._refresh_scope(server, repos, permission)
            if self._scope.projects != projects.value:
                if published:
                    await self._debounce(server, repos, changed, permission)
                if self._scope.projects != projects.value:
                    projects.set(self._scope.projects)
                    published = True
            self._report_scope()
            try:
                async with asyncio.timeout(self._tuning.access_ttl_s):
                    await changed.wait()
            except TimeoutError:
                pass

    async def _debounce(
        self, server: GitLabServer, repos: Informer, changed: asyncio.Event, permission: PatchPermission
    ) -> None:
        """Wait until nothing changed for `debounce_s`, recomputing the scope after each change."""
        while True:
            changed.clear()
            try:
                async with asyncio.timeout(self._tuning.debounce_s):
                    await changed.wait()
            except TimeoutError:
                return
            await self._refresh_scope(server, repos, permission)

    async def _refresh_scope(
        self, server: GitLabServer, repos: Informer, permission: PatchPermission
    ) -> None:
        self._scope = await compute_scope(self._candidates(repos, server), permission)
        if self._receivers is not None:
            await self._receivers.sync(self._scope.targets)
        self._set(watched=len(self._scope.targets), projects=len(self._scope.projects))

    def _report_scope(self) -> None:
        scope = self._scope
        if self._status.state in (FluxState.NOT_SERVED, FluxState.STREAM_FAILED):
            return  # the stream's own state says more
        resource = "receivers.notification.toolkit.fluxcd.io" if self._receivers else gr.CRD_NAME
        denied = (
            f"; {scope.denied} GitRepositories left out: the agent may not patch {resource} in their "
            f"namespace (grant patch on {resource} to its ServiceAccount)"
            if scope.denied
            else ""
        )
        mode = self._receivers_note()
        if scope.targets:
            self._state(
                FluxState.WATCHING,
                f"{len(scope.targets)} GitRepositories of {len(scope.projects)} project(s){mode}{denied}",
            )
        else:
            self._state(FluxState.NO_GITREPOSITORIES, f"no GitRepository in scope{denied}")

    def _receivers_note(self) -> str:
        receivers = self._receivers
        if receivers is None:
            return ""
        if not receivers.errors:
            return ", one Receiver each"
        hints = []
        if 404 in receivers.statuses:
            hints.append(f"HTTP 404: is the CRD {RECEIVER_PLURAL}.{RECEIVER_GROUP} (v1) installed?")
        if 403 in receivers.statuses:
            hints.append(
                "HTTP 403: the agent needs create, patch, get, list and delete on receivers and create and "
                "delete on secrets"
            )
        hint = "; ".join(hints) or "the operator log has them"
        return f"; {receivers.errors} Receiver request(s) failed ({hint})"

    # --- triggers ------------------------------------------------------------------------------------
    def _reported(self, project: str) -> None:
        """kas reported a push (untrusted): queue it when it is a project the agent asked for."""
        if not is_project_path(project) or not self._scope.for_project(project):
            ignored = self._status.ignored + 1
            if ignored & (ignored - 1) == 0:  # 1st, 2nd, 4th, ...: a flooding kas cannot flood the log
                self._ctx.logger.warning(
                    "ignored %d project(s) kas reported that were not asked for", ignored
                )
            self._set(ignored=ignored)
            return
        self._pending[match_key(project)] = project
        self._pending_event.set()

    async def _trigger_loop(self) -> None:
        """Patch the GitRepositories of reported projects. Reports of one project that arrive while it is
        being triggered, or sooner than `min_trigger_interval_s` after, make one more trigger: a kas that
        floods reports cannot turn them into a stream of patches (and fetches)."""
        gate = asyncio.Semaphore(TRIGGERS_IN_FLIGHT)
        last: dict[str, float] = {}
        interval = self._tuning.min_trigger_interval_s
        while True:
            await self._pending_event.wait()
            due = max((last.get(key, -math.inf) + interval for key in self._pending), default=-math.inf)
            wait = due - self._ctx.clock.now()
            if wait > 0:
                await asyncio.sleep(wait)  # reports arriving meanwhile join this batch
            self._pending_event.clear()
            batch, self._pending = self._pending, {}
            if len(last) > MAX_REMEMBERED_TRIGGERS:
                last.clear()
            now = self._ctx.clock.now()
            last.update(dict.fromkeys(batch, now))
            targets = {t for project in batch.values() for t in self._scope.for_project(project)}
            results = await asyncio.gather(*(self._trigger(t, gate) for t in sorted(targets)))
            ok = sum(results)
            self._set(
                triggered=self._status.triggered + ok,
                failed=self._status.failed + len(results) - ok,
                last_trigger=datetime.now(UTC) if ok else self._status.last_trigger,
            )

    async def _trigger(self, target: gr.Target, gate: asyncio.Semaphore) -> bool:
        if self._webhook is not None and self._receivers is not None:
            async with gate:
                return await self._call_webhook(target, *self._webhook, self._receivers.agent_id)
        async with gate:
            status = await request_reconcile(
                self._ctx.kube,
                self._ctx.identity,
                target,
                timeout=self._tuning.trigger_timeout_s,
                attempts=self._tuning.trigger_attempts,
            )
        if 200 <= status < 300:
            return True
        self._ctx.logger.warning(
            "Unable to trigger GitRepository %s/%s: HTTP %s", target.namespace, target.name, status or "error"
        )
        return False

    async def _call_webhook(
        self, target: gr.Target, base: BaseUrl, session: aiohttp.ClientSession, agent_id: int
    ) -> bool:
        """Receiver mode: POST to the webhook of `target`'s Receiver (agentk's trigger, §17.6, bounded)."""
        requests = AgentRequests(self._ctx.kube, self._ctx.identity)
        name = receiver_name(agent_id, target.name)
        url = base.join(await requests.webhook_path(target.namespace, name))
        if url is None:
            self._ctx.logger.warning(
                "Unable to trigger Receiver %s/%s: no webhook path in its status (is notification-controller "
                "running?)",
                target.namespace,
                name,
            )
            return False
        status = await post_webhook(session, url, timeout=self._tuning.trigger_timeout_s)
        if 200 <= status < 300:
            return True
        self._ctx.logger.warning(
            "Unable to trigger Receiver %s/%s: HTTP %s", target.namespace, name, status or "error"
        )
        return False


def build(
    ctx: ModuleContext,
    tuning: FluxTuning,
    metrics: WorkerMetrics | None = None,
    mode: FluxMode = FluxMode.REQUESTED_AT,
) -> FluxModule:
    """Factory used by the composition root."""
    return FluxModule(ctx, tuning, metrics if metrics is not None else NoMetrics(), mode)
