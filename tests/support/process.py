"""Child processes for test servers: started with their output in a log file, always stopped."""

from __future__ import annotations

import abc
import contextlib
import ctypes
import ctypes.util
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> ctypes._NamedFuncPointer | None:
    libc_name = ctypes.util.find_library("c")  # runs ldconfig: never in a forked child
    return None if libc_name is None else ctypes.CDLL(libc_name, use_errno=True).prctl


_PRCTL = _load_prctl() if sys.platform == "linux" else None
"""libc's prctl, resolved once in this process: the forked child only calls it."""


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGKILL to the child when the process that started it exits.

    This covers what no `finally` can: pytest killed by SIGKILL or by pytest-timeout's thread method
    (os._exit). The signal is tied to the *thread* that forked, so start servers from the main
    thread (session fixtures run there). The child of a threaded parent may only do async-signal-safe
    work before exec: looking libc up here (find_library spawns ldconfig) made children crash with
    SIGSEGV before exec, now and then, on a loaded machine.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def start(
    argv: Sequence[str], log_path: Path, cwd: Path | None = None, *, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout and stderr appended to `log_path` (`env`: None = this process's)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else dict(env),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
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
