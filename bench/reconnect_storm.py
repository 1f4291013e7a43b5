"""Reconnect storm: N agents connected, kas killed (SIGKILL) and restarted; how the agents come back.

    .venv/bin/python bench/reconnect_storm.py [--quick] [--agents N] [--down SECONDS]

N workers (default 1000; --quick: 100) run in one Runtime process and reach kas through a loopback relay
that timestamps every TCP connection they open (bench/_dial_counter.py). Once all are Connected, kas is
killed, left down for --down seconds (default 3), and started again on the same port. Prints: the time
from the restart to every worker Connected again, the dials per 100 ms bucket (peak, and the spread as a
histogram; without jitter all N would land in one or two buckets), and the phases 5 s later (nothing may
be left Connecting/Degraded/Failed). Bounded: every wait has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from _dial_counter import DialCounter
from _procs import KasProcess, RuntimeChild, bench_agents
from _stack import local_cluster, machine_description, work_directory
from _stats import bucket_counts, percentile, table

BUCKET_S = 0.1
RECONNECT_LIMIT_S = 180.0
WAIT_LIMIT_S = RECONNECT_LIMIT_S + 30


def histogram(counts: list[int], width: int = 60) -> str:
    """Dials per bucket as rows of '#' (buckets merged so at most 40 rows are printed)."""
    if not counts:
        return "  (no dials)"
    merge = max(1, -(-len(counts) // 40))
    merged = [sum(counts[i : i + merge]) for i in range(0, len(counts), merge)]
    peak = max(merged) or 1
    lines = []
    for index, value in enumerate(merged):
        start = index * merge * BUCKET_S
        lines.append(f"  {start:6.1f}s {value:5d} {'#' * round(width * value / peak)}")
    return "\n".join(lines)


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    async with (
        asyncio.timeout(120 + 2 * RECONNECT_LIMIT_S + args.down),
        work_directory("bench-storm-") as work_dir,
        local_cluster() as cluster,
    ):
        agents = bench_agents(args.agents)
        kas = KasProcess(work_dir / "kas", agents)
        await kas.start()
        relay = DialCounter(kas.agent_port)
        await relay.start()
        runtime = RuntimeChild(cluster.admin_kubeconfig, work_dir / "runtime.log")
        try:
            await runtime.start()
            relay_url = f"grpc://127.0.0.1:{relay.port}"
            applied = await runtime.command(
                cmd="apply", kas=relay_url, agents=[[a.id, a.token] for a in agents]
            )
            first = await runtime.command(
                cmd="wait", timeout=RECONNECT_LIMIT_S, time_limit=RECONNECT_LIMIT_S + 30
            )
            if not first["ok"]:
                raise RuntimeError(f"agents did not connect at first: {first['phases']}")
            initial_connect = max(first["back"]) - applied["t"]
            await asyncio.sleep(3.0)
            await runtime.command(cmd="mark")
            dials_before = len(relay.dials)
            killed = kas.kill()
            await asyncio.sleep(args.down)
            restarted_at = time.monotonic()
            kas_start_s = await kas.start()
            ready_at = time.monotonic()
            after = await runtime.command(
                cmd="wait", timeout=RECONNECT_LIMIT_S, time_limit=RECONNECT_LIMIT_S + 30
            )
            await asyncio.sleep(5.0)
            final = await runtime.command(cmd="stats")
        finally:
            await runtime.stop()
            await relay.close()
            kas.stop()
    storm_dials = relay.dials[dials_before:]
    down_dials = [t for t in storm_dials if t < ready_at]
    up_dials = [t for t in storm_dials if t >= ready_at]
    counts = bucket_counts(up_dials, ready_at, BUCKET_S)
    left = after["left"]
    back = after["back"]
    half = percentile([t - ready_at for t in back], 50) if back else float("nan")
    rows = [
        ("agents", args.agents),
        ("first connect of all agents, s", initial_connect),
        ("kas down (kill to restart), s", restarted_at - killed),
        ("kas restart to ready, s", kas_start_s),
        ("workers that noticed the kill", len(left)),
        ("all Connected again", "yes" if after["ok"] else f"no: {after['phases']}"),
        ("kas ready -> all Connected, s", (max(back) - ready_at) if after["ok"] and back else float("nan")),
        (
            "kas ready -> 50% Connected, s",
            half,
        ),
        ("dials while kas was down", len(down_dials)),
        ("dials after kas was ready", len(up_dials)),
        ("peak dials per 100 ms (after ready)", max(counts) if counts else 0),
        ("peak / agents", (max(counts) / args.agents) if counts else float("nan")),
        ("100 ms buckets with dials (after ready)", sum(1 for c in counts if c)),
        ("phases 5 s later", final["phases"]),
    ]
    print(table(["measure", "value"], rows))
    print("dials per 100 ms after kas was ready (time from ready):")
    print(histogram(counts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 agents")
    parser.add_argument("--agents", type=int, default=None)
    parser.add_argument("--down", type=float, default=3.0, help="seconds kas stays down")
    args = parser.parse_args()
    args.agents = args.agents or (100 if args.quick else 1000)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
