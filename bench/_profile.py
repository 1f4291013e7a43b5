"""Sampling profiles of benchmark processes with py-spy (`--profile DIR` on the scripts).

py-spy writes collapsed stacks ("frame;frame;leaf count" per line); `summarise` turns them into the
functions with the most samples on the CPU: self time (leaf frames) and inclusive time within the
project's own packages.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import sys
from pathlib import Path

OWN_PACKAGES = ("agent_runtime/", "kas/", "agent_proto/", "agent_operator/")


class PySpy:
    """`py-spy record` attached to a running process, for at most `seconds`."""

    def __init__(self, pid: int, out: Path, seconds: int, *, native: bool = False) -> None:
        self.pid = pid
        self.out = out
        self.seconds = seconds
        self.native = native
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        args = [binary, "record", "--pid", str(self.pid), "--duration", str(self.seconds)]
        args += ["--rate", "200", "--format", "raw", "--output", str(self.out)]
        # --native (C frames, e.g. inside grpc's Cython core) needs to pause the process to unwind it.
        args.append("--native" if self.native else "--nonblocking")
        with self.out.with_suffix(".log").open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.DEVNULL, stderr=log
            )

    async def wait(self) -> None:
        if self._proc is None:
            return
        try:
            async with asyncio.timeout(self.seconds + 30):
                await self._proc.wait()
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
"""Stripped from profile paths, so frames read as repository-relative paths."""


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; drop the line number.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "python3.11/", f"{_REPO_ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def summarise(collapsed: Path, top: int = 15) -> str:
    """Top self-time frames and top inclusive project functions, as text."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        self_time[frames[-1]] += count
        for name in set(frames):
            if any(p in name for p in OWN_PACKAGES):
                inclusive[name] += count
    if total == 0:
        return f"{collapsed.name}: no samples"
    lines = [f"{collapsed.name}: {total} samples", "  self (leaf) time:"]
    lines += [f"    {100 * c / total:5.1f}%  {name}" for name, c in self_time.most_common(top)]
    lines.append("  inclusive, project code:")
    lines += [f"    {100 * c / total:5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    return "\n".join(lines)
