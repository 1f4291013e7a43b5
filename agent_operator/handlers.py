"""kopf handlers: thin adapters from kopf to the composition and, with peering, to the AgentController.
They return None (status is written by the StatusWriter, not by kopf).

Without peering kopf runs the operator's life (startup, cleanup, login) and nothing else: the GitLabAgents'
events come from the operator's own informer (agent_watch.py), and no finalizer is put on them (the
DELETED event drains the worker; the sweep's list finds a deletion the watch missed, label_sweep.py).

With peering, one daemon per GitLabAgent marks "this process runs the agent": kopf stops daemons when
the operator pauses in favour of another replica, and the daemon then drains the worker, so two replicas
never run the same agent; when this replica resumes, the daemon starts again and reconciles. kopf puts
its finalizer on every resource a daemon runs for, and deleting one drains its worker first
(`kopf.on.delete`). Every watch event goes to the controller (`kopf.on.event`), which reconciles only
what it has not reconciled yet (a new uid or generation): the reconciliation is level-triggered and reads
the latest body, so kopf's change detection (create/update/resume causes) is not needed, and neither is
its bookkeeping, a PATCH of the last-handled configuration after every handled change
(docs/benchmarks.md, Fleet bring-up). The handler only hands the event over: the controller reconciles
it in its own tasks (and retries an API hiccup; kopf never retries an event handler). Events reach the
controller only for agents whose daemon runs here: an event kopf delivers just after the pause (queued
before it) would otherwise start the worker again after the daemon released it, and two replicas would
run that agent (tests/reliability/test_operator_restarts.py, both replicas started at once).

Every call into the controller runs `outside_kopf`: kopf's context variables hold the handler's cause
(the resource's whole body, the event's patch and diff), and every task started below a handler copies
them. The workers' tasks live as long as their agent, so each agent kept kopf's last event for its whole
life, about 13-20 KiB of Python objects (docs/benchmarks.md, Density).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import kopf

from agent_operator.api import GROUP, PLURAL, VERSION
from agent_operator.controller import RETRY_DELAY_S, AgentController, TransientError
from agent_operator.logs import resource_extra
from agent_operator.mapping import AgentKey

log = logging.getLogger(__name__)

T = TypeVar("T")


async def outside_kopf(work: Coroutine[Any, Any, T], name: str) -> T:
    """Run `work` as a task with no context variables (none of kopf's), and wait for it.

    The task is the caller's: its result and errors are the caller's, and cancelling the caller
    cancels it.
    """
    return await asyncio.create_task(work, name=name, context=contextvars.Context())


def register(
    registry: kopf.OperatorRegistry,
    controller: AgentController,
    *,
    startup: Callable[[], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]],
    login: Callable[[], Awaitable[kopf.AiohttpSession]],
    peering: bool,
    daemon_cancellation_timeout: float,
) -> None:
    """Register every handler of the operator on `registry`."""
    held: set[AgentKey] = set()
    """With peering: the agents whose daemon runs in this process (see the module docstring)."""

    @kopf.on.startup(registry=registry)
    async def _startup(**_: Any) -> None:
        await startup()

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        await cleanup()

    @kopf.on.login(registry=registry)
    async def _login(**_: Any) -> kopf.AiohttpSession:
        return await login()

    if not peering:
        return  # the GitLabAgents' events come from agent_watch.py

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def _observe(
        *, event: kopf.RawEvent, name: str, namespace: str | None, body: kopf.Body, **_: Any
    ) -> None:
        key = AgentKey(namespace or "", name)
        if event.get("type") == "DELETED":  # gone before kopf's finalizer was on it
            if controller.handles(key):
                await outside_kopf(controller.delete(key), f"delete:{key.worker_id}")
            return
        if body.get("metadata", {}).get("deletionTimestamp"):
            return  # being deleted: `_delete` drains the worker, then kopf releases the finalizer
        if key not in held:
            return  # another replica runs it, or this one's daemon has not started yet (it reconciles)
        # Reconciled in the controller's tasks, so kopf's cycle ends at once; they start in a context of
        # their own (see outside_kopf).
        contextvars.Context().run(controller.observe, key, dict(body))

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def _delete(*, name: str, namespace: str | None, **_: Any) -> None:
        key = AgentKey(namespace or "", name)
        await outside_kopf(controller.delete(key), f"delete:{key.worker_id}")

    @kopf.daemon(
        GROUP,
        VERSION,
        PLURAL,
        registry=registry,
        cancellation_backoff=daemon_cancellation_timeout,
        cancellation_timeout=daemon_cancellation_timeout,
    )
    async def _held_here(
        *, name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any
    ) -> None:
        key = AgentKey(namespace or "", name)
        held.add(key)
        try:
            while not stopped:
                try:
                    await outside_kopf(controller.reconcile(key, dict(body)), f"reconcile:{key.worker_id}")
                    break
                except TransientError as exc:
                    log.warning("reconcile failed: %s", exc, extra=resource_extra(namespace or "", name))
                    await stopped.wait(RETRY_DELAY_S)
            await stopped.wait()
        finally:
            # Also when kopf cancelled the daemon (mid-reconcile, say): a pause must release the agent,
            # or its worker (or a re-mapping that starts it later) runs on here beside the other replica.
            held.discard(key)  # before the release: no event may start the worker again
            reason = stopped.reason or kopf.DaemonStoppingReason(0)
            if reason & kopf.DaemonStoppingReason.OPERATOR_PAUSING:
                await outside_kopf(controller.release(key), f"release:{key.worker_id}")
