"""Debian's redis-server on a free loopback port: no persistence, gone when stopped."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support import process
from tests.support.ports import free_port
from tests.support.process import StartStop

log = logging.getLogger(__name__)

REDIS_HINT = "redis-server not found on PATH: apt-get install redis-server (or make system-deps)"


class RedisNotFoundError(RuntimeError):
    """No redis-server binary on PATH."""


class RedisStartError(RuntimeError):
    """redis-server did not answer PING; the message carries the tail of its log."""


def find_redis_server() -> Path:
    found = shutil.which("redis-server")
    if found is None:
        raise RedisNotFoundError(REDIS_HINT)
    return Path(found)


class RedisServer(StartStop):
    def __init__(self, binary: Path, *, start_timeout: float = 15.0, stop_grace: float = 5.0) -> None:
        self.binary = binary
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.port = 0
        self.startup_seconds = 0.0
        self.work_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        began = time.monotonic()
        self.work_dir = Path(tempfile.mkdtemp(prefix="redis-substrate-"))
        self.port = free_port()
        log_path = self.work_dir / "redis.log"
        try:
            self._proc = process.start(
                [
                    str(self.binary),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.work_dir),
                    "--daemonize",
                    "no",
                    "--logfile",
                    "",
                ],
                log_path,
            )
            self._wait_for_ping(log_path)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        log.info("redis-server ready at %s in %.2fs", self.url, self.startup_seconds)

    def _wait_for_ping(self, log_path: Path) -> None:
        assert self._proc is not None
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        deadline = time.monotonic() + self.start_timeout
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise RedisStartError(
                        f"redis-server exited with code {self._proc.returncode}; "
                        f"last lines of its log:\n{process.log_tail(log_path)}"
                    )
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        raise RedisStartError(
            f"redis-server did not answer PING within {self.start_timeout:.0f}s; "
            f"last lines of its log:\n{process.log_tail(log_path)}"
        )

    def stop(self) -> None:
        try:
            process.stop(self._proc, self.stop_grace)
        finally:
            self._proc = None
            if self.work_dir is not None:
                shutil.rmtree(self.work_dir, ignore_errors=True)
                self.work_dir = None
