"""WorkerManager: successive token changes all stay in place; a worker that keeps crashing is restarted
with backoff, not in a loop; a failing update_token falls back to a restart."""

from __future__ import annotations

import asyncio
import functools

import pytest

from agent_runtime.backoff import BackoffPolicy
from agent_runtime.environment import WorkerEnvironment
from agent_runtime.manager import WorkerManager
from agent_runtime.secret import Secret
from tests.unit.runtime_mgmt.conftest import unreachable_kube, wait_until
from tests.unit.runtime_mgmt.test_manager import spec
from tests.unit.runtime_mgmt.workers import Behaviour, Factory, ScriptedWorker


async def test_every_token_change_is_applied_in_place(manager: WorkerManager, factory: Factory) -> None:
    manager.apply(spec("a", token="t1"))
    await wait_until(lambda: "a" in factory.built and factory.latest("a").running.is_set())

    def took(token: str) -> bool:
        return factory.latest("a").tokens[-1:] == [Secret(token)]

    for token in ("t2", "t3", "t4"):
        manager.apply(spec("a", token=token))
        await wait_until(functools.partial(took, token))
    assert factory.latest("a").tokens == [Secret("t2"), Secret("t3"), Secret("t4")]
    assert len(factory.built["a"]) == 1


async def test_a_worker_that_keeps_crashing_is_restarted_with_backoff(
    manager: WorkerManager, factory: Factory
) -> None:
    factory.behaviours["bad"] = Behaviour(crash_after=0.0)
    manager.apply(spec("bad"))
    await wait_until(lambda: len(factory.built.get("bad", [])) >= 2)
    await asyncio.sleep(0.3)
    # FAST_RESTART waits 0.05, 0.1, 0.2, 0.2 s: a handful of restarts, not one per loop iteration.
    assert len(factory.built["bad"]) <= 6


async def test_a_failing_update_token_restarts_the_worker_with_the_new_token(
    manager: WorkerManager, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: ScriptedWorker, token: Secret) -> None:
        raise RuntimeError("cannot rotate")

    monkeypatch.setattr(ScriptedWorker, "update_token", refuse)
    manager.apply(spec("a", token="old"))
    await wait_until(lambda: "a" in factory.built and factory.latest("a").running.is_set())
    manager.apply(spec("a", token="new"))
    await wait_until(lambda: len(factory.built["a"]) == 2 and factory.latest("a").running.is_set())
    assert factory.built["a"][0].finished
    assert factory.latest("a").spec.token == Secret("new")


async def test_a_changed_spec_is_no_crash_for_the_restart_backoff(factory: Factory) -> None:
    """Stopping a worker for a new spec is no crash: it must not advance the crash-restart backoff, so the
    new worker's first crash is retried after the first delay (0.05 s), not the second (5 s)."""
    env = WorkerEnvironment(kube=unreachable_kube())
    steep = BackoffPolicy(initial=0.05, cap=100.0, factor=100.0, jitter=0.0, reset_after=60.0)
    manager = WorkerManager(env, worker_factory=factory, stop_grace=0.5, restart_backoff=steep)
    task = asyncio.create_task(manager.run(), name="test-worker-manager")
    await manager.wait_started()
    try:
        manager.apply(spec("a"))
        await wait_until(lambda: "a" in factory.built and factory.latest("a").running.is_set())
        factory.behaviours["a"] = Behaviour(crash_after=0.0)  # the next worker crashes at once
        manager.apply(spec("a", address="grpc://127.0.0.1:2"))
        await wait_until(lambda: len(factory.built["a"]) >= 3, within=2.0)
    finally:
        await manager.stop(1.0)
        await asyncio.wait_for(task, 10)
