"""The figures every reliability scenario records: printed at the end of the run, and appended as JSON
lines to `$RELIABILITY_FIGURES` when it is set (how docs/reliability.md's numbers were collected).

`scale(name, ci, recorded)` picks a scenario's size: the CI value by default, the recorded run's value
with `RELIABILITY_LONG=1`, or an explicit `RELIABILITY_<NAME>=<n>`.
"""

from __future__ import annotations

import json
import os
from typing import Any

RECORDED: list[str] = []
"""One line per figure, for the terminal summary."""


def scale(name: str, ci: int, recorded: int) -> int:
    """The size of a scenario: `RELIABILITY_<NAME>`, else `recorded` with RELIABILITY_LONG=1, else `ci`."""
    explicit = os.environ.get(f"RELIABILITY_{name.upper()}")
    if explicit:
        return int(explicit)
    return recorded if os.environ.get("RELIABILITY_LONG") == "1" else ci


def record(scenario: str, **values: Any) -> None:
    """Record one scenario's figures (printed at the end; appended to $RELIABILITY_FIGURES if set)."""
    rendered = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    RECORDED.append(f"reliability: {scenario}: {rendered}")
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"scenario": scenario, **values}, default=str) + "\n")


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
