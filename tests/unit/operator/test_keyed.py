"""KeyedTasks: one task per busy key, coalescing kicks, leading-edge debounce."""

from __future__ import annotations

import asyncio
import contextlib

from agent_operator.keyed import KeyedTasks


async def test_first_kick_runs_at_once_and_follow_ups_coalesce_after_the_debounce() -> None:
    loop = asyncio.get_running_loop()
    runs: list[tuple[str, float]] = []
    release = asyncio.Event()

    async def work(key: str) -> None:
        runs.append((key, loop.time()))
        if len(runs) == 1:
            await release.wait()  # kicks during this run must coalesce into one more run

    tasks: KeyedTasks[str] = KeyedTasks("test", work, debounce=0.2)
    supervisor = asyncio.create_task(tasks.run(), name="keyed-supervisor")
    try:
        await asyncio.sleep(0)
        started = loop.time()
        tasks.kick("a")
        await asyncio.sleep(0.05)
        assert [k for k, _ in runs] == ["a"]
        assert runs[0][1] - started < 0.1, "the first kick of an idle key is not delayed"
        for _ in range(5):
            tasks.kick("a")
        release.set()
        async with asyncio.timeout(2):
            while tasks.busy("a"):  # noqa: ASYNC110 - observing the supervisor from outside
                await asyncio.sleep(0.01)
        assert [k for k, _ in runs] == ["a", "a"], "five kicks during a run make one more run"
        assert runs[1][1] - runs[0][1] >= 0.2, "the follow-up waits for the debounce"
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor


async def test_a_failing_key_does_not_stop_the_others() -> None:
    done: list[str] = []

    async def work(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        done.append(key)

    tasks: KeyedTasks[str] = KeyedTasks("test", work)
    supervisor = asyncio.create_task(tasks.run(), name="keyed-supervisor")
    try:
        await asyncio.sleep(0)
        tasks.kick("bad")
        tasks.kick("good")
        async with asyncio.timeout(2):
            while not done:  # noqa: ASYNC110 - observing the supervisor from outside
                await asyncio.sleep(0.01)
        assert done == ["good"]
        assert not supervisor.done()
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor


async def test_a_kick_marked_now_cuts_the_debounce_short() -> None:
    loop = asyncio.get_running_loop()
    runs: list[float] = []

    async def work(key: str) -> None:
        runs.append(loop.time())

    tasks: KeyedTasks[str] = KeyedTasks("test", work, debounce=1.0)
    supervisor = asyncio.create_task(tasks.run(), name="keyed-supervisor")
    try:
        await asyncio.sleep(0)
        tasks.kick("a")
        tasks.kick("a")  # a follow-up: waits for the debounce
        await asyncio.sleep(0.05)
        assert len(runs) == 1
        tasks.kick("a", now=True)  # due now: the wait ends
        async with asyncio.timeout(2):
            while tasks.busy("a"):  # noqa: ASYNC110 - observing the supervisor from outside
                await asyncio.sleep(0.01)
        assert len(runs) == 2, "the waiting follow-up and the urgent kick coalesce into one run"
        assert runs[1] - runs[0] < 0.5
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
