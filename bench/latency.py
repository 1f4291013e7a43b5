"""Latency: GET of a small ConfigMap through kas's proxy -> reverse tunnel -> kube-apiserver vs directly.

    .venv/bin/python bench/latency.py [--quick] [--requests N] [--profile DIR]

One aiohttp client (one session, keep-alive connections to both endpoints) sends the requests
sequentially, alternating direct and tunnel in random order per pair, so load and noise hit both alike.
Prints p50/p90/p99 of each path, their ratio and the milliseconds the tunnel adds. kas and the Runtime
run in processes of their own; everything is on loopback. Bounded: N pairs and a 300 s time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import aiohttp
from _procs import process_cpu
from _profile import PySpy, summarise
from _stack import Endpoint, Stack, add_kas_argument, machine_description, tunnel_stack, work_directory
from _stats import percentile, ratio, table

TIME_LIMIT_S = 300.0
CONFIGMAP_PATH = "/api/v1/namespaces/default/configmaps/bench-latency"


async def _get(session: aiohttp.ClientSession, endpoint: Endpoint) -> float:
    began = time.perf_counter()
    url = endpoint.base_url + CONFIGMAP_PATH
    async with session.get(url, ssl=endpoint.ssl, headers=endpoint.headers) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{endpoint.name}: GET answered {r.status}")
    return time.perf_counter() - began


async def _measure(stack: Stack, pairs: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"direct": [], "tunnel": []}
    endpoints = [stack.direct, stack.tunnel]
    rng = random.Random(6)
    async with aiohttp.ClientSession() as session:
        for _ in range(warmup):
            for endpoint in endpoints:
                await _get(session, endpoint)
        for _ in range(pairs):
            rng.shuffle(endpoints)
            for endpoint in endpoints:
                samples[endpoint.name].append(await _get(session, endpoint))
    return samples


def _report(samples: dict[str, list[float]]) -> str:
    rows = []
    for q in (50, 90, 99):
        direct, tunnel = percentile(samples["direct"], q), percentile(samples["tunnel"], q)
        rows.append((f"p{q}", direct * 1e3, tunnel * 1e3, ratio(tunnel, direct), (tunnel - direct) * 1e3))
    return table(["percentile", "direct ms", "tunnel ms", "tunnel/direct", "added ms"], rows)


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    spies: list[PySpy] = []
    async with (
        asyncio.timeout(TIME_LIMIT_S),
        work_directory("bench-latency-") as work_dir,
        tunnel_stack(work_dir, kas_kind=args.kas) as stack,
    ):
        body = {"metadata": {"name": "bench-latency"}, "data": {"key": "value" * 20}}
        status, _ = await asyncio.to_thread(
            stack.cluster.request, "POST", "/api/v1/namespaces/default/configmaps", body
        )
        if status != 201:
            raise RuntimeError(f"creating the ConfigMap answered {status}")
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, pid in stack.python_processes().items():
                spy = PySpy(pid, args.profile / f"latency-{name}.txt", seconds=20)
                await spy.start()
                spies.append(spy)
        warmup = min(200, args.requests // 5)
        pids = (stack.kas.pid, stack.runtime.pid)
        before = [process_cpu(pid) for pid in pids]
        samples = await _measure(stack, args.requests, warmup=warmup)
        kas_cpu, runtime_cpu = (process_cpu(pid) - b for pid, b in zip(pids, before, strict=True))
        tunnelled = args.requests + warmup
        for spy in spies:
            await spy.wait()
    print(f"{args.requests} interleaved pairs of GET {CONFIGMAP_PATH}")
    print(_report(samples))
    print(
        f"CPU per tunnelled request: kas {kas_cpu / tunnelled * 1e3:.2f} ms, "
        f"runtime {runtime_cpu / tunnelled * 1e3:.2f} ms (kas and the runtime are idle between them)"
    )
    for spy in spies:
        print(summarise(spy.out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 pairs instead of 5000")
    parser.add_argument("--requests", type=int, default=None, help="number of direct/tunnel pairs")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the kas and runtime processes")
    add_kas_argument(parser)
    args = parser.parse_args()
    args.requests = args.requests or (500 if args.quick else 5000)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
