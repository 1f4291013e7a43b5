"""bench/kaspeer: a Go stand-in for kas, to tell the runtime's share of the tunnel's latency (`--kas go`).

GitLab's kas is written in Go; the reference kas of this repository is Python, and on a 2-core machine
its gRPC and HTTP costs are a large part of what the tunnel adds. The stand-in serves only what one agent
needs (GetConfiguration, Register, Connect) and a TLS proxy that hands each HTTP request to an idle
tunnel. It has no authorization, routing or configuration, so it is for measurements only; the published
figures and every test use the reference kas.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import _bootstrap
from _procs import KasEndpoints

from kas.k8s_proxy.certs import self_signed_serving_certificate
from tests.support import process
from tests.support.ports import free_port

SOURCE = _bootstrap.REPO_ROOT / "bench" / "kaspeer"
BINARY = _bootstrap.REPO_ROOT / ".cache" / "bench" / "kaspeer"


def build() -> Path:
    """`go build` the stand-in into .cache/bench (Go's build cache makes a rebuild cheap)."""
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOFLAGS="-mod=readonly")
    subprocess.run(["go", "build", "-o", str(BINARY), "."], cwd=SOURCE, env=env, check=True, timeout=600)
    return BINARY


@dataclass
class KasPeerProcess(KasEndpoints):
    """The stand-in on fixed loopback ports, with a self-signed certificate on its proxy."""

    work_dir: Path
    agent_port: int = 0
    proxy_port: int = 0
    proxy_ca: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.agent_port, self.proxy_port = free_port(), free_port()

    async def start(self, time_limit: float = 30.0) -> None:
        binary = await asyncio.to_thread(build)
        ca, cert, key = self_signed_serving_certificate().write(self.work_dir / "proxy-tls")
        self.proxy_ca = ca
        log = self.work_dir / "kaspeer.log"
        argv = [
            str(binary),
            f"-agent-listen=127.0.0.1:{self.agent_port}",
            f"-proxy-listen=127.0.0.1:{self.proxy_port}",
            f"-cert={cert}",
            f"-key={key}",
        ]
        self._proc = process.start(argv, log)
        deadline = time.monotonic() + time_limit
        while not _accepts(self.proxy_port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kaspeer did not start: {process.log_tail(log)}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        process.stop(self._proc, grace=10.0)
        self._proc = None


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
