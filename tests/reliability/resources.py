"""What this process holds, sampled between the cycles of a scenario: RSS, open descriptors, asyncio tasks.

Counting tasks only reads `asyncio.all_tasks()`; nothing here stops or awaits them.
"""

from __future__ import annotations

import asyncio
import gc
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    rss_mib: float
    fds: int
    tasks: int

    def __str__(self) -> str:
        return f"{self.rss_mib:.1f}MiB/{self.fds}fd/{self.tasks}tasks"


def rss_mib() -> float:
    """Resident set size of this process (VmRSS), in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def sample() -> Usage:
    """RSS after a full collection, open descriptors and live asyncio tasks of this process."""
    gc.collect()
    return Usage(rss_mib(), len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks()))
