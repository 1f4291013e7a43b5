"""ShardGate with a recording runtime and in-memory claims: drain, then release; wait for a live holder;
take over only a confirmed-dead holder's claim; stop at once when the claim is gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from agent_operator.sharding.gate import ShardGate
from agent_operator.sharding.leases import CLAIM, LeaseView
from agent_operator.sharding.metrics import ShardMetrics
from agent_runtime.secret import Secret
from agent_runtime.sharding.assign import owner
from agent_runtime.spec import WorkerSnapshot, WorkerSpec

ME = "a"
OTHER = "b"


def _agent_moving_to_other() -> str:
    """An agent that `ME` owns alone and `OTHER` owns once it joins."""
    for i in range(1000):
        agent = f"ns/agent-{i}"
        if owner(agent, [ME, OTHER]) == OTHER:
            return agent
    raise AssertionError("no such agent")


AGENT = _agent_moving_to_other()


class Runtime:
    """Records apply/remove; `remove` waits for `drained` (a worker finishing its in-flight requests)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.running: dict[str, WorkerSpec] = {}
        self.drained = asyncio.Event()
        self.drained.set()
        self.graces: list[float | None] = []

    def apply(self, spec: WorkerSpec) -> None:
        self.running[spec.id] = spec
        self.log.append("start")

    async def remove(self, worker_id: str, grace: float | None = None) -> None:
        self.graces.append(grace)
        self.log.append("drain")
        await self.drained.wait()
        self.running.pop(worker_id, None)
        self.log.append("drained")

    def snapshot(self, worker_id: str) -> WorkerSnapshot | None:
        return None


class Claims:
    """Claims in memory: agent -> (holder, version)."""

    me = ME

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.held: dict[str, tuple[str, str]] = {}
        self.versions = 0

    def _next(self) -> str:
        self.versions += 1
        return str(self.versions)

    async def claim(self, agent: str) -> str | None:
        if agent in self.held:
            return None
        self.held[agent] = (ME, self._next())
        self.log.append("claim")
        return self.held[agent][1]

    async def take_over(self, agent: str, version: str) -> str | None:
        if agent not in self.held or self.held[agent][1] != version:
            return None
        self.held[agent] = (ME, self._next())
        self.log.append("take-over")
        return self.held[agent][1]

    async def release(self, agent: str, version: str) -> None:
        if self.held.get(agent, ("", ""))[1] == version:
            del self.held[agent]
        self.log.append("release")


class Members:
    def __init__(self) -> None:
        self.live: frozenset[str] | None = frozenset({ME})
        self.dead: set[str] = set()

    async def confirm_dead(self, holder: str) -> bool:
        return holder in self.dead


class Fixture:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.runtime = Runtime(self.log)
        self.claims = Claims(self.log)
        self.members = Members()
        self.gate = ShardGate(
            self.runtime, self.claims, self.members, ShardMetrics(CollectorRegistry()), drain_grace=3.0
        )

    def claim_event(self, holder: str, version: str, *, deleted: bool = False) -> None:
        self.gate.claim_changed(LeaseView("claim", CLAIM, holder, version, 8.0, AGENT), deleted)

    async def until(self, what: str) -> None:
        for _ in range(200):  # 2 s
            if what in self.log:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {what!r} in {self.log}")


@pytest.fixture
async def fx() -> AsyncIterator[Fixture]:
    fixture = Fixture()
    task = asyncio.create_task(fixture.gate.run(), name="gate")
    yield fixture
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _spec() -> WorkerSpec:
    return WorkerSpec(id=AGENT, kas_address="grpc://127.0.0.1:1", token=Secret("t" * 50))


async def test_the_old_owner_releases_the_claim_only_after_its_worker_drained(fx: Fixture) -> None:
    fx.gate.apply(_spec())
    await fx.until("start")
    assert fx.log == ["claim", "start"]
    fx.runtime.drained.clear()  # an in-flight request keeps the worker draining
    fx.members.live = frozenset({ME, OTHER})
    fx.gate.settle_all()
    await fx.until("drain")
    await asyncio.sleep(0.1)
    assert "release" not in fx.log  # the new owner still waits
    assert AGENT in fx.claims.held
    fx.runtime.drained.set()
    await fx.until("release")
    assert fx.log == ["claim", "start", "drain", "drained", "release"]
    assert fx.runtime.graces == [3.0]  # handed over: the full drain grace
    assert AGENT not in fx.claims.held


async def test_a_live_holders_claim_is_waited_for_until_released(fx: Fixture) -> None:
    agent = next(f"ns/x-{i}" for i in range(1000) if owner(f"ns/x-{i}", [ME, "c"]) == ME)
    fx.members.live = frozenset({ME, "c"})
    fx.claims.held[agent] = ("c", "7")  # c still runs it (it owned the agent before we joined, say)
    fx.gate.claim_changed(LeaseView("claim", CLAIM, "c", "7", 8.0, agent), False)
    fx.gate.apply(WorkerSpec(id=agent, kas_address="grpc://127.0.0.1:1", token=Secret("t" * 50)))
    await asyncio.sleep(0.2)
    assert fx.log == []
    del fx.claims.held[agent]
    fx.gate.claim_changed(LeaseView("claim", CLAIM, "c", "8", 8.0, agent), True)  # released after its drain
    await fx.until("start")
    assert fx.log == ["claim", "start"]


async def test_a_holder_not_confirmed_dead_is_waited_for(fx: Fixture) -> None:
    fx.claims.held[AGENT] = (OTHER, "7")
    fx.claim_event(OTHER, "7")  # OTHER is no live member, but a fresh read says it renewed
    fx.gate.apply(_spec())
    await asyncio.sleep(0.2)
    assert fx.log == []


async def test_a_dead_holders_claim_is_taken_over(fx: Fixture) -> None:
    fx.claims.held[AGENT] = (OTHER, "7")
    fx.claim_event(OTHER, "7")
    fx.members.dead = {OTHER}
    fx.gate.apply(_spec())
    await fx.until("start")
    assert fx.log == ["take-over", "start"]
    assert fx.claims.held[AGENT][0] == ME


async def test_a_claim_taken_by_another_stops_the_worker_at_once(fx: Fixture) -> None:
    fx.gate.apply(_spec())
    await fx.until("start")
    fx.claims.held[AGENT] = (OTHER, "99")
    fx.claim_event(OTHER, "99")
    await fx.until("drained")
    assert fx.runtime.graces == [0.0]
    assert AGENT not in fx.runtime.running


async def test_a_claim_that_comes_back_after_the_fence_starts_nothing(fx: Fixture) -> None:
    """The fence stops what runs; a claim in flight meanwhile must not start a worker afterwards (nothing
    would stop it: the fenced replica keeps running what it holds, the others take it over)."""
    answer = asyncio.Event()
    claim = fx.claims.claim

    async def slow_claim(agent: str) -> str | None:
        await answer.wait()  # the API server answers late
        return await claim(agent)

    fx.claims.claim = slow_claim  # type: ignore[method-assign]
    fx.gate.apply(_spec())
    await asyncio.sleep(0.05)
    fx.members.live = None  # fenced: this replica cannot renew its member Lease
    await fx.gate.fence()
    answer.set()
    await fx.until("release")
    assert fx.log == ["claim", "release"]
    assert AGENT not in fx.runtime.running
    assert AGENT not in fx.claims.held
