"""Child processes for test servers: started with their output in a log file, always stopped."""

from __future__ import annotations

import abc
import contextlib
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

_SETPRIV = shutil.which("setpriv")
"""util-linux's setpriv: sets the parent-death signal, then execs the server (no Python in the child)."""


def _with_parent_death(argv: Sequence[str]) -> list[str]:
    """`argv`, run so that the kernel sends SIGKILL to it when the thread that started it exits.

    This covers what no `finally` can: pytest killed by SIGKILL or by pytest-timeout's thread method
    (os._exit). The signal is tied to the *thread* that forked, so start servers from the main thread
    (session fixtures run there). Done by setpriv rather than a preexec_fn: a preexec_fn makes Python
    fork() and run code in the child of a threaded process that has gRPC loaded, and gRPC's fork
    handlers crashed such children before exec now and then (GitLab's kas exiting with SIGABRT and an
    "epoll_wait error" in its log, source-controller with SIGSEGV).
    """
    if _SETPRIV is None or sys.platform != "linux":
        return list(argv)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


def start(
    argv: Sequence[str], log_path: Path, cwd: Path | None = None, *, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout and stderr appended to `log_path` (`env`: None = this process's)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            _with_parent_death(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
        )


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> int | None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code (None if never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=grace)
    return proc.returncode


def log_tail(log_path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, for error messages ("" when there is none)."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class StartStop(abc.ABC):
    """A test server used as `with Server(...) as server:`: started on entry, always stopped on exit."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start and wait until it serves."""

    @abc.abstractmethod
    def stop(self) -> object:
        """Stop it (idempotent)."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
