"""Density: N agents in ONE process running the Runtime (the operator's engine), against a kas process.

    .venv/bin/python bench/density.py [--quick] [--agents 100,500,1000] [--mode runtime|operator|both]
        [--scheme grpc|ws|both] [--profile DIR] [--malloc-info DIR | --tracemalloc DIR]

For each N (default 100, 500, 1000; --quick: 100), in a fresh Runtime process: the RSS with the runtime
started and 0 agents (the empty baseline), then N workers applied at once, the time from apply to every
worker Connected, the RSS per agent beyond the baseline (5 s after all Connected, and again at 25 s, when
idle keep-alive connections to the apiserver have closed), and the CPU (percent of one core) over 10 s
from 5 s after all Connected (still settling: tunnels become established, first status writes) and over
10 s from 25 s (idle). The reference kas runs in its own process (its CPU and memory are
not counted); the real kube-apiserver serves the agents' Register calls. Bounded: every wait has a limit.
Also says whether `python -m agent_operator` is runnable (the operator-level variant needs it).
`--scheme ws` makes the agents dial kas as ws:// (through the per-agent WebSocket bridge) instead of
grpc://; `--scheme both` measures each N with both schemes, one after the other, each in a fresh process,
to give the bridge's cost per agent. `--malloc-info DIR` / `--tracemalloc DIR` (operator mode) run the
operator under bench/_traced_operator.py and print where its memory per agent went (see that file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _api_counts as api_counts
import _bootstrap
import aiohttp
from _fleet import OperatorProcess, PhaseWatch, create_all, fleet_objects, install_crd
from _procs import KasProcess, RuntimeChild, bench_agents, process_cpu, process_rss
from _profile import PySpy, summarise
from _stack import direct_endpoint, local_cluster, machine_description, work_directory
from _stats import table
from _traced_operator import summarise as summarise_tracemalloc
from _traced_operator import summarise_malloc, summarise_objects, summarise_pymalloc

from kas.testing import TestAgent
from tests.support.k8s_cluster import LocalCluster

CONNECT_LIMIT_S = 180.0
TRACEMALLOC_FRAMES = 8
"""Frames per allocation with --tracemalloc: enough to see which caller of a library allocated."""
SETTLE_S = 5.0
IDLE_S = 10.0
LATE_S = 25.0
"""Second RSS sample, this long after all Connected: past aiohttp's 15 s keep-alive, so the apiserver
connections every worker's first GET /version opened (each with a 256 KiB asyncio SSL buffer) are gone."""


def operator_available() -> str:
    """Whether `python -m agent_operator --help` works in this checkout (the operator may be unfinished)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "agent_operator", "--help"],
            capture_output=True,
            timeout=60,
            cwd=_bootstrap.REPO_ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "no (--help did not return within 60 s)"
    if done.returncode == 0:
        return "yes"
    last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    return f"no (exit {done.returncode}: {last})"


async def _one_size(
    cluster: LocalCluster,
    kas_url: str,
    agents: list[TestAgent],
    work_dir: Path,
    profile: Path | None,
    label: str = "",
) -> dict[str, Any]:
    runtime = RuntimeChild(cluster.admin_kubeconfig, work_dir / f"runtime-{len(agents)}{label}.log")
    try:
        empty = await runtime.start()
        await asyncio.sleep(1.0)
        empty = await runtime.command(cmd="stats")
        spy = None
        if profile is not None:
            await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
            spy = PySpy(runtime.pid, profile / f"density-{len(agents)}{label}-connect.txt", seconds=60)
            await spy.start()
        applied = await runtime.command(cmd="apply", kas=kas_url, agents=[[a.id, a.token] for a in agents])
        waited = await runtime.command(cmd="wait", timeout=CONNECT_LIMIT_S, time_limit=CONNECT_LIMIT_S + 30)
        if spy is not None:
            await spy.wait()
        await asyncio.sleep(SETTLE_S)
        loaded = await runtime.command(cmd="stats")
        settling = await runtime.command(cmd="idle", seconds=IDLE_S, time_limit=IDLE_S + 30)
        await asyncio.sleep(LATE_S - SETTLE_S - IDLE_S)
        late = await runtime.command(cmd="stats")
        idle = await runtime.command(cmd="idle", seconds=IDLE_S, time_limit=IDLE_S + 30)
        connected_times = sorted(waited["back"])
        half = connected_times[len(connected_times) // 2] if connected_times else float("nan")
        return {
            "n": len(agents),
            "ok": waited["ok"],
            "phases": waited["phases"],
            "all_connected_s": (max(connected_times) - applied["t"]) if waited["ok"] else float("nan"),
            "half_connected_s": half - applied["t"],
            "rss_empty": empty["rss"],
            "rss_loaded": loaded["rss"],
            "per_agent_kib": (loaded["rss"] - empty["rss"]) / len(agents) / 1024,
            "settling_cpu_pct": 100 * settling["cpu"] / settling["elapsed"],
            "idle_cpu_pct": 100 * idle["cpu"] / idle["elapsed"],
            "threads": loaded["threads"],
            "fds": loaded["fds"],
            "rss_late": late["rss"],
            "per_agent_kib_late": (late["rss"] - empty["rss"]) / len(agents) / 1024,
            "fds_late": late["fds"],
            "profile": summarise(spy.out) if spy is not None else "",
        }
    finally:
        await runtime.stop()


async def _cpu_share(pid: int, seconds: float) -> float:
    """CPU of process `pid` over the next `seconds`, as a fraction of one core."""
    cpu_before, began = process_cpu(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return (process_cpu(pid) - cpu_before) / (time.monotonic() - began)


def _counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of process `pid`."""
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


async def _one_size_operator(
    cluster: LocalCluster,
    kas_url: str,
    agents: list[TestAgent],
    work_dir: Path,
    label: str = "",
    traced: Path | None = None,
    frames: int = 0,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The same measurement through the operator: GitLabAgent resources, status watched on the apiserver.

    Also counts the API requests per agent from the creation of the objects until 5 s after all Connected
    (the apiserver's own counter, without the benchmark's creates and watch), and with `profile` samples
    the operator with py-spy during the bring-up."""
    namespace = f"bench-density-{len(agents)}{label}"
    await asyncio.to_thread(cluster.create_namespace, namespace)
    sa_path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    await asyncio.to_thread(cluster.request, "POST", sa_path, {"metadata": {"name": "default"}})
    direct = direct_endpoint(cluster)
    operator_dir = work_dir / f"operator-{len(agents)}{label}"
    traced_dir = traced / f"operator-{len(agents)}{label}" if traced is not None else None
    operator = OperatorProcess(operator_dir, cluster.admin_kubeconfig, namespace, traced_dir, frames)
    operator_dir.mkdir()
    secrets, glas = fleet_objects(namespace, agents, kas_url)
    names = [body["metadata"]["name"] for _, body in glas]
    watch = PhaseWatch(direct, namespace)
    try:
        await operator.start()
        await asyncio.sleep(3.0)
        rss_empty = process_rss(operator.pid)
        operator.dump_memory()  # snapshot 0: empty
        requests_before = await api_counts.scrape(cluster)
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
            watcher = group.create_task(watch.run(), name="gitlabagent-watch")
            await create_all(session, direct, secrets)
            await asyncio.wait_for(watch.ready.wait(), 10)
            spy = await _start_spy(profile, operator.pid, f"density-operator-{len(agents)}{label}")
            cpu_before = process_cpu(operator.pid)
            started = await create_all(session, direct, glas)
            ok = await watch.wait_all(names, "Connected", CONNECT_LIMIT_S)
            bring_up_cpu = process_cpu(operator.pid) - cpu_before
            watcher.cancel()
        if spy is not None:
            await spy.wait()
        first_post = min(started.values())
        connected = sorted(
            watch.first_seen[n]["Connected"] for n in names if "Connected" in watch.first_seen.get(n, {})
        )
        await asyncio.sleep(SETTLE_S)
        requests_after = await api_counts.scrape(cluster)
        requests = api_counts.per_resource(
            requests_before, requests_after, len(agents), _own_requests(len(agents), watch)
        )
        latency = api_counts.mean_latency(requests_before, requests_after)
        rss_loaded = process_rss(operator.pid)
        threads, fds = _counts(operator.pid)
        operator.dump_memory()  # snapshot 1: loaded
        settling_cpu = await _cpu_share(operator.pid, IDLE_S)
        await asyncio.sleep(LATE_S - SETTLE_S - IDLE_S)
        rss_late = process_rss(operator.pid)
        fds_late = _counts(operator.pid)[1]
        operator.dump_memory()  # snapshot 2: late
        memory = await _memory_profile(traced_dir, len(agents))
        idle_cpu = await _cpu_share(operator.pid, IDLE_S)
    finally:
        operator.stop()
    phases: dict[str, int] = {}
    for name in names:
        phase = watch.phases.get(name, "none")
        phases[phase] = phases.get(phase, 0) + 1
    nan = float("nan")
    return {
        "n": len(agents),
        "ok": ok,
        "phases": phases,
        "all_connected_s": connected[-1] - first_post if ok else nan,
        "half_connected_s": connected[len(connected) // 2] - first_post if connected else nan,
        "rss_empty": rss_empty,
        "rss_loaded": rss_loaded,
        "per_agent_kib": (rss_loaded - rss_empty) / len(agents) / 1024,
        "settling_cpu_pct": 100 * settling_cpu,
        "idle_cpu_pct": 100 * idle_cpu,
        "threads": threads,
        "fds": fds,
        "rss_late": rss_late,
        "per_agent_kib_late": (rss_late - rss_empty) / len(agents) / 1024,
        "fds_late": fds_late,
        "watch_restarts": watch.restarts,
        "profile": memory + (summarise(spy.out) if spy is not None else ""),
        "requests": requests,
        "bring_up_cpu_s": bring_up_cpu,
        "latency": latency,
        "created_s": max(started.values()) - first_post,
        "stages": _stages(watch, started, names),
    }


def _stages(watch: PhaseWatch, started: dict[str, float], names: list[str]) -> str:
    """Per resource, from its POST: its ADDED event, kopf's finalizer, its first status, its Connected
    (p50 / max, s)."""

    def spread(samples: list[float]) -> str:
        ordered = sorted(samples)
        return f"{ordered[len(ordered) // 2]:.1f} / {ordered[-1]:.1f}" if ordered else "none"

    added = [watch.added[n] - started[n] for n in names if n in watch.added]
    finalized = [watch.finalized[n] - started[n] for n in names if n in watch.finalized]
    first = [min(watch.first_seen[n].values()) - started[n] for n in names if watch.first_seen.get(n)]
    connected = [
        watch.first_seen[n]["Connected"] - started[n]
        for n in names
        if "Connected" in watch.first_seen.get(n, {})
    ]
    return (
        f"ADDED {spread(added)}, finalizer {spread(finalized)}, first status {spread(first)}, "
        f"Connected {spread(connected)}"
    )


async def _start_spy(profile: Path | None, pid: int, name: str) -> PySpy | None:
    """py-spy on the operator for the bring-up (`--profile DIR`), or None."""
    if profile is None:
        return None
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    spy = PySpy(pid, profile / f"{name}-connect.txt", seconds=30)
    await spy.start()
    return spy


def _own_requests(agents: int, watch: PhaseWatch) -> dict[api_counts.Key, float]:
    """The benchmark's own requests: one POST per Secret and per GitLabAgent, its LISTs and watches."""
    return {
        ("POST", "secrets", ""): agents,
        ("POST", "gitlabagents", ""): agents,
        ("LIST", "gitlabagents", ""): watch.relists,
        ("WATCH", "gitlabagents", ""): watch.restarts + 1,
    }


async def _memory_profile(traced_dir: Path | None, agents: int) -> str:
    """Heap growth from empty to loaded (`--malloc-info`), and the Python objects' (`--tracemalloc`)."""
    if traced_dir is None:
        return ""
    for _ in range(600):  # the operator's signal handler writes the last dump: wait, bounded
        if (traced_dir / "malloc-2.xml").exists():
            break
        await asyncio.sleep(0.1)
    parts = [
        await asyncio.to_thread(summarise_malloc, traced_dir, 0, 1, agents),
        await asyncio.to_thread(summarise_pymalloc, traced_dir, 0, 1, agents),
        await asyncio.to_thread(summarise_objects, traced_dir, 0, 1, agents),
    ]
    if (traced_dir / "snapshot-1.pickle").exists():
        parts.append(await asyncio.to_thread(summarise_tracemalloc, traced_dir, 0, 1, agents))
    return "\n".join(parts)


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    print(f"operator process runnable (python -m agent_operator --help): {operator_available()}")
    sizes = [int(n) for n in args.agents.split(",")]
    schemes = ["grpc", "ws"] if args.scheme == "both" else [args.scheme]
    results = []
    async with (
        asyncio.timeout(60 + 2 * len(sizes) * len(schemes) * (CONNECT_LIMIT_S + 120)),
        work_directory("bench-density-") as work_dir,
        local_cluster() as cluster,
    ):
        all_agents = bench_agents(max(sizes))
        kas = KasProcess(work_dir / "kas", all_agents)
        await kas.start()
        if args.mode in ("operator", "both"):
            await install_crd(cluster.admin_kubeconfig)
        try:
            for n in sizes:
                for scheme in schemes:
                    url = kas.agent_url if scheme == "grpc" else kas.ws_url
                    label = "" if len(schemes) == 1 and scheme == "grpc" else f"-{scheme}"
                    if args.mode in ("runtime", "both"):
                        result = await _one_size(cluster, url, all_agents[:n], work_dir, args.profile, label)
                        results.append({"engine": f"runtime {scheme}://", **result})
                        print(f"runtime {scheme}:// N={n}: {result['phases']}", flush=True)
                        await asyncio.sleep(3.0)  # let kas notice the previous agents went away
                    if args.mode in ("operator", "both"):
                        result = await _one_size_operator(
                            cluster, url, all_agents[:n], work_dir, label, *_traced(args), args.profile
                        )
                        results.append({"engine": f"operator {scheme}://", **result})
                        restarts = result["watch_restarts"]
                        note = f"(status watch resumed {restarts}x)"
                        print(f"operator {scheme}:// N={n}: {result['phases']} {note}", flush=True)
                        await asyncio.sleep(3.0)
        finally:
            kas.stop()
    rows = [
        (
            r["engine"],
            r["n"],
            "yes" if r["ok"] else f"no {r['phases']}",
            r["half_connected_s"],
            r["all_connected_s"],
            r["rss_empty"] / 2**20,
            r["rss_loaded"] / 2**20,
            r["per_agent_kib"],
            r["settling_cpu_pct"],
            r["idle_cpu_pct"],
            r["threads"],
            r["fds"],
            r["rss_late"] / 2**20,
            r["per_agent_kib_late"],
            r["fds_late"],
        )
        for r in results
    ]
    header = [
        "process",
        "agents",
        "all Connected",
        "50% Connected s",
        "100% Connected s",
        "empty RSS MiB",
        "RSS MiB",
        "KiB/agent",
        f"CPU % of a core {SETTLE_S:.0f}-{SETTLE_S + IDLE_S:.0f} s",
        f"idle CPU % of a core {LATE_S:.0f}-{LATE_S + IDLE_S:.0f} s",
        "threads",
        "fds",
        f"RSS MiB at {LATE_S:.0f} s",
        f"KiB/agent at {LATE_S:.0f} s",
        f"fds at {LATE_S:.0f} s",
    ]
    print(table(header, rows))
    for r in results:
        if r.get("requests"):
            counts = ", ".join(f"{what} {per:.2f}" for what, per in r["requests"])
            when = f"until {SETTLE_S:.0f} s after all Connected"
            print(f"API requests per agent, {r['engine']} N={r['n']} ({when}): {counts}")
            cpu = r["bring_up_cpu_s"]
            per = 1000 * cpu / r["n"]
            print(f"operator CPU from the first POST to all Connected: {cpu:.1f} s, {per:.1f} ms/agent")
            print(f"the last GitLabAgent POST started {r['created_s']:.1f} s after the first")
            print(f"per resource from its POST, p50 / max s: {r['stages']}")
            times = ", ".join(f"{what} {1000 * mean:.0f}" for what, mean in r["latency"])
            print(f"mean apiserver time per request, ms: {times}")
        if r["profile"]:
            print(r["profile"])


def _traced(args: argparse.Namespace) -> tuple[Path | None, int]:
    """(dump directory, tracemalloc frames) for the operator, from --tracemalloc / --malloc-info."""
    if args.tracemalloc is not None:
        return args.tracemalloc, TRACEMALLOC_FRAMES
    return args.malloc_info, 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="only N=100")
    parser.add_argument("--agents", default=None, help="comma-separated sizes (default 100,500,1000)")
    parser.add_argument(
        "--mode",
        choices=("runtime", "operator", "both"),
        default="both",
        help="a Runtime process driven directly, the operator process with GitLabAgent resources, or both",
    )
    parser.add_argument(
        "--scheme",
        choices=("grpc", "ws", "both"),
        default="grpc",
        help="how the agents dial kas: grpc:// directly, ws:// through the WebSocket bridge, or both in turn",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the runtime (or the operator) while agents connect"
    )
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument(
        "--tracemalloc",
        type=Path,
        default=None,
        metavar="DIR",
        help="operator mode: as --malloc-info, plus tracemalloc snapshots and the Python heap growth per "
        "agent by file and line (slower, more memory: its figures are not comparable)",
    )
    memory.add_argument(
        "--malloc-info",
        type=Path,
        default=None,
        metavar="DIR",
        help="operator mode: print what glibc's heaps, pymalloc and the gc-tracked objects grew by per agent "
        "(figures stay comparable, except CPU 5-15 s); the dumps go to DIR",
    )
    args = parser.parse_args()
    args.agents = args.agents or ("100" if args.quick else "100,500,1000")
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
