"""Sharding: N agents over R operator replicas (--sharding) against one kas, with one replica as baseline.

    .venv/bin/python bench/sharding.py [--agents 300] [--replicas 3] [--lease-duration 8] [--no-baseline]

In one run, on one apiserver and one kas process:
1. baseline: one operator without sharding brings N GitLabAgents up (time from the first POST to all
   Connected; RSS per agent), then stops;
2. R operators with --sharding bring N other GitLabAgents up: the time to all Connected, and per replica
   the agents it owns (its metrics), its RSS beyond its empty baseline, per owned agent and per agent of
   the fleet (every replica also keeps the records of agents it does not run), and its CPU over 10 s
   from 5 s after all Connected (the deferred watch labels and Events go out) and over 10 s from 25 s (idle);
3. SIGKILL of the replica that owns most: the time until kas sees every one of its agents connected from
   another replica (a live GetConfiguration stream, kas/agent_streams.py), and until their statuses say
   Connected on another replica; and whether any agent ever had two streams at once (a double run).

The operators run with admin credentials (RBAC is not what is measured), each with its own POD_NAME.
Bounded: every wait has a limit. Figures on a shared machine are noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import _bootstrap
import aiohttp
from _fleet import GLA_PATH, PhaseWatch, create_all, fleet_objects, install_crd
from _procs import KasProcess, bench_agents, process_cpu, process_rss
from _stack import direct_endpoint, local_cluster, machine_description, work_directory

from kas.testing import TestAgent
from tests.support import process
from tests.support.k8s_cluster import LocalCluster
from tests.support.ports import free_port

CONNECT_LIMIT_S = 300.0
TAKEOVER_LIMIT_S = 120.0
SETTLE_S = 5.0
IDLE_S = 10.0
LATE_S = 25.0
"""The idle CPU is measured from this long after all Connected: by then the watch labels and Events that
wait for the statuses (at most 10 s: deferred_labels.LABEL_YIELD_S, status_writer.EVENTS_YIELD_TO_WRITES_S)
have gone out; the CPU from SETTLE_S includes them (as bench/density.py measures both)."""
LEASE_NAMESPACE = "bench-sharding-leases"


class _Printed(list[str]):
    """Lines printed as they are added: a run that fails later still shows what it measured."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


class Replica:
    """`python -m agent_operator` as one replica (its own POD_NAME), with admin credentials."""

    def __init__(self, work_dir: Path, kubeconfig: Path, namespace: str, name: str, extra: list[str]) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = work_dir / f"{name}.log"
        self._argv = [
            sys.executable,
            "-m",
            "agent_operator",
            f"--kubeconfig={kubeconfig}",
            f"--namespace={namespace}",
            f"--observability-address=127.0.0.1:{self.port}",
            "--drain-grace=1",
            "--log-level=INFO",
            "--max-agents-per-namespace=0",
            "--max-inflight-requests-per-namespace=100000",
            "--allow-private-kas",
            "--allow-plaintext-kas",
            *extra,
        ]
        self._proc: Any = None

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    async def start(self, time_limit: float = 60.0) -> None:
        env = {**os.environ, "POD_NAME": self.name}
        self._proc = process.start(self._argv, self.log_path, cwd=_bootstrap.REPO_ROOT, env=env)
        async with asyncio.timeout(time_limit), aiohttp.ClientSession() as session:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {process.log_tail(self.log_path)}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.port}/liveness") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)

    async def metric(self, session: aiohttp.ClientSession, name: str) -> float:
        async with session.get(f"http://127.0.0.1:{self.port}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return float("nan")

    def kill(self) -> float:
        self._proc.kill()
        killed = time.monotonic()
        self._proc.wait(timeout=10)
        self._proc = None
        return killed

    def stop(self) -> None:
        process.stop(self._proc, grace=30.0)
        self._proc = None


async def _streams(session: aiohttp.ClientSession, kas: KasProcess) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{kas.observability_port}/api/agent_streams") as response:
        return dict(await response.json())


async def _cpu_percent(replicas: list[Replica]) -> dict[str, float]:
    """Each replica's CPU over the next IDLE_S, in percent of one core."""
    before = {r.name: process_cpu(r.pid) for r in replicas}
    began = time.monotonic()
    await asyncio.sleep(IDLE_S)
    elapsed = time.monotonic() - began
    return {r.name: 100 * (process_cpu(r.pid) - before[r.name]) / elapsed for r in replicas}


def _double_runs(log: dict[str, Any], since: float) -> str:
    """Agents with two GetConfiguration streams live at the same time (started after `since`): from two
    replicas (a double run), and from one replica (a stream kas saw end only after the same worker had
    opened the next one: kas's view lagging under load, not two workers)."""
    by_agent: dict[int, list[dict[str, Any]]] = {}
    for stream in log["live"] + log["ended"]:
        if stream["started"] >= since:
            by_agent.setdefault(stream["agent_id"], []).append(stream)
    across: set[int] = set()
    within: set[int] = set()
    for agent, streams in by_agent.items():
        streams.sort(key=lambda s: s["started"])
        for before, after in itertools.pairwise(streams):
            if before["ended"] is None or after["started"] < before["ended"]:
                (within if before["pod_name"] == after["pod_name"] else across).add(agent)
    return f"{len(across)} on two replicas, {len(within - across)} on one replica"


async def _bring_up(
    cluster: LocalCluster, kas: KasProcess, agents: list[TestAgent], namespace: str
) -> tuple[PhaseWatch, float, bool]:
    """Create the Secrets, then the GitLabAgents; (watch, seconds from first POST to all Connected, ok)."""
    await asyncio.to_thread(cluster.create_namespace, namespace)
    sa_path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    await asyncio.to_thread(cluster.request, "POST", sa_path, {"metadata": {"name": "default"}})
    direct = direct_endpoint(cluster)
    secrets, glas = fleet_objects(namespace, agents, kas.agent_url)
    names = [body["metadata"]["name"] for _, body in glas]
    watch = PhaseWatch(direct, namespace)
    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        watcher = group.create_task(watch.run(), name="gitlabagent-watch")
        await create_all(session, direct, secrets)
        await asyncio.wait_for(watch.ready.wait(), 10)
        started = await create_all(session, direct, glas)
        ok = await watch.wait_all(names, "Connected", CONNECT_LIMIT_S)
        watcher.cancel()
    connected = [
        watch.first_seen[n]["Connected"] for n in names if "Connected" in watch.first_seen.get(n, {})
    ]
    return watch, (max(connected) - min(started.values())) if ok else float("nan"), ok


async def _baseline(cluster: LocalCluster, kas: KasProcess, agents: list[TestAgent], work_dir: Path) -> str:
    namespace = "bench-sharding-baseline"
    replica = Replica(work_dir, cluster.admin_kubeconfig, namespace, "baseline", [])
    try:
        await replica.start()
        await asyncio.sleep(3.0)
        empty = process_rss(replica.pid)
        _, took, ok = await _bring_up(cluster, kas, agents, namespace)
        await asyncio.sleep(SETTLE_S)
        per_agent = (process_rss(replica.pid) - empty) / len(agents) / 1024
    finally:
        replica.stop()
    return (
        f"1 replica, no sharding: all Connected after {took:.1f} s (ok={ok}), {per_agent:.0f} KiB per agent"
    )


async def _sharded(
    cluster: LocalCluster, kas: KasProcess, agents: list[TestAgent], work_dir: Path, args: argparse.Namespace
) -> list[str]:
    namespace = "bench-sharding"
    extra = [
        "--sharding",
        f"--shard-namespace={LEASE_NAMESPACE}",
        f"--shard-lease-duration={args.lease_duration}",
    ]
    replicas = [
        Replica(work_dir, cluster.admin_kubeconfig, namespace, f"replica-{i}", extra)
        for i in range(args.replicas)
    ]
    lines = _Printed()
    since = time.time()
    try:
        await asyncio.gather(*(r.start() for r in replicas))
        await asyncio.sleep(3.0)
        empty = {r.name: process_rss(r.pid) for r in replicas}
        _, took, ok = await _bring_up(cluster, kas, agents, namespace)
        lines.append(f"{args.replicas} replicas, sharded: all Connected after {took:.1f} s (ok={ok})")
        await asyncio.sleep(SETTLE_S)
        async with aiohttp.ClientSession() as session:
            owned = {r.name: await r.metric(session, "agentk_operator_shard_agents_owned") for r in replicas}
            grown = {r.name: process_rss(r.pid) - empty[r.name] for r in replicas}
            settling = await _cpu_percent(replicas)
            await asyncio.sleep(LATE_S - SETTLE_S - IDLE_S)
            idle = await _cpu_percent(replicas)
            for r in replicas:
                lines.append(
                    f"  {r.name}: owns {owned[r.name]:.0f}, RSS +{grown[r.name] / 2**20:.1f} MiB = "
                    f"{grown[r.name] / max(owned[r.name], 1) / 1024:.0f} KiB per owned agent, "
                    f"{grown[r.name] / len(agents) / 1024:.0f} KiB per fleet agent; CPU "
                    f"{settling[r.name]:.1f} % {SETTLE_S:.0f}-{SETTLE_S + IDLE_S:.0f} s, idle "
                    f"{idle[r.name]:.1f} % {LATE_S:.0f}-{LATE_S + IDLE_S:.0f} s after all Connected"
                )
            victim = max(replicas, key=lambda r: owned[r.name])
            log = await _streams(session, kas)
            doubled = _double_runs(log, since)
            lines.append(f"agents with two streams at once during the bring-up (kas's view): {doubled}")
            since = time.time()
            moving = {s["agent_id"] for s in log["live"] if s["pod_name"] == victim.name}
            killed = victim.kill()
            replicas.remove(victim)
            kas_s = await _kas_takeover(session, kas, moving, victim.name, killed)
            status_s = await _status_takeover(
                session, cluster, namespace, agents, moving, victim.name, killed
            )
            lines.append(
                f"SIGKILL {victim.name} ({len(moving)} agents, lease {args.lease_duration:g} s): kas sees "
                f"them all connected elsewhere after {kas_s:.1f} s, their statuses say so after "
                f"{status_s:.1f} s"
            )
            await asyncio.sleep(2.0)
            doubled = _double_runs(await _streams(session, kas), since)
            lines.append(f"agents with two streams at once during the takeover (kas's view): {doubled}")
    finally:
        for r in replicas:
            r.stop()
    return lines


async def _kas_takeover(
    session: aiohttp.ClientSession, kas: KasProcess, moving: set[int], victim: str, killed: float
) -> float:
    """Seconds from the kill until kas sees all of `moving` connected elsewhere (nan: not in time)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TAKEOVER_LIMIT_S):
            while True:
                log = await _streams(session, kas)
                elsewhere = {s["agent_id"] for s in log["live"] if s["pod_name"] != victim}
                if moving <= elsewhere:
                    return time.monotonic() - killed
                await asyncio.sleep(0.2)
    return float("nan")


async def _status_takeover(
    session: aiohttp.ClientSession,
    cluster: LocalCluster,
    namespace: str,
    agents: list[TestAgent],
    moving: set[int],
    victim: str,
    killed: float,
) -> float:
    direct = direct_endpoint(cluster)
    names = {f"agent-{a.id}" for a in agents if a.id in moving}
    url = direct.base_url + GLA_PATH.format(ns=namespace)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TAKEOVER_LIMIT_S):
            while True:
                async with session.get(url, ssl=direct.ssl, headers=direct.headers) as response:
                    items = (await response.json())["items"]
                done = {
                    i["metadata"]["name"]
                    for i in items
                    if (i.get("status") or {}).get("phase") == "Connected"
                    and (i.get("status") or {}).get("replica") not in (None, victim)
                }
                if names <= done:
                    return time.monotonic() - killed
                await asyncio.sleep(0.2)
    return float("nan")


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    async with work_directory("bench-sharding-") as work_dir, local_cluster() as cluster:
        await install_crd(cluster.admin_kubeconfig)
        await asyncio.to_thread(cluster.create_namespace, LEASE_NAMESPACE)
        fleet = bench_agents(args.agents)
        baseline = [
            dataclasses.replace(a, name=f"base-{a.name}", token=f"base-{a.token}")
            for a in bench_agents(args.agents, first_id=100_000)
        ]
        kas = KasProcess(work_dir / "kas", [*fleet, *baseline] if args.baseline else fleet)
        await kas.start()
        try:
            if args.baseline:
                print(await _baseline(cluster, kas, baseline, work_dir))
            await _sharded(cluster, kas, fleet, work_dir, args)
        finally:
            kas.stop()
        print(json.dumps({"agents": args.agents, "replicas": args.replicas}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=300)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--lease-duration", type=float, default=8.0)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
