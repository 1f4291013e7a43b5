"""With peering, watch events reach the controller only for agents whose daemon runs in this process.

Found by tests/reliability/test_operator_restarts.py (both replicas started at once): an event kopf
delivered just after the replica paused (queued before it) started the agent's worker again after the
daemon had released it, so two replicas ran that agent. The handlers are taken from a real kopf registry
and called as kopf calls them; the daemon's stop flag is kopf's own (its internal module: kopf offers no
public constructor for it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
from kopf._cogs.aiokits.aioenums import AsyncFlagWaiter
from kopf._core.intents.handlers import DaemonHandler
from kopf._core.intents.stoppers import DaemonStopper, DaemonStoppingReason

from agent_operator.handlers import register
from agent_operator.mapping import AgentKey

KEY = AgentKey("team", "agent")
BODY: dict[str, Any] = {"metadata": {"name": "agent", "namespace": "team"}, "spec": {}}


class RecordingController:
    """Stands in for AgentController: records which calls the handlers make."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.reconciled = asyncio.Event()
        self.reconcile_blocks = asyncio.Event()
        self.reconcile_blocks.set()

    def observe(self, key: AgentKey, body: Mapping[str, Any]) -> None:
        self.calls.append(f"observe {key.worker_id}")

    async def reconcile(self, key: AgentKey, body: Mapping[str, Any]) -> None:
        self.calls.append(f"reconcile {key.worker_id}")
        self.reconciled.set()
        await self.reconcile_blocks.wait()

    async def release(self, key: AgentKey) -> None:
        self.calls.append(f"release {key.worker_id}")

    async def delete(self, key: AgentKey) -> None:
        self.calls.append(f"delete {key.worker_id}")

    def handles(self, key: AgentKey) -> bool:
        return False


async def _nothing() -> None:
    return None


def _handlers(controller: RecordingController, *, peering: bool) -> tuple[Any, Any]:
    """(the event handler's function, the daemon's function or None), as registered for kopf."""
    registry = kopf.OperatorRegistry()
    register(
        registry,
        controller,  # type: ignore[arg-type]  # a recording stand-in with the methods the handlers call
        startup=_nothing,
        cleanup=_nothing,
        login=_nothing,  # type: ignore[arg-type]  # never called here
        peering=peering,
        daemon_cancellation_timeout=10.0,
    )
    (observe,) = [h.fn for h in registry._watching.get_all_handlers()]
    daemons = [h.fn for h in registry._spawning.get_all_handlers()]
    return observe, (daemons[0] if daemons else None)


async def _event(observe: Any) -> None:
    await observe(event={"type": "MODIFIED", "object": BODY}, name="agent", namespace="team", body=BODY)


async def test_events_reach_the_controller_only_while_this_replica_holds_the_agent() -> None:
    controller = RecordingController()
    observe, daemon = _handlers(controller, peering=True)
    stopper: DaemonStopper = DaemonStopper()

    await _event(observe)  # the daemon has not started: it will reconcile itself
    assert controller.calls == []

    task = asyncio.create_task(
        daemon(name="agent", namespace="team", body=BODY, stopped=AsyncFlagWaiter(stopper)), name="daemon"
    )
    await asyncio.wait_for(controller.reconciled.wait(), 5)
    await _event(observe)
    assert controller.calls == ["reconcile team/agent", "observe team/agent"]

    stopper.set(reason=DaemonStoppingReason.OPERATOR_PAUSING)
    await asyncio.wait_for(task, 5)
    await _event(observe)  # delivered after the pause: must not start the worker again
    assert controller.calls == ["reconcile team/agent", "observe team/agent", "release team/agent"]


def test_without_peering_kopf_has_no_gitlabagent_handler() -> None:
    """The operator's own informer delivers the events (agent_watch.py), and nothing makes kopf put its
    finalizer on a GitLabAgent."""
    registry = kopf.OperatorRegistry()
    register(
        registry,
        RecordingController(),  # type: ignore[arg-type]  # never called
        startup=_nothing,
        cleanup=_nothing,
        login=_nothing,  # type: ignore[arg-type]  # never called here
        peering=False,
        daemon_cancellation_timeout=10.0,
    )
    resource_handlers = [
        *registry._watching.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
        *registry._changing.get_all_handlers(),
    ]
    assert resource_handlers == []
    activities = [str(h.activity) for h in registry._activities.get_all_handlers()]
    assert len(activities) == 3, activities  # startup, cleanup, login


async def test_a_daemon_kopf_cancels_while_pausing_still_releases_the_agent() -> None:
    """kopf stops a pausing daemon by setting its flag and, unless it exits at once, cancelling it (with
    no cancellation_backoff: after a few loop cycles). Cancelled mid-reconcile, the daemon used to end
    without the release, and the paused replica ran the agent on beside the other one (CI: 6 connections
    at kas for 5 agents)."""
    controller = RecordingController()
    controller.reconcile_blocks.clear()  # a reconcile waiting on the API server
    _, daemon = _handlers(controller, peering=True)
    stopper: DaemonStopper = DaemonStopper()
    task = asyncio.create_task(
        daemon(name="agent", namespace="team", body=BODY, stopped=AsyncFlagWaiter(stopper)), name="daemon"
    )
    await asyncio.wait_for(controller.reconciled.wait(), 5)
    stopper.set(reason=DaemonStoppingReason.OPERATOR_PAUSING)
    stopper.set(reason=DaemonStoppingReason.DAEMON_CANCELLED)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert controller.calls == ["reconcile team/agent", "release team/agent"]


def test_kopf_waits_for_a_pausing_daemon_before_it_cancels_it() -> None:
    """The daemon's release drains the worker: kopf must give it the drain's time before cancelling."""
    registry = kopf.OperatorRegistry()
    register(
        registry,
        RecordingController(),  # type: ignore[arg-type]  # a recording stand-in
        startup=_nothing,
        cleanup=_nothing,
        login=_nothing,  # type: ignore[arg-type]  # never called here
        peering=True,
        daemon_cancellation_timeout=42.0,
    )
    (handler,) = registry._spawning.get_all_handlers()
    assert isinstance(handler, DaemonHandler)
    assert handler.cancellation_backoff == 42.0
    assert handler.cancellation_timeout == 42.0
