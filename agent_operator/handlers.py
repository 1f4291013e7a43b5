"""kopf handlers: thin adapters from kopf's causes to the AgentController. They return None (status is
written by the StatusWriter, not by kopf) and raise only kopf.TemporaryError, for API hiccups.

With peering, one daemon per GitLabAgent marks "this process runs the agent": kopf stops daemons when
the operator pauses in favour of another replica, and the daemon then drains the worker, so two replicas
never run the same agent; when this replica resumes, the daemon starts again and reconciles.

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
from typing import Any, Final, TypeVar

import kopf

from agent_operator.api import GROUP, PLURAL, VERSION
from agent_operator.controller import AgentController, TransientError
from agent_operator.logs import resource_extra
from agent_operator.mapping import AgentKey

log = logging.getLogger(__name__)

RETRY_DELAY_S: Final = 5.0
"""kopf retries a handler this long after an API hiccup."""

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

    @kopf.on.startup(registry=registry)
    async def _startup(**_: Any) -> None:
        await startup()

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        await cleanup()

    @kopf.on.login(registry=registry)
    async def _login(**_: Any) -> kopf.AiohttpSession:
        return await login()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def _reconcile(*, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
        key = AgentKey(namespace or "", name)
        try:
            await outside_kopf(controller.reconcile(key, dict(body)), f"reconcile:{key.worker_id}")
        except TransientError as exc:
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from None

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def _delete(*, name: str, namespace: str | None, **_: Any) -> None:
        key = AgentKey(namespace or "", name)
        await outside_kopf(controller.delete(key), f"delete:{key.worker_id}")

    if not peering:
        return

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=daemon_cancellation_timeout)
    async def _held_here(
        *, name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any
    ) -> None:
        key = AgentKey(namespace or "", name)
        while not stopped:
            try:
                await outside_kopf(controller.reconcile(key, dict(body)), f"reconcile:{key.worker_id}")
                break
            except TransientError as exc:
                log.warning("reconcile failed: %s", exc, extra=resource_extra(namespace or "", name))
                await stopped.wait(RETRY_DELAY_S)
        await stopped.wait()
        reason = stopped.reason or kopf.DaemonStoppingReason(0)
        if reason & kopf.DaemonStoppingReason.OPERATOR_PAUSING:
            await outside_kopf(controller.release(key), f"release:{key.worker_id}")
