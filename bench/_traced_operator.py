"""`python bench/_traced_operator.py DIR FRAMES <operator flags>`: the operator, for memory profiles.

A bench-only wrapper (never part of the operator): starts tracemalloc with FRAMES frames per trace (0: no
tracemalloc, so the process behaves as usual), then runs `agent_operator.__main__.main()`. Each SIGUSR1
writes, into DIR, `snapshot-<n>.pickle` (a tracemalloc snapshot, when on) and `malloc-<n>.xml` (glibc's
`malloc_info`: per-arena heap sizes and the free memory they hold), so a profile can tell live Python
objects from memory the allocator keeps. `density.py --tracemalloc DIR` / `--malloc-info DIR` drive it.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import gc
import itertools
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from xml.etree import ElementTree

import _bootstrap


def _malloc_info(path: Path) -> None:
    """glibc's malloc_info(0, FILE*) into `path` (nothing on other C libraries)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "malloc_info"):
        return
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    handle = libc.fopen(str(path).encode(), b"w")
    if handle:
        libc.malloc_info(0, handle)
        libc.fclose(handle)


def _task_census(path: Path) -> None:
    """How many asyncio tasks wait where (coroutine and innermost frame), most common first.

    The handler runs on the main thread, between two steps of the event loop running there.
    """
    try:
        tasks = asyncio.all_tasks(asyncio.get_running_loop())
    except RuntimeError:  # no loop running yet (or any more)
        return
    census: collections.Counter[str] = collections.Counter()
    for task in tasks:
        frames = task.get_stack()
        where = f"{frames[-1].f_code.co_filename}:{frames[-1].f_lineno}" if frames else "-"
        coro = task.get_coro()
        census[f"{getattr(coro, '__qualname__', type(coro).__name__)} @ {_short(where)}"] += 1
    path.write_text("".join(f"{count:6} {what}\n" for what, count in census.most_common()))


LAST_DUMP = 2
"""density.py dumps three times (empty, loaded, late); the census collects garbage before the last."""


def _object_census(path: Path) -> None:
    """Objects the garbage collector tracks (containers: dicts, lists, instances), by type: count and
    shallow size, largest first. Two dumps tell which types an agent adds (strings and numbers are not
    tracked; the dicts and lists holding them are)."""
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    if path.name == f"objects-{LAST_DUMP}.txt":  # after the last RSS sample: how much was cyclic garbage
        counts["(cyclic garbage collected first)"] = gc.collect()
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    path.write_text("".join(f"{sizes[name]} {counts[name]} {name}\n" for name, _ in sizes.most_common()))


def summarise_objects(out: Path, before: int, after: int, agents: int, top: int = 25) -> str:
    """Per agent, the gc-tracked objects added between two dumps, by type (shallow sizes)."""
    old, new = _objects(out, before), _objects(out, after)
    grown = sorted(((new[k][0] - old.get(k, (0, 0))[0], k) for k in new), reverse=True)
    lines = [f"gc-tracked objects, dump {before} -> {after}, per agent (N = {agents}; shallow sizes):"]
    for size, name in grown[:top]:
        count = (new[name][1] - old.get(name, (0, 0))[1]) / agents
        lines.append(f"  {size / agents / 1024:8.2f} KiB {count:7.1f} objects  {name}")
    return "\n".join(lines)


def _objects(out: Path, n: int) -> dict[str, tuple[int, int]]:
    """type name -> (bytes, count) from one `_object_census` dump."""
    found: dict[str, tuple[int, int]] = {}
    for line in (out / f"objects-{n}.txt").read_text().splitlines():
        size, count, name = line.split(" ", 2)
        found[name] = (int(size), int(count))
    return found


def _pymalloc_stats(path: Path) -> None:
    """`sys._debugmallocstats()` (pymalloc's arenas, pools and blocks) into `path`: it prints to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("wb") as out:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main() -> int:
    out, frames = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    counter = itertools.count()

    def dump(_signum: int, _frame: FrameType | None) -> None:
        n = next(counter)
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(out / f"snapshot-{n}.pickle"))
        _pymalloc_stats(out / f"pymalloc-{n}.txt")
        _task_census(out / f"tasks-{n}.txt")
        _object_census(out / f"objects-{n}.txt")
        _malloc_info(out / f"malloc-{n}.xml")

    signal.signal(signal.SIGUSR1, dump)
    if frames:
        tracemalloc.start(frames)
    from agent_operator.__main__ import main as operator_main

    return operator_main(sys.argv[3:])


def summarise(out: Path, before: int, after: int, agents: int, top: int = 25) -> str:
    """The growth between two snapshots, per agent: by file, and by allocating line (with its caller)."""
    old = tracemalloc.Snapshot.load(str(out / f"snapshot-{before}.pickle"))
    new = tracemalloc.Snapshot.load(str(out / f"snapshot-{after}.pickle"))
    lines = [f"tracemalloc growth, snapshot {before} -> {after}, per agent (N = {agents}):"]
    total = sum(s.size_diff for s in new.compare_to(old, "filename"))
    lines.append(f"  total {total / agents / 1024:.1f} KiB per agent")
    for key_type in ("filename", "lineno"):
        lines.append(f"  by {key_type}:")
        for stat in new.compare_to(old, key_type)[:top]:
            frame = stat.traceback[0]
            where = (
                f"{_short(frame.filename)}:{frame.lineno}" if key_type == "lineno" else _short(frame.filename)
            )
            size, count = stat.size_diff / agents / 1024, stat.count_diff / agents
            lines.append(f"    {size:8.2f} KiB {count:7.1f} blocks  {where}")
    return "\n".join(lines)


def summarise_malloc(out: Path, before: int, after: int, agents: int) -> str:
    """What glibc's heaps grew by between two dumps, per agent: in use, and free but kept by the heap."""
    lines = [f"glibc heaps, dump {before} -> {after}, per agent (N = {agents}):"]
    (used0, free0, mapped0), (used1, free1, mapped1) = _heaps(out, before), _heaps(out, after)
    for what, grown in (
        ("in use (heap minus free chunks)", used1 - used0),
        ("free chunks kept in the heaps", free1 - free0),
        ("mmapped chunks", mapped1 - mapped0),
    ):
        lines.append(f"  {grown / agents / 1024:8.1f} KiB  {what}")
    return "\n".join(lines)


def summarise_pymalloc(out: Path, before: int, after: int, agents: int) -> str:
    """What pymalloc (Python's allocator for objects up to 512 bytes, in 1 MiB arenas) grew by, per agent."""
    old, new = _pymalloc(out, before), _pymalloc(out, after)
    lines = [f"pymalloc, dump {before} -> {after}, per agent (N = {agents}):"]
    for name, value in new.items():
        lines.append(f"  {(value - old.get(name, 0)) / agents / 1024:8.1f} KiB  {name}")
    return "\n".join(lines)


_PYMALLOC_LINES = {
    "arenas": "# arenas allocated current",
    "in allocated blocks": "# bytes in allocated blocks",
    "in available blocks": "# bytes in available blocks",
    "in unused pools": "unused pools",
}
"""The `_debugmallocstats` lines summarised (arena counts are reported in arenas, the rest in bytes)."""
_ARENA_BYTES = 1 << 20
"""pymalloc's arena size on 64-bit CPython 3.10+."""


def _pymalloc(out: Path, n: int) -> dict[str, int]:
    """Bytes per `_PYMALLOC_LINES` entry from one `_debugmallocstats` dump."""
    found: dict[str, int] = {}
    for line in (out / f"pymalloc-{n}.txt").read_text(errors="replace").splitlines():
        for name, prefix in _PYMALLOC_LINES.items():
            if line.strip().startswith(prefix) or (name == "in unused pools" and prefix in line):
                value = int(line.rsplit("=", 1)[-1].replace(",", "").split()[0])
                found.setdefault(name, value * _ARENA_BYTES if name == "arenas" else value)
    return found


def _heaps(out: Path, n: int) -> tuple[int, int, int]:
    """(in use, free, mmapped) bytes over all arenas of one malloc_info dump."""
    root = ElementTree.parse(out / f"malloc-{n}.xml").getroot()  # noqa: S314 - glibc wrote it, for us
    free = sum(int(t.get("size", 0)) for t in root.findall("total") if t.get("type") in ("fast", "rest"))
    mapped = sum(int(t.get("size", 0)) for t in root.findall("total") if t.get("type") == "mmap")
    system = sum(int(s.get("size", 0)) for s in root.findall("system") if s.get("type") == "current")
    return system - free, free, mapped


def _short(filename: str) -> str:
    """A path from the package on (`asyncio/sslproto.py`, `kopf/_core/...`), never a machine path."""
    for marker in ("site-packages/", "python3.11/", str(_bootstrap.REPO_ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


if __name__ == "__main__":
    sys.exit(main())
