"""WorkerManager: diffing by id, failure isolation, draining, latest-value snapshots."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.manager import WorkerManager
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, Phase, WorkerSnapshot, WorkerSpec
from tests.unit.runtime_mgmt.conftest import unreachable_kube, wait_until
from tests.unit.runtime_mgmt.workers import Behaviour, Factory


def spec(
    worker_id: str,
    token: str = "token-1",  # noqa: S107 - a fake token
    address: str = "grpc://127.0.0.1:1",
) -> WorkerSpec:
    return WorkerSpec(id=worker_id, kas_address=address, token=Secret(token))


async def test_equal_spec_changes_nothing(manager: WorkerManager, factory: Factory) -> None:
    manager.apply(spec("a"))
    await wait_until(lambda: "a" in factory.built and factory.latest("a").running.is_set())
    manager.apply(spec("a"))
    await asyncio.sleep(0.1)
    assert len(factory.built["a"]) == 1
    assert factory.latest("a").tokens == []
    assert factory.latest("a").stop_graces == []


async def test_token_change_updates_in_place(manager: WorkerManager, factory: Factory) -> None:
    manager.apply(spec("a", token="old"))
    await wait_until(lambda: "a" in factory.built and factory.latest("a").running.is_set())
    manager.apply(spec("a", token="new"))
    await wait_until(lambda: factory.latest("a").tokens == [Secret("new")])
    assert len(factory.built["a"]) == 1
    assert not factory.latest("a").finished
    assert manager.desired("a") == spec("a", token="new")


async def test_other_change_restarts(manager: WorkerManager, factory: Factory) -> None:
    manager.apply(spec("a"))
    await wait_until(lambda: "a" in factory.built and factory.latest("a").running.is_set())
    first = factory.latest("a")
    manager.apply(spec("a", address="grpc://127.0.0.1:2"))
    await wait_until(lambda: len(factory.built["a"]) == 2 and factory.latest("a").running.is_set())
    assert first.finished
    assert first.stop_graces == [0.5]
    assert factory.latest("a").spec.kas_address == "grpc://127.0.0.1:2"


async def test_crashing_worker_is_isolated_and_restarted(manager: WorkerManager, factory: Factory) -> None:
    factory.behaviours["bad"] = Behaviour(crash_after=0.05)
    failed: list[WorkerSnapshot] = []
    manager.subscribe(lambda s: failed.append(s) if s.phase is Phase.FAILED else None)
    manager.apply(spec("good"))
    manager.apply(spec("bad"))
    await wait_until(lambda: len(factory.built.get("bad", [])) >= 3)  # crashed twice, restarted twice
    good = factory.built["good"]
    assert len(good) == 1
    assert good[0].running.is_set()
    assert not good[0].finished
    assert failed
    assert {s.id for s in failed} == {"bad"}
    error = failed[0].last_error
    assert error is not None
    assert error.reason is ErrorReason.INTERNAL
    assert "scripted crash" in error.message


async def test_remove_drains(manager: WorkerManager, factory: Factory) -> None:
    removed: list[str] = []
    manager.subscribe_removed(removed.append)
    manager.apply(spec("a"))
    manager.apply(spec("b"))
    await wait_until(lambda: all(factory.latest(i).running.is_set() for i in "ab" if i in factory.built))
    await wait_until(lambda: manager.snapshot("a") is not None and manager.snapshot("b") is not None)
    await manager.remove("a", grace=0.25)
    worker = factory.latest("a")
    assert worker.stop_graces == [0.25]
    assert worker.finished
    assert manager.snapshot("a") is None
    assert manager.worker_ids() == {"b"}
    assert removed == ["a"]
    assert not factory.latest("b").finished


async def test_slow_stop_does_not_stall_others(manager: WorkerManager, factory: Factory) -> None:
    factory.behaviours["slow"] = Behaviour(stop_hangs=True)
    manager.apply(spec("slow"))
    await wait_until(lambda: "slow" in factory.built and factory.latest("slow").running.is_set())
    removal = asyncio.create_task(manager.remove("slow", grace=1.0), name="test-remove-slow")
    await asyncio.sleep(0.05)
    started = time.monotonic()
    manager.apply(spec("fast"))
    await wait_until(lambda: "fast" in factory.built and factory.latest("fast").running.is_set())
    await manager.remove("fast", grace=1.0)
    assert time.monotonic() - started < 1.0  # done while "slow" is still within its grace period
    assert not removal.done()
    await asyncio.wait_for(removal, timeout=10)  # grace + margin, then cancelled
    assert factory.latest("slow").finished


async def test_updates_are_latest_value_per_worker(manager: WorkerManager, factory: Factory) -> None:
    manager.apply(spec("a"))
    manager.apply(spec("b"))
    await wait_until(lambda: all(i in factory.built and factory.latest(i).running.is_set() for i in "ab"))
    updates = manager.updates()
    worker_a = factory.latest("a")
    for idle in range(100):
        worker_a.publish(WorkerSnapshot(id="a", phase=Phase.CONNECTED, tunnels_idle=idle))
    seen = [await anext(updates), await anext(updates)]
    await updates.aclose()
    by_id = {s.id: s for s in seen}
    assert set(by_id) == {"a", "b"}
    assert by_id["a"].tunnels_idle == 99


async def test_stop_drains_everything_and_ends_updates(factory: Factory) -> None:
    mgr = WorkerManager(WorkerEnvironment(kube=unreachable_kube()), worker_factory=factory)
    run = asyncio.create_task(mgr.run(), name="test-manager-run")
    await mgr.wait_started()
    for i in range(5):
        mgr.apply(spec(f"w{i}"))
    await wait_until(
        lambda: len(factory.built) == 5 and all(w[-1].running.is_set() for w in factory.built.values())
    )
    stream = mgr.updates()
    first = await anext(stream)
    await mgr.stop(0.3)
    await asyncio.wait_for(run, timeout=5)
    rest = [s async for s in stream]  # ends by itself once the manager has stopped
    assert {s.id for s in [first, *rest]} <= {f"w{i}" for i in range(5)}
    assert all(w[-1].finished and w[-1].stop_graces == [0.3] for w in factory.built.values())
    assert mgr.worker_ids() == frozenset()
    with pytest.raises(RuntimeError, match="not running"):
        mgr.apply(spec("late"))


def test_same_connection_helper_is_what_the_manager_uses() -> None:
    a = spec("a", token="x")
    assert a.same_connection_as(dataclasses.replace(a, token=Secret("y")))
    assert not a.same_connection_as(dataclasses.replace(a, kas_address="grpc://127.0.0.1:3"))
