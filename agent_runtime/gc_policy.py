"""Garbage-collector settings for a process that holds many long-lived agents.

CPython's cyclic collector runs a young collection every 700 net container allocations and a full one
whenever the objects that survived into the old generation grew by a quarter. A process that brings up a
thousand agents allocates about two million long-lived objects in a few seconds: with the defaults it
ran some 2,000 young and a dozen full collections during the bring-up, each full one walking the whole
heap (up to 0.85 s with the event loop stopped), in all 3.8 to 4.0 s of the operator's 10 to 14 s of CPU
(docs/benchmarks.md, Session 9). Almost nothing the runtime allocates is cyclic garbage that only
the collector could free (reference counting frees the rest), so collecting less often loses little
memory and saves most of that time.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class GcSettings:
    """Thresholds for `gc.set_threshold` (see the module docstring)."""

    young: int
    """Net container allocations between two young (generation 0) collections."""
    middle: int
    """Young collections between two generation 1 collections."""
    old: int
    """Generation 1 collections before a full one is considered (CPython also waits until the old
    generation grew by a quarter since the last full collection)."""


LONG_LIVED_HEAP: Final = GcSettings(young=10_000, middle=50, old=100)
"""Our choice, measured at 1000 agents: the collector's time during the bring-up went from 3.8 s to
1.2 s, for about 5 % more RSS at the end of the bring-up (docs/benchmarks.md, Session 9)."""


def tune_for_long_lived_heap(settings: GcSettings = LONG_LIVED_HEAP) -> None:
    """Apply `settings`, after moving everything allocated so far (modules, classes, configuration: all
    of it lives as long as the process) out of the collector's sight.

    Call once, from an entry point, after the imports and before the agents start.
    """
    gc.freeze()
    gc.set_threshold(settings.young, settings.middle, settings.old)
