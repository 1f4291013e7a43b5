"""Processes the benchmarks start and stop: the reference kas, and a Runtime ("the operator's engine").

Each lives in its own process so its CPU and memory are measured (or excluded) on their own, and so the
benchmark client does not share an event loop or a GIL with what it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _bootstrap  # first: puts the repository root on sys.path (tests.support)
import aiohttp
import yaml

from kas.k8s_proxy.certs import self_signed_serving_certificate
from kas.testing import TestAgent, write_agent_config, write_agents_file
from tests.support import process
from tests.support.ports import free_port

BENCH_DIR = Path(__file__).resolve().parent
RUNTIME_CHILD = BENCH_DIR / "_runtime_child.py"

CI_JOB_TOKEN = "bench-ci-job-token-" + "j" * 30
"""The CI job token the benchmark client presents to kas's Kubernetes API proxy."""
CI_PROJECT = "bench/app"
"""The CI job's project; every agent's config.yaml grants it ci_access (as the agent)."""
CI_ACCESS_CONFIG = f"ci_access:\n  projects:\n    - id: {CI_PROJECT}\n"


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss(pid: int) -> int:
    """VmRSS of process `pid`, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def bench_agents(count: int, first_id: int = 1000) -> list[TestAgent]:
    """`count` agents with distinct ids and (fake) tokens."""
    return [
        TestAgent(
            id=first_id + i,
            name=f"agent-{i}",
            project_path="bench/agents",
            token=f"bench-agent-token-{i:05d}-" + "t" * 32,
        )
        for i in range(count)
    ]


def _ci_job() -> dict[str, Any]:
    return {
        "token": CI_JOB_TOKEN,
        "job_id": 1,
        "pipeline_id": 1,
        "project": {"id": 11, "path": CI_PROJECT},
        "groups": [{"id": 3, "path": "bench"}],
        "user": {"id": 9, "username": "bench"},
    }


class KasEndpoints:
    """Where agents and CI clients reach a kas process on loopback (the reference kas or a stand-in)."""

    agent_port: int
    proxy_port: int
    _proc: subprocess.Popen[bytes] | None

    @property
    def agent_url(self) -> str:
        return f"grpc://127.0.0.1:{self.agent_port}"

    @property
    def proxy_url(self) -> str:
        return f"https://127.0.0.1:{self.proxy_port}"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid


@dataclass
class KasProcess(KasEndpoints):
    """`python -m kas --config <work_dir>/kas.yaml` on fixed loopback ports (kept across restarts)."""

    work_dir: Path
    agents: Sequence[TestAgent]
    proxy: bool = False
    config_poll_period: float = 5.0
    websocket: bool = True
    """False: the agent port speaks plain gRPC only, served by kas's gRPC server without the splice that
    lets one port also take WebSocket (a gRPC-only deployment); ws_url is then unusable."""
    agent_port: int = 0
    observability_port: int = 0
    proxy_port: int = 0
    proxy_ca: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.agent_port, self.observability_port = free_port(), free_port()
        repos = self.work_dir / "repos"
        repos.mkdir(exist_ok=True)
        write_agents_file(self.work_dir / "agents.yaml", self.agents, {"ci_jobs": [_ci_job()]})
        agent_section: dict[str, Any] = {
            "listen": {"address": f"127.0.0.1:{self.agent_port}", "websocket": self.websocket},
            # Benchmarks send many requests; kas must not tell the agents' keepalives to go away.
            "keepalive_min_ping_interval": 5,
        }
        if self.proxy:
            self.proxy_port = free_port()
            ca, cert, key = self_signed_serving_certificate().write(self.work_dir / "proxy-tls")
            self.proxy_ca = ca
            agent_section["kubernetes_api"] = {
                "listen": {
                    "address": f"127.0.0.1:{self.proxy_port}",
                    "certificate_file": str(cert),
                    "key_file": str(key),
                }
            }
            for agent in self.agents:
                write_agent_config(repos, agent, CI_ACCESS_CONFIG)
        config = {
            "agent": agent_section,
            "agents": {"file": str(self.work_dir / "agents.yaml"), "reload_period": 1.0},
            "agent_configuration": {"directory": str(repos), "poll_period": self.config_poll_period},
            "observability": {"listen": {"address": f"127.0.0.1:{self.observability_port}"}},
            "log_level": "WARNING",
        }
        (self.work_dir / "kas.yaml").write_text(yaml.safe_dump(config))

    @property
    def ws_url(self) -> str:
        """The same listener reached as gRPC-in-WebSocket (kas sniffs each connection)."""
        return f"ws://127.0.0.1:{self.agent_port}/"

    async def start(self, time_limit: float = 30.0) -> float:
        """Start and wait for /readiness; returns the seconds it took."""
        began = time.monotonic()
        self._proc = process.start(
            [sys.executable, "-m", "kas", "--config", str(self.work_dir / "kas.yaml")],
            self.work_dir / "kas.log",
            cwd=_bootstrap.REPO_ROOT,
        )
        url = f"http://127.0.0.1:{self.observability_port}/readiness"
        async with asyncio.timeout(time_limit), aiohttp.ClientSession() as session:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"kas exited: {process.log_tail(self.work_dir / 'kas.log')}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return time.monotonic() - began
                await asyncio.sleep(0.05)

    def kill(self) -> float:
        """SIGKILL (a crash: no GOAWAY, no graceful stream ends); returns the monotonic time of the kill."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        self._proc.wait(timeout=10)
        return killed

    def stop(self) -> None:
        process.stop(self._proc, grace=10.0)
        self._proc = None


class RuntimeChild:
    """bench/_runtime_child.py: a Runtime in its own process, driven by JSON lines on stdin/stdout."""

    def __init__(self, kubeconfig: Path, log_path: Path, child: Path | None = None) -> None:
        """`child`: another checkout's bench/_runtime_child.py (its runtime code), e.g. a git worktree."""
        self._kubeconfig = kubeconfig
        self._log_path = log_path
        self._child = child or RUNTIME_CHILD
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self) -> dict[str, Any]:
        with self._log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(self._child),
                "--kubeconfig",
                str(self._kubeconfig),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=_bootstrap.REPO_ROOT,
                limit=64 * 1024 * 1024,
            )
        return await self._read(60.0)

    async def command(self, time_limit: float = 120.0, **message: Any) -> dict[str, Any]:
        """Send one command, wait for its one reply line."""
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(message).encode() + b"\n")
        await self._proc.stdin.drain()
        return await self._read(time_limit)

    async def _read(self, time_limit: float) -> dict[str, Any]:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async with asyncio.timeout(time_limit):
            line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"runtime child exited: {process.log_tail(self._log_path)}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def stop(self) -> None:
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.write(b'{"cmd": "stop"}\n')
                await proc.stdin.drain()
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
