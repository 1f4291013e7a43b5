"""`make demo --keep` (scripts/demo.py) leaves nothing running however it is stopped.

The demo starts etcd, kube-apiserver, redis-server, kas and the operator. SIGTERM while it keeps
running, or a second Ctrl-C while it cleans up, used to leave kas and the operator behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, wait_for
from tests.support.k8s_cluster import find_assets
from tests.support.redis_server import find_redis_server
from tests.support.require import require

pytestmark = pytest.mark.timeout(240)

UP = "everything keeps running"
STOPPING = "[demo] stopping"


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            found[int(entry.name)] = int(ppid)
    return found


def _descendants(pid: int) -> set[int]:
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _command(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


class _Demo:
    """scripts/demo.py --keep in a session of its own, its output collected by a thread."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--keep"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="demo-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def said(self, text: str) -> bool:
        if self.proc.poll() is not None and not any(text in line for line in self.lines):
            raise AssertionError(f"demo exited with {self.proc.returncode}:\n{self.output()}")
        return any(text in line for line in self.lines)

    def output(self) -> str:
        return "".join(self.lines)

    def kill_everything(self, pids: set[int]) -> None:
        """The test's own safety net: whatever the demo left behind."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


@pytest.fixture
def demo() -> Iterator[_Demo]:
    require(find_assets)  # skips, or fails under REQUIRE_K8S=1, like every substrate fixture
    require(find_redis_server)
    running = _Demo()
    started: set[int] = set()
    try:
        wait_for("the demo to be up", lambda: running.said(UP), timeout=150, interval=0.2)
        started |= _descendants(running.proc.pid)
        yield running
    finally:
        running.kill_everything(started | _descendants(running.proc.pid))


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)],
    ids=["sigterm", "ctrl-c-twice", "ctrl-c-then-sigterm"],
)
def test_the_demo_stops_every_child_however_it_is_stopped(
    demo: _Demo, signals: tuple[signal.Signals, ...]
) -> None:
    started = _descendants(demo.proc.pid)
    assert len(started) >= 5, (started, demo.output())  # etcd, kube-apiserver, redis, kas, operator

    first, *later = signals
    demo.proc.send_signal(first)
    for signum in later:  # arrives while the clean-up is stopping the children
        wait_for("the clean-up to begin", lambda: demo.said(STOPPING), timeout=20, interval=0.05)
        demo.proc.send_signal(signum)
    demo.proc.wait(timeout=90)

    try:
        wait_for("every child gone", lambda: not started & set(_parents()), timeout=15, interval=0.2)
    except AssertionError:
        left = {pid: _command(pid) for pid in started & set(_parents())}
        raise AssertionError(f"left running: {left}\n{demo.output()}") from None
    assert demo.proc.returncode == 0, demo.output()
    assert "[demo] stopped" in demo.output()
