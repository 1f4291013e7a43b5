"""The fence's last line: a thread that ends the process when its workers may outlive its member Lease.

Members fences on the event loop (members.py): after FENCE_FRACTION of the Lease without a renewal that
went through, it stops every worker here, before the others may take the agents over (they wait the
whole duration from when they saw that renewal). A loop starved for seconds (two replicas taking over a
third one's thousand agents on two cores) notices late and stops its workers slowly, and the others
start the same agents meanwhile: one agent connected twice, which kas sees and nobody else does.

This thread needs nothing of the loop. When the workers have not all stopped by EXIT_FRACTION of the
Lease after the last renewal that went through, it exits the process: the kernel closes every connection
to kas at once, and the pod restarts. A crash in the open instead of a double run nobody sees.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Final

from agent_runtime.sharding.members import Clock

log = logging.getLogger(__name__)

EXIT_FRACTION: Final = 0.9
"""Part of the Lease after the last renewal that went through by which every worker here has stopped,
or the process exits. Between FENCE_FRACTION (members.py) and the whole Lease, when the others start."""
EXIT_CODE: Final = 75
"""The process's exit status then (sysexits' EX_TEMPFAIL: restarting is the cure)."""
POLL_S: Final = 0.05
"""How often the thread looks while disarmed (a fence is on: rare), and how late after a deadline it
acts. Armed, it sleeps until the deadline: renewals only ever move it later, so an idle replica's
thread wakes about once per renewal, not twenty times a second."""


class FenceWatchdog:
    """Exits the process when a deadline passes while workers may run here.

    `renewed(sent)` arms it (or moves the deadline on): workers may run until `sent` plus EXIT_FRACTION
    of the Lease. `stood_down()` disarms it: every worker here has stopped, nothing is left to guard.
    """

    def __init__(
        self,
        duration: float,
        *,
        clock: Clock = time.monotonic,
        exit_process: Callable[[int], object] = os._exit,
        poll: float = POLL_S,
    ) -> None:
        self._allowed = duration * EXIT_FRACTION
        self._clock = clock
        self._exit = exit_process
        self._poll = poll
        self._lock = threading.Lock()
        self._renewed_at: float | None = None
        """When the last renewal that went through was sent; None while disarmed."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="shard-fence-watchdog", daemon=True)

    def start(self) -> None:
        """Start the thread (disarmed until the first `renewed`)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (its wait ends at once)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def renewed(self, sent: float) -> None:
        """A renewal sent at `sent` (this clock) went through: workers may run until the new deadline."""
        with self._lock:
            self._renewed_at = sent if self._renewed_at is None else max(self._renewed_at, sent)

    def stood_down(self) -> None:
        """Every worker here has stopped: nothing to guard until `renewed` again."""
        with self._lock:
            self._renewed_at = None

    def _watch(self) -> None:
        while not self._stopping.wait(self._next_look()):
            with self._lock:
                renewed_at = self._renewed_at
            if renewed_at is not None and self._clock() - renewed_at > self._allowed:
                log.critical(
                    "the workers did not stop before the member Lease could expire: exiting, so that no "
                    "agent runs on two replicas (the event loop is starved; see docs/operations.md)"
                )
                self._exit(EXIT_CODE)
                return

    def _next_look(self) -> float:
        with self._lock:
            renewed_at = self._renewed_at
        if renewed_at is None:
            return self._poll
        return max(0.0, renewed_at + self._allowed - self._clock()) + self._poll
