"""The collector settings the entry points apply for a heap of many long-lived agents."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from agent_runtime.gc_policy import LONG_LIVED_HEAP


def _run(code: str) -> str:
    """Run `code` in a fresh interpreter (the collector's settings are per process) and return stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_thresholds_are_set_and_what_exists_is_frozen() -> None:
    out = _run(
        """
        import gc
        from agent_runtime.gc_policy import tune_for_long_lived_heap
        before = gc.get_freeze_count()
        tune_for_long_lived_heap()
        print(before, gc.get_freeze_count() > 1000, *gc.get_threshold())
        """
    )
    expected = (LONG_LIVED_HEAP.young, LONG_LIVED_HEAP.middle, LONG_LIVED_HEAP.old)
    assert out == "0 True " + " ".join(map(str, expected))


def test_cyclic_garbage_made_later_is_still_collected() -> None:
    """Freezing covers only what existed at the call: a cycle that becomes garbage afterwards goes in
    the next young collection, so a removed agent's cycles do not pile up."""
    out = _run(
        """
        import gc, weakref
        from agent_runtime.gc_policy import tune_for_long_lived_heap
        tune_for_long_lived_heap()
        class Node:
            pass
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        kept = [[None] for _ in range(3 * 10_000)]  # enough for more than one young collection
        print(gone() is None)
        """
    )
    assert out == "True"


def test_the_entry_points_apply_it() -> None:
    """The operator's and the standalone runtime's `main` tune the collector before the loop starts."""
    out = _run(
        """
        import asyncio, gc
        import agent_operator.__main__ as operator_main
        import agent_runtime.cli as runtime_cli
        seen = []
        def fake_run(coro):
            coro.close()
            seen.append(gc.get_threshold()[0])
            gc.set_threshold(700, 10, 10)
            return 0
        asyncio.run = fake_run
        operator_main.main(["--namespace=x"])
        environ = {"AGENTK_TOKEN": "t" * 30, "POD_NAMESPACE": "ns", "POD_NAME": "agentk"}
        runtime_cli.main(["--kas-address=grpc://127.0.0.1:1"], environ)
        print(seen)
        """
    )
    assert out == f"[{LONG_LIVED_HEAP.young}, {LONG_LIVED_HEAP.young}]"
