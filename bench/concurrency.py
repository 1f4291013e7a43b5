"""Concurrency: 500 simultaneous requests through one agent (agentk's tunnel limit), vs directly.

    .venv/bin/python bench/concurrency.py [--quick] [--requests 500] [--waves W] [--profile DIR]

Each wave starts `--requests` GETs of a small ConfigMap at the same moment (one aiohttp session,
unlimited connections, warmed by a first unmeasured wave) and waits for all. Prints, per path: the
success rate, the latency spread (p50/p99/max), the wave's wall time, and the CPU seconds the kas and
Runtime processes used (read from /proc). Bounded by the wave count and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
from _procs import process_cpu
from _profile import PySpy, summarise
from _stack import Endpoint, add_kas_argument, machine_description, tunnel_stack, work_directory
from _stats import percentile, ratio, table

CONFIGMAP_PATH = "/api/v1/namespaces/default/configmaps/bench-concurrency"


async def _one(session: aiohttp.ClientSession, endpoint: Endpoint, start: asyncio.Event) -> float | None:
    await start.wait()
    began = time.perf_counter()
    try:
        async with session.get(
            endpoint.base_url + CONFIGMAP_PATH, ssl=endpoint.ssl, headers=endpoint.headers
        ) as r:
            await r.read()
            ok = r.status == 200
    except aiohttp.ClientError:
        ok = False
    return time.perf_counter() - began if ok else None


async def _wave(
    session: aiohttp.ClientSession, endpoint: Endpoint, count: int
) -> tuple[list[float], int, float]:
    """(latencies of the successes, failures, wall seconds) of `count` simultaneous requests."""
    start = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_one(session, endpoint, start), name=f"request-{i}") for i in range(count)]
        await asyncio.sleep(0.05)  # every task is parked on the start event
        began = time.perf_counter()
        start.set()
    wall = time.perf_counter() - began
    results = [t.result() for t in tasks]
    successes = [r for r in results if r is not None]
    return successes, len(results) - len(successes), wall


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    rows = []
    spies: list[PySpy] = []
    async with (
        asyncio.timeout(600),
        work_directory("bench-concurrency-") as work_dir,
        tunnel_stack(work_dir, kas_kind=args.kas) as stack,
    ):
        body = {"metadata": {"name": "bench-concurrency"}, "data": {"key": "value" * 20}}
        status, _ = await asyncio.to_thread(
            stack.cluster.request, "POST", "/api/v1/namespaces/default/configmaps", body
        )
        if status != 201:
            raise RuntimeError(f"creating the ConfigMap answered {status}")
        pids = {"kas": stack.kas.pid, "runtime": stack.runtime.pid}
        results = {}
        for endpoint in (stack.direct, stack.tunnel):
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                await _wave(session, endpoint, args.requests)  # warm-up: connections, tunnel pool
                if args.profile and endpoint is stack.tunnel:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    for name, pid in stack.python_processes().items():
                        spy = PySpy(pid, args.profile / f"concurrency-{name}.txt", seconds=15)
                        await spy.start()
                        spies.append(spy)
                cpu_before = {name: process_cpu(pid) for name, pid in pids.items()}
                latencies: list[float] = []
                failures, walls = 0, []
                for _ in range(args.waves):
                    ok, failed, wall = await _wave(session, endpoint, args.requests)
                    latencies += ok
                    failures += failed
                    walls.append(wall)
                cpu = {name: process_cpu(pid) - cpu_before[name] for name, pid in pids.items()}
            results[endpoint.name] = (latencies, failures, walls, cpu)
        for spy in spies:
            await spy.wait()
        after = await stack.runtime.command(cmd="stats")
    total = args.requests * args.waves
    for name, (latencies, _failures, walls, cpu) in results.items():
        rows.append(
            (
                name,
                f"{len(latencies)}/{total}",
                percentile(latencies, 50) * 1e3,
                percentile(latencies, 99) * 1e3,
                max(latencies) * 1e3 if latencies else float("nan"),
                sum(walls) / len(walls) * 1e3,
                cpu["kas"],
                cpu["runtime"],
            )
        )
    print(f"{args.waves} waves of {args.requests} simultaneous GET {CONFIGMAP_PATH} per path")
    header = ["path", "ok", "p50 ms", "p99 ms", "max ms", "wave wall ms", "kas CPU s", "runtime CPU s"]
    print(table(header, rows))
    direct, tunnel = results["direct"], results["tunnel"]
    print(
        f"tunnel/direct: p50 {ratio(percentile(tunnel[0], 50), percentile(direct[0], 50)):.2f}, "
        f"p99 {ratio(percentile(tunnel[0], 99), percentile(direct[0], 99)):.2f}; "
        f"runtime CPU per tunnelled request {tunnel[3]['runtime'] / max(len(tunnel[0]), 1) * 1e3:.2f} ms, "
        f"kas {tunnel[3]['kas'] / max(len(tunnel[0]), 1) * 1e3:.2f} ms"
    )
    rss_mib = after["rss"] / 2**20
    print(f"runtime after the waves: {after['threads']} threads, {after['fds']} fds, RSS {rss_mib:.1f} MiB")
    for spy in spies:
        print(summarise(spy.out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 measured waves instead of 10")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--waves", type=int, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the kas and runtime processes")
    add_kas_argument(parser)
    args = parser.parse_args()
    args.waves = args.waves or (2 if args.quick else 10)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
