"""A Runtime with N workers in this process, driven by the benchmarks over stdin/stdout (JSON lines).

    python bench/_runtime_child.py --kubeconfig admin.kubeconfig

Commands (one JSON object per line) and their one-line replies:
    {"cmd": "apply", "kas": URL, "agents": [[id, token], ...]}  -> {"t": monotonic time of the apply}
    {"cmd": "mark"}                  -> {"t": ...}; forget when workers left and re-entered Connected
    {"cmd": "wait", "timeout": s}    -> until every worker is Connected (again, if it left after mark)
    {"cmd": "stats"}                 -> RSS, CPU seconds, phases
    {"cmd": "idle", "seconds": s}    -> CPU seconds used over `s` seconds of doing nothing
    {"cmd": "stop"}                  -> drains and exits
Times are time.monotonic(), which is system-wide on Linux, so the parent can compare them with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import sys
import time
from typing import Any

import _bootstrap  # noqa: F401 - same sys.path as the other bench scripts

from agent_runtime.gc_policy import tune_for_long_lived_heap
from agent_runtime.kube import load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import Phase, WorkerSnapshot, WorkerSpec


def rss_bytes() -> int:
    """VmRSS of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads, including gRPC's C-core threads)."""
    times = os.times()
    return times.user + times.system


class Tracker:
    """Per worker: when it left Connected and when it came back, since the last mark."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.mark = time.monotonic()
        self.left: dict[str, float] = {}
        self.back: dict[str, float] = {}
        self.changed = asyncio.Event()

    def reset(self) -> float:
        self.mark = time.monotonic()
        self.left.clear()
        self.back.clear()
        return self.mark

    def observe(self, snapshot: WorkerSnapshot) -> None:
        now = time.monotonic()
        if snapshot.phase is Phase.CONNECTED:
            self.back.setdefault(snapshot.id, now)
        elif snapshot.id in self.back and snapshot.id not in self.left:
            # Left Connected after having been seen connected since the mark: count the next return.
            self.left[snapshot.id] = now
            del self.back[snapshot.id]
        elif snapshot.id not in self.back:
            self.left.setdefault(snapshot.id, now)
        self.changed.set()

    def phases(self) -> dict[str, int]:
        return dict(collections.Counter(s.phase.value for s in self.runtime.snapshots().values()))

    def all_connected(self) -> bool:
        snaps = self.runtime.snapshots()
        return bool(snaps) and all(s.phase is Phase.CONNECTED for s in snaps.values())


async def _wait(tracker: Tracker, time_limit: float) -> dict[str, Any]:
    began = time.monotonic()
    try:
        async with asyncio.timeout(time_limit):
            while not tracker.all_connected():
                tracker.changed.clear()
                await tracker.changed.wait()
        ok = True
    except TimeoutError:
        ok = False
    return {
        "ok": ok,
        "waited": time.monotonic() - began,
        "mark": tracker.mark,
        "left": sorted(tracker.left.values()),
        "back": sorted(tracker.back.values()),
        "phases": tracker.phases(),
    }


async def _idle(seconds: float) -> dict[str, Any]:
    before_cpu, before = cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    return {"cpu": cpu_seconds() - before_cpu, "elapsed": time.monotonic() - before}


def _stats(tracker: Tracker) -> dict[str, Any]:
    gc.collect()
    return {
        "rss": rss_bytes(),
        "cpu": cpu_seconds(),
        "workers": len(tracker.runtime.snapshots()),
        "phases": tracker.phases(),
        "threads": len(os.listdir("/proc/self/task")),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _serve(runtime: Runtime, tracker: Tracker) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _reply({"ready": True, **_stats(tracker)})
    while line := await reader.readline():
        message = json.loads(line)
        command = message["cmd"]
        if command == "apply":
            began = time.monotonic()
            for agent_id, token in message["agents"]:
                spec = WorkerSpec(
                    id=f"bench/agent-{agent_id}", kas_address=message["kas"], token=Secret(token)
                )
                runtime.apply(spec)
            _reply({"t": began, "applied": len(message["agents"])})
        elif command == "mark":
            _reply({"t": tracker.reset()})
        elif command == "wait":
            _reply(await _wait(tracker, float(message.get("timeout", 60))))
        elif command == "stats":
            _reply(_stats(tracker))
        elif command == "idle":
            _reply(await _idle(float(message["seconds"])))
        elif command == "stop":
            break
        else:
            _reply({"error": f"unknown command {command!r}"})


async def _main(kubeconfig: str) -> None:
    kube = await asyncio.to_thread(load_kube_access, kubeconfig)
    runtime = Runtime(
        kube, RuntimeSettings(observability_address=None, stop_grace=1.0, policy=PERMISSIVE_POLICY)
    )
    tracker = Tracker(runtime)
    runtime.subscribe(tracker.observe)
    await runtime.start()
    try:
        await _serve(runtime, tracker)
    finally:
        async with asyncio.timeout(60):
            await runtime.stop(1.0)
        await kube.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tune_for_long_lived_heap()  # as the runtime's and the operator's entry points
    asyncio.run(_main(args.kubeconfig))


if __name__ == "__main__":
    main()
