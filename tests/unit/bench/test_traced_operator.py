"""The memory dumps of bench/_traced_operator.py and their per-agent summaries (run in this process)."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

from _traced_operator import (
    _malloc_info,
    _object_census,
    _pymalloc_stats,
    _task_census,
    summarise,
    summarise_malloc,
    summarise_objects,
    summarise_pymalloc,
)


class _PerAgent:
    """Stands in for one agent's state."""

    def __init__(self, n: int) -> None:
        self.labels = {f"key-{i}": f"value-{n}-{i}" for i in range(8)}


def _dump(out: Path, n: int) -> None:
    tracemalloc.take_snapshot().dump(str(out / f"snapshot-{n}.pickle"))
    _pymalloc_stats(out / f"pymalloc-{n}.txt")
    _object_census(out / f"objects-{n}.txt")
    _malloc_info(out / f"malloc-{n}.xml")


def test_the_summaries_show_what_the_agents_added(tmp_path: Path) -> None:
    tracemalloc.start(2)
    try:
        _dump(tmp_path, 0)
        agents = [_PerAgent(n) for n in range(2000)]
        _dump(tmp_path, 1)
    finally:
        tracemalloc.stop()
    assert len(agents) == 2000
    objects = summarise_objects(tmp_path, 0, 1, 2000)
    assert "_PerAgent" in objects
    assert "per agent (N = 2000" in summarise_pymalloc(tmp_path, 0, 1, 2000)
    traced = summarise(tmp_path, 0, 1, 2000)
    assert "test_traced_operator.py" in traced
    if (tmp_path / "malloc-1.xml").exists():  # glibc only
        assert "free chunks kept in the heaps" in summarise_malloc(tmp_path, 0, 1, 2000)


async def test_the_task_census_counts_waiting_tasks_by_place(tmp_path: Path) -> None:
    blocker = asyncio.Event()
    tasks = [asyncio.create_task(blocker.wait(), name=f"test-waiter-{n}") for n in range(3)]
    await asyncio.sleep(0)
    try:
        _task_census(tmp_path / "tasks-0.txt")
    finally:
        blocker.set()
        await asyncio.gather(*tasks)
    lines = (tmp_path / "tasks-0.txt").read_text().splitlines()
    assert any(line.split()[0] == "3" and "Event.wait" in line for line in lines)
