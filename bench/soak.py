"""Soak: N agents run by the operator process under steady traffic for a long time; is anything growing?

    .venv/bin/python bench/soak.py [--agents 100] [--duration 1800] [--rate 20] [--interval 10]

The operator (`python -m agent_operator`, through bench/_soak_operator.py, which only adds a task count on
SIGUSR2) runs N GitLabAgents (default 100) in one namespace of a real kube-apiserver, against the reference
kas as a process, with its Kubernetes API proxy. Once every agent is Connected, a client sends `--rate`
requests a second (default 20) through kas's proxy, round robin over the agents (a CI job's GET of one
ConfigMap list page, as the agent), for `--duration` seconds (default 30 min). Every `--interval` seconds
(default 10) it samples the operator's RSS, CPU (percent of one core over the interval), open file
descriptors, threads and asyncio tasks, and kas's RSS. At the end it prints the samples (one a minute),
the least-squares slope per hour of each series (over the samples after `--warmup` seconds, default 120:
the start-up's allocations settle first), and the traffic's count, failures and latency percentiles.
Not in CI (30 minutes); bounded: every wait has a limit, the traffic stops at the duration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _bootstrap
import aiohttp
import yaml
from _fleet import PhaseWatch, create_all, fleet_objects, install_crd
from _procs import CI_JOB_TOKEN, KasProcess, bench_agents, process_cpu, process_rss
from _stack import direct_endpoint, local_cluster, machine_description, work_directory
from _stats import percentile, table

from kas.testing import TestAgent
from tests.support import process
from tests.support.ports import free_port

NAMESPACE = "bench-soak"
CONNECT_LIMIT_S = 300.0
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Sample:
    t: float
    """Seconds since the traffic started."""
    rss_mib: float
    cpu_pct: float
    """Percent of one core over the interval that ended at `t`."""
    fds: int
    threads: int
    tasks: int
    kas_rss_mib: float
    requests: int
    failures: int
    p99_ms: float
    """p99 latency of the requests that ended in the interval."""


@dataclass
class Traffic:
    """Requests sent through kas's proxy: counts, failures (with their first reasons) and latencies."""

    sent: int = 0
    failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def p99_since(self, start: int) -> tuple[float, int]:
        """(p99 latency of the requests that ended from index `start` on, the index to start next time)."""
        end = len(self.latencies)
        return percentile(self.latencies[start:end], 99), end

    examples: dict[str, str] = field(default_factory=dict)
    """The first answer's body (cut) for each reason."""

    def fail(self, reason: str, body: bytes = b"") -> None:
        self.failures += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.examples.setdefault(reason, body[:300].decode(errors="replace"))


class SoakOperator:
    """The operator through bench/_soak_operator.py, with admin credentials, watching one namespace."""

    def __init__(self, work_dir: Path, kubeconfig: Path) -> None:
        self.work_dir = work_dir
        self.kubeconfig = kubeconfig
        self.port = free_port()
        self.tasks_file = work_dir / "tasks.txt"
        self.log_path = work_dir / "operator.log"
        self._proc: Any = None

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    async def start(self, time_limit: float = 60.0) -> None:
        wrapper = Path(__file__).with_name("_soak_operator.py")
        self._proc = process.start(
            [
                sys.executable,
                str(wrapper),
                str(self.tasks_file),
                f"--kubeconfig={self.kubeconfig}",
                f"--namespace={NAMESPACE}",
                f"--observability-address=127.0.0.1:{self.port}",
                "--drain-grace=1",
                "--log-level=WARNING",
                "--max-agents-per-namespace=0",  # the whole fleet is in one namespace
                "--max-inflight-requests-per-namespace=100000",
                "--allow-private-kas",  # the bench kas listens on loopback, in plain text
                "--allow-plaintext-kas",
            ],
            self.log_path,
            cwd=_bootstrap.REPO_ROOT,
            env={**os.environ, "POD_NAME": "bench-soak-operator"},
        )
        async with asyncio.timeout(time_limit), aiohttp.ClientSession() as session:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"operator exited: {process.log_tail(self.log_path)}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.port}/liveness") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)

    async def tasks(self) -> int:
        """The operator's asyncio task count: SIGUSR2, then read what the wrapper wrote (-1: no answer)."""
        with contextlib.suppress(FileNotFoundError):
            self.tasks_file.unlink()
        self._proc.send_signal(signal.SIGUSR2)
        for _ in range(50):  # bounded: 5 s
            await asyncio.sleep(0.1)
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(self.tasks_file.read_text())
        return -1

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        process.stop(self._proc, grace=30.0)
        self._proc = None


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in value units per hour; NaN under two points."""
    if len(points) < 2:
        return math.nan
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return math.nan
    return 3600 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


async def _traffic(
    kas: KasProcess, agents: Sequence[TestAgent], rate: float, until: float, traffic: Traffic
) -> None:
    """`rate` requests a second through kas's proxy, round robin over the agents, until `until`."""
    assert kas.proxy_ca is not None
    context = ssl.create_default_context(cafile=str(kas.proxy_ca))
    path = f"/api/v1/namespaces/{NAMESPACE}/configmaps?limit=1"
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)

    async def one(agent: TestAgent, session: aiohttp.ClientSession) -> None:
        began = time.monotonic()
        headers = {"Authorization": f"Bearer ci:{agent.id}:{CI_JOB_TOKEN}"}
        try:
            async with session.get(kas.proxy_url + path, ssl=context, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    traffic.fail(f"HTTP {response.status}", body)
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            traffic.fail(type(exc).__name__)
            return
        traffic.latencies.append(time.monotonic() - began)

    async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as group:
        began = time.monotonic()
        while (now := time.monotonic()) < until:
            agent = agents[traffic.sent % len(agents)]
            traffic.sent += 1
            group.create_task(one(agent, session), name=f"soak-request-{traffic.sent}")
            await asyncio.sleep(max(0.0, began + traffic.sent / rate - now))


async def _sample(
    operator: SoakOperator,
    kas: KasProcess,
    started: float,
    last: tuple[float, float, int],
    traffic: Traffic,
) -> tuple[Sample, tuple[float, float, int]]:
    """One sample; `last` (and the returned state): (monotonic time, CPU seconds, latencies seen)."""
    now, cpu = time.monotonic(), process_cpu(operator.pid)
    p99, seen = traffic.p99_since(last[2])
    pid = operator.pid
    sample = Sample(
        t=now - started,
        rss_mib=process_rss(pid) / 2**20,
        cpu_pct=100 * (cpu - last[1]) / (now - last[0]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=len(os.listdir(f"/proc/{pid}/task")),
        tasks=await operator.tasks(),
        kas_rss_mib=process_rss(kas.pid) / 2**20,
        requests=traffic.sent,
        failures=traffic.failures,
        p99_ms=1000 * p99,
    )
    return sample, (now, cpu, seen)


async def _sampler(
    operator: SoakOperator,
    kas: KasProcess,
    started: float,
    until: float,
    interval: float,
    traffic: Traffic,
    samples: list[Sample],
) -> None:
    last = (time.monotonic(), process_cpu(operator.pid), 0)
    while time.monotonic() + interval <= until + 1:
        await asyncio.sleep(interval)
        if not operator.alive():
            raise RuntimeError(f"the operator died: {process.log_tail(operator.log_path)}")
        sample, last = await _sample(operator, kas, started, last, traffic)
        samples.append(sample)
        print(
            f"  {sample.t:7.0f} s  RSS {sample.rss_mib:7.1f} MiB  CPU {sample.cpu_pct:5.1f} %  "
            f"fds {sample.fds}  threads {sample.threads}  tasks {sample.tasks}  "
            f"requests {sample.requests} (failed {sample.failures}, p99 {sample.p99_ms:.0f} ms)",
            file=sys.stderr,
            flush=True,
        )


def _set_max_connection_age(kas: KasProcess, seconds: float) -> None:
    """kas's `agent.listen.max_connection_age`: at 20 % of it kas sends each agent connection GOAWAY (the
    agent dials anew), at 30 % it ends the old connection's idle streams, at 65 % it closes it. The
    default (2 h) rotates a connection first after 24 min: a 30-minute soak sees one rotation begin
    (each agent briefly holds two connections) and not end; a short age makes rotations part of the run."""
    path = kas.work_dir / "kas.yaml"
    config = yaml.safe_load(path.read_text())
    config["agent"]["listen"]["max_connection_age"] = seconds
    path.write_text(yaml.safe_dump(config))


def _namespace_with_reader(cluster: Any) -> None:
    """The namespace, its `default` ServiceAccount (the agents act as it) and a RoleBinding to the
    Role that may list ConfigMaps, so the traffic's LIST is answered 200, not 403 (the bootstrap `view`
    role is aggregated by the controller-manager, which this cluster does not run: it is empty)."""
    cluster.create_namespace(NAMESPACE)
    base = f"/api/v1/namespaces/{NAMESPACE}"
    cluster.request("POST", f"{base}/serviceaccounts", {"metadata": {"name": "default"}})
    role = {
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }
    binding = {
        "metadata": {"name": "configmap-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": NAMESPACE}],
    }
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}"
    for kind, body in (("roles", role), ("rolebindings", binding)):
        code, answer = cluster.request("POST", f"{rbac}/{kind}", body)
        if code != 201:
            raise RuntimeError(f"creating the {kind}: {code} {answer}")


async def _connect_fleet(cluster: Any, kas: KasProcess, agents: Sequence[TestAgent]) -> float:
    """Create the Secrets and GitLabAgents; seconds until every agent is Connected."""
    direct = direct_endpoint(cluster)
    secrets, glas = fleet_objects(NAMESPACE, agents, kas.agent_url)
    names = [body["metadata"]["name"] for _, body in glas]
    watch = PhaseWatch(direct, NAMESPACE)
    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        watcher = group.create_task(watch.run(), name="gitlabagent-watch")
        await create_all(session, direct, secrets)
        await asyncio.wait_for(watch.ready.wait(), 10)
        began = time.monotonic()
        await create_all(session, direct, glas)
        ok = await watch.wait_all(names, "Connected", CONNECT_LIMIT_S)
        watcher.cancel()
    if not ok:
        phases: dict[str, int] = {}
        for name in names:
            phases[watch.phases.get(name, "none")] = phases.get(watch.phases.get(name, "none"), 0) + 1
        raise RuntimeError(f"not every agent Connected within {CONNECT_LIMIT_S:.0f} s: {phases}")
    return time.monotonic() - began


def _report(samples: Sequence[Sample], traffic: Traffic, warmup: float, connect_s: float) -> None:
    steady = [s for s in samples if s.t >= warmup] or list(samples)
    print(f"all agents Connected {connect_s:.1f} s after the GitLabAgents were created")
    every = max(1, round(60 / (samples[1].t - samples[0].t))) if len(samples) > 1 else 1
    slow = sorted(samples, key=lambda s: s.p99_ms, reverse=True)[:5]
    print("slowest intervals (t s, p99 ms): " + ", ".join(f"{s.t:.0f}: {s.p99_ms:.0f}" for s in slow))
    rows = [
        (
            s.t,
            s.rss_mib,
            s.cpu_pct,
            s.fds,
            s.threads,
            s.tasks,
            s.kas_rss_mib,
            s.requests,
            s.failures,
            s.p99_ms,
        )
        for s in samples[::every]
    ]
    header = [
        "t s",
        "RSS MiB",
        "CPU %",
        "fds",
        "threads",
        "tasks",
        "kas RSS MiB",
        "requests",
        "failed",
        "p99 ms (interval)",
    ]
    print(table(header, rows))
    series = {
        "RSS MiB": [(s.t, s.rss_mib) for s in steady],
        "CPU % of a core": [(s.t, s.cpu_pct) for s in steady],
        "fds": [(s.t, float(s.fds)) for s in steady],
        "threads": [(s.t, float(s.threads)) for s in steady],
        "asyncio tasks": [(s.t, float(s.tasks)) for s in steady if s.tasks >= 0],
        "kas RSS MiB": [(s.t, s.kas_rss_mib) for s in steady],
    }
    print(f"least-squares slope per hour over {len(steady)} samples from t = {steady[0].t:.0f} s:")
    slope_rows = [
        (name, points[0][1], points[-1][1], slope_per_hour(points))
        for name, points in series.items()
        if points
    ]
    print(table(["series", "first", "last", "slope per hour"], slope_rows))
    lat = traffic.latencies
    print(
        f"traffic: {traffic.sent} requests, {traffic.failures} failed {traffic.reasons or ''}; latency "
        f"p50 {1000 * percentile(lat, 50):.1f} ms, p99 {1000 * percentile(lat, 99):.1f} ms, "
        f"max {1000 * max(lat, default=math.nan):.1f} ms"
    )
    for reason, example in traffic.examples.items():
        print(f"  first {reason}: {example}")


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    age = args.kas_max_connection_age
    print(f"kas max_connection_age: {age if age is not None else 'default (7200)'} s")
    print(
        f"soak: {args.agents} agents, {args.rate} requests/s, {args.duration:.0f} s, sample every "
        f"{args.interval:.0f} s"
    )
    agents = bench_agents(args.agents)
    async with (
        asyncio.timeout(args.duration + CONNECT_LIMIT_S + 300),
        work_directory("bench-soak-") as work_dir,
        local_cluster() as cluster,
    ):
        kas = KasProcess(work_dir / "kas", agents, proxy=True)
        if args.kas_max_connection_age is not None:
            _set_max_connection_age(kas, args.kas_max_connection_age)
        await kas.start()
        operator = SoakOperator(work_dir, cluster.admin_kubeconfig)
        try:
            await install_crd(cluster.admin_kubeconfig)
            await asyncio.to_thread(_namespace_with_reader, cluster)
            await operator.start()
            connect_s = await _connect_fleet(cluster, kas, agents)
            traffic, samples = Traffic(), list[Sample]()
            started = time.monotonic()
            until = started + args.duration
            async with asyncio.TaskGroup() as group:
                group.create_task(_traffic(kas, agents, args.rate, until, traffic), name="soak-traffic")
                group.create_task(
                    _sampler(operator, kas, started, until, args.interval, traffic, samples),
                    name="soak-sampler",
                )
        finally:
            operator.stop()
            kas.stop()
    _report(samples, traffic, args.warmup, connect_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of traffic (default 30 min)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests a second through kas, in total")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--kas-max-connection-age",
        type=float,
        default=None,
        help="seconds; kas rotates agent connections at 20 %% of it (default: kas's, 7200)",
    )
    parser.add_argument(
        "--warmup", type=float, default=120.0, help="samples before this are not in the slope"
    )
    args = parser.parse_args()
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
