"""kopf handlers: thin adapters from kopf's causes to the AgentController. They return None (status is
written by the StatusWriter, not by kopf) and raise only kopf.TemporaryError, for API hiccups.

With peering, one daemon per GitLabAgent marks "this process runs the agent": kopf stops daemons when
the operator pauses in favour of another replica, and the daemon then drains the worker, so two replicas
never run the same agent; when this replica resumes, the daemon starts again and reconciles.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import kopf

from agent_operator.api import GROUP, PLURAL, VERSION
from agent_operator.controller import AgentController, TransientError
from agent_operator.logs import resource_extra
from agent_operator.mapping import AgentKey

log = logging.getLogger(__name__)

RETRY_DELAY_S: Final = 5.0
"""kopf retries a handler this long after an API hiccup."""


def register(
    registry: kopf.OperatorRegistry,
    controller: AgentController,
    *,
    startup: Callable[[], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]],
    login: Callable[[], kopf.ConnectionInfo],
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
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return login()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def _reconcile(*, name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
        try:
            await controller.reconcile(AgentKey(namespace or "", name), dict(body))
        except TransientError as exc:
            raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY_S) from None

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    async def _delete(*, name: str, namespace: str | None, **_: Any) -> None:
        await controller.delete(AgentKey(namespace or "", name))

    if not peering:
        return

    @kopf.daemon(GROUP, VERSION, PLURAL, registry=registry, cancellation_timeout=daemon_cancellation_timeout)
    async def _held_here(
        *, name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any
    ) -> None:
        key = AgentKey(namespace or "", name)
        while not stopped:
            try:
                await controller.reconcile(key, dict(body))
                break
            except TransientError as exc:
                log.warning("reconcile failed: %s", exc, extra=resource_extra(namespace or "", name))
                await stopped.wait(RETRY_DELAY_S)
        await stopped.wait()
        reason = stopped.reason or kopf.DaemonStoppingReason(0)
        if reason & kopf.DaemonStoppingReason.OPERATOR_PAUSING:
            await controller.release(key)
