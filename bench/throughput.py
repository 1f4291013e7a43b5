"""Throughput: a large LIST and a long watch event stream, through kas's proxy + tunnel vs directly.

    .venv/bin/python bench/throughput.py [--quick] [--objects N] [--rounds R] [--profile DIR]

Creates N ConfigMaps of ~2.5 KB (default 20000, ~55 MB of JSON; --quick: 2000) with bounded
concurrency, then, alternating direct and tunnel for R rounds:
  - LIST: GET /api/v1/namespaces/<ns>/configmaps (one response with every object), uncompressed
    (Accept-Encoding: identity), and once more with gzip (the apiserver compresses, as kubectl asks);
  - watch: GET ...?watch=1&sendInitialEvents=true (the streaming list: one ADDED event per object,
    then a BOOKMARK marked `k8s.io/initial-events-end`), read until that bookmark.
Prints MB/s (bytes on the wire) per path and tunnel/direct. All on loopback; bounded by N, R and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from _procs import process_cpu
from _profile import PySpy, summarise
from _stack import Endpoint, Stack, add_kas_argument, machine_description, tunnel_stack, work_directory
from _stats import ratio, table

NAMESPACE = "bench-throughput"
CREATE_CONCURRENCY = 24
VALUE_BYTES = 2300
END_MARKER = b'"k8s.io/initial-events-end":"true"'
CHUNK = 256 * 1024


async def _create_objects(session: aiohttp.ClientSession, direct: Endpoint, count: int) -> float:
    """POST `count` ConfigMaps, CREATE_CONCURRENCY at a time; returns the seconds it took."""
    url = f"{direct.base_url}/api/v1/namespaces/{NAMESPACE}/configmaps"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def creator() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            # Random text: compresses like real data would (a repeated letter would gzip to nothing).
            value = base64.b64encode(os.urandom(VALUE_BYTES * 3 // 4)).decode()
            metadata = {"name": f"cm-{i:06d}", "labels": {"bench": "throughput"}}
            body = {"metadata": metadata, "data": {"v": value}}
            async with session.post(url, json=body, ssl=direct.ssl, headers=direct.headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"creating ConfigMap {i}: {r.status} {await r.text()}")

    began = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for n in range(CREATE_CONCURRENCY):
            group.create_task(creator(), name=f"create-configmaps-{n}")
    return time.monotonic() - began


async def _list(session: aiohttp.ClientSession, endpoint: Endpoint) -> int:
    return await _list_encoded(session, endpoint, "identity")


async def _list_gzip(session: aiohttp.ClientSession, endpoint: Endpoint) -> int:
    return await _list_encoded(session, endpoint, "gzip")


async def _list_encoded(session: aiohttp.ClientSession, endpoint: Endpoint, encoding: str) -> int:
    """Bytes on the wire (not decompressed) of one LIST."""
    url = f"{endpoint.base_url}/api/v1/namespaces/{NAMESPACE}/configmaps"
    total = 0
    headers = {**endpoint.headers, "Accept-Encoding": encoding}
    async with session.get(url, ssl=endpoint.ssl, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{endpoint.name}: LIST answered {r.status}")
        async for chunk in r.content.iter_chunked(CHUNK):
            total += len(chunk)
    return total


async def _watch(session: aiohttp.ClientSession, endpoint: Endpoint) -> int:
    url = (
        f"{endpoint.base_url}/api/v1/namespaces/{NAMESPACE}/configmaps?watch=1&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    )
    total = 0
    tail = b""
    headers = {**endpoint.headers, "Accept-Encoding": "identity"}
    async with session.get(url, ssl=endpoint.ssl, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{endpoint.name}: watch answered {r.status}: {await r.text()}")
        async for chunk in r.content.iter_chunked(CHUNK):
            total += len(chunk)
            window = tail + chunk[: len(END_MARKER)] if tail else b""
            if END_MARKER in chunk or END_MARKER in window:
                return total
            tail = chunk[-len(END_MARKER) :]
    raise RuntimeError(f"{endpoint.name}: the watch ended before the initial-events-end bookmark")


CPU_USED: dict[str, tuple[float, float]] = {}
"""Per measurement function: (kas, runtime) CPU seconds used during its tunnel runs."""

Measure = Callable[[aiohttp.ClientSession, Endpoint], Awaitable[int]]


async def _rounds(stack: Stack, measure: Measure, rounds: int) -> dict[str, tuple[int, float]]:
    """Total bytes and seconds per path over `rounds` alternating runs (a fresh connection each time).

    Also adds the CPU seconds the kas and runtime processes used during the tunnel runs to CPU_USED.
    """
    totals = {"direct": (0, 0.0), "tunnel": (0, 0.0)}
    for n in range(rounds):
        order = [stack.direct, stack.tunnel] if n % 2 == 0 else [stack.tunnel, stack.direct]
        for endpoint in order:
            cpu_before = (process_cpu(stack.kas.pid), process_cpu(stack.runtime.pid))
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                began = time.perf_counter()
                size = await measure(session, endpoint)
                elapsed = time.perf_counter() - began
            if endpoint is stack.tunnel:
                CPU_USED[measure.__name__] = (
                    CPU_USED.get(measure.__name__, (0.0, 0.0))[0]
                    + process_cpu(stack.kas.pid)
                    - cpu_before[0],
                    CPU_USED.get(measure.__name__, (0.0, 0.0))[1]
                    + process_cpu(stack.runtime.pid)
                    - cpu_before[1],
                )
            size_total, time_total = totals[endpoint.name]
            totals[endpoint.name] = (size_total + size, time_total + elapsed)
    return totals


def _rows(
    name: str, measure: Measure, totals: dict[str, tuple[int, float]], rounds: int
) -> list[tuple[object, ...]]:
    rates = {path: size / seconds / 1e6 for path, (size, seconds) in totals.items()}
    kas_cpu, runtime_cpu = CPU_USED.get(measure.__name__, (0.0, 0.0))
    mb = totals["direct"][0] / rounds / 1e6
    return [
        (
            name,
            f"{mb:.1f}",
            rates["direct"],
            rates["tunnel"],
            ratio(rates["tunnel"], rates["direct"]),
            totals["direct"][1] / rounds,
            totals["tunnel"][1] / rounds,
            kas_cpu / rounds,
            runtime_cpu / rounds,
        )
    ]


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    spies: list[PySpy] = []
    async with (
        asyncio.timeout(args.time_limit),
        work_directory("bench-throughput-") as work_dir,
        tunnel_stack(work_dir, kas_kind=args.kas) as stack,
    ):
        await asyncio.to_thread(stack.cluster.create_namespace, NAMESPACE)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CREATE_CONCURRENCY)) as session:
            created = await _create_objects(session, stack.direct, args.objects)
        print(f"created {args.objects} ConfigMaps in {created:.1f}s")
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for name, pid in stack.python_processes().items():
                spy = PySpy(pid, args.profile / f"throughput-{name}.txt", seconds=args.profile_seconds)
                await spy.start()
                spies.append(spy)
        rows = []
        for name, measure in (
            ("LIST", _list),
            ("LIST, gzip", _list_gzip),
            ("watch (initial events)", _watch),
        ):
            rows += _rows(name, measure, await _rounds(stack, measure, args.rounds), args.rounds)
        for spy in spies:
            await spy.wait()
    print(f"{args.objects} ConfigMaps, {args.rounds} rounds per path, alternating")
    header = ["stream", "MB per run", "direct MB/s", "tunnel MB/s", "tunnel/direct", "direct s", "tunnel s"]
    header += ["kas CPU s", "runtime CPU s"]
    print(table(header, rows))
    for spy in spies:
        print(summarise(spy.out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2000 objects, 2 rounds")
    parser.add_argument("--objects", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the kas and runtime processes")
    add_kas_argument(parser)
    parser.add_argument("--profile-seconds", type=int, default=30)
    args = parser.parse_args()
    args.objects = args.objects or (2000 if args.quick else 20000)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.time_limit = 300.0 if args.quick else 1500.0
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
