"""The measured stack: kube-apiserver + etcd, kas (with its Kubernetes API proxy), a Runtime process.

    async with tunnel_stack(work_dir) as stack:
        stack.direct   # Endpoint: the apiserver itself, as the admin
        stack.tunnel   # Endpoint: kas's proxy -> reverse tunnel -> the runtime's worker -> the apiserver

Both endpoints authenticate as the same admin identity on the apiserver (the agent's kubeconfig is the
admin's, and ci_access without access_as does not impersonate), so the apiserver does the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import _bootstrap
from _kaspeer import KasPeerProcess
from _procs import CI_JOB_TOKEN, KasProcess, RuntimeChild, bench_agents

from kas.testing import TestAgent
from tests.support.k8s_cluster import ADMIN_TOKEN, LocalCluster, find_assets


@dataclass(frozen=True)
class Endpoint:
    """Where a benchmark client sends its requests, and how it authenticates."""

    name: str
    base_url: str
    ssl: ssl.SSLContext
    headers: dict[str, str]


@dataclass
class Stack:
    cluster: LocalCluster
    kas: KasProcess | KasPeerProcess
    runtime: RuntimeChild
    agents: Sequence[TestAgent]
    direct: Endpoint
    tunnel: Endpoint
    work_dir: Path

    def python_processes(self) -> dict[str, int]:
        """name -> pid of the Python processes py-spy can profile (the Go stand-in is not one)."""
        found = {"runtime": self.runtime.pid}
        if isinstance(self.kas, KasProcess):
            found["kas"] = self.kas.pid
        return found


@asynccontextmanager
async def local_cluster() -> AsyncIterator[LocalCluster]:
    """etcd + kube-apiserver from .cache/k8s-assets (or $KUBEBUILDER_ASSETS); stopped on exit."""
    cluster = LocalCluster(find_assets())
    await asyncio.to_thread(cluster.start)
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


@asynccontextmanager
async def work_directory(prefix: str) -> AsyncIterator[Path]:
    """A temporary directory for logs and configuration, removed afterwards unless $BENCH_KEEP_WORK_DIR
    is set (then its path is printed, to read the kas, runtime and operator logs)."""
    if os.environ.get("BENCH_KEEP_WORK_DIR"):
        kept = Path(tempfile.mkdtemp(prefix=prefix))
        print(f"work directory kept: {kept}", file=sys.stderr)
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        yield Path(name)


def _client_ssl(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def direct_endpoint(cluster: LocalCluster) -> Endpoint:
    """The apiserver itself, as the admin."""
    return Endpoint(
        "direct", cluster.url, _client_ssl(cluster.ca_file), {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )


@asynccontextmanager
async def tunnel_stack(
    work_dir: Path, agent_count: int = 1, kas_kind: str = "python"
) -> AsyncIterator[Stack]:
    """Cluster, kas process with the proxy, Runtime process with `agent_count` connected workers.

    `kas_kind` "go" puts bench/kaspeer (a Go stand-in for kas, see _kaspeer.py) in kas's place.
    """
    async with local_cluster() as cluster:
        agents = bench_agents(agent_count)
        kas: KasProcess | KasPeerProcess
        if kas_kind == "go":
            kas = KasPeerProcess(work_dir / "kaspeer")
        else:
            kas = KasProcess(work_dir / "kas", agents, proxy=True, websocket=False)
        await kas.start()
        runtime = RuntimeChild(cluster.admin_kubeconfig, work_dir / "runtime.log")
        try:
            await runtime.start()
            await runtime.command(cmd="apply", kas=kas.agent_url, agents=[[a.id, a.token] for a in agents])
            waited = await runtime.command(cmd="wait", timeout=60)
            if not waited["ok"]:
                raise RuntimeError(f"agents did not connect: {waited['phases']}")
            assert kas.proxy_ca is not None
            yield Stack(
                cluster=cluster,
                kas=kas,
                runtime=runtime,
                agents=agents,
                direct=direct_endpoint(cluster),
                tunnel=Endpoint(
                    "tunnel",
                    kas.proxy_url,
                    _client_ssl(kas.proxy_ca),
                    {"Authorization": f"Bearer ci:{agents[0].id}:{CI_JOB_TOKEN}"},
                ),
                work_dir=work_dir,
            )
        finally:
            await runtime.stop()
            kas.stop()


KAS_KINDS = ("python", "go")


def add_kas_argument(parser: argparse.ArgumentParser) -> None:
    """`--kas python|go` for the scripts built on `tunnel_stack`."""
    parser.add_argument(
        "--kas",
        choices=KAS_KINDS,
        default="python",
        help="the peer: the reference kas, or bench/kaspeer, a Go stand-in that shows the runtime's share",
    )


def machine_description() -> str:
    """nproc, memory, CPU model and Python version, for the results' header."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem_kib / 1024 / 1024:.1f} GiB RAM, "
        f"Python {platform.python_version()}, load average at start {load:.2f}"
    )


__all__ = [
    "Endpoint",
    "Stack",
    "_bootstrap",
    "direct_endpoint",
    "local_cluster",
    "machine_description",
    "tunnel_stack",
]
