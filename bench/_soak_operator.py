"""`python bench/_soak_operator.py FILE <operator flags>`: the operator, counting its asyncio tasks on demand.

A bench-only wrapper (never part of the operator) for bench/soak.py: each SIGUSR2 writes the number of
asyncio tasks of the operator's event loop into FILE (atomically, by rename), then the operator runs as
`python -m agent_operator` would. Cheap enough to ask every 10 s for a whole soak (unlike the memory dumps
of bench/_traced_operator.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import _bootstrap  # noqa: F401 - the repository root on sys.path, as for every bench script


def main() -> int:
    out = Path(sys.argv[1])

    def count_tasks(_signum: int, _frame: FrameType | None) -> None:
        # The handler runs on the main thread, between two steps of the event loop running there.
        try:
            count = len(asyncio.all_tasks(asyncio.get_running_loop()))
        except RuntimeError:  # no loop running yet (or any more)
            return
        tmp = out.with_suffix(".tmp")
        tmp.write_text(f"{count}\n")
        os.replace(tmp, out)

    signal.signal(signal.SIGUSR2, count_tasks)
    from agent_operator.__main__ import main as operator_main

    return operator_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
