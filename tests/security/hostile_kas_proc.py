"""The kas double as its own process, pushing request bodies the API server never reads (test_budget_tunnel).

In its own process so that the test measures the worker's memory alone. Prints `PORT <n>`, then, once
every request was pushed until kas was pushed back (or the limit), `PUSHED <frames per request...>`;
exits when its stdin closes.

    python -m tests.security.hostile_kas_proc --namespace NS --requests 24 --frame-bytes 256000
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from tests.integration.runtime.fake_kas import FakeKas
from tests.security.budget_support import (
    data_frame,
    drain_responses,
    open_request,
    push_until_blocked,
    request_header_frame,
)


async def _attack(args: argparse.Namespace) -> None:
    kas = FakeKas()
    await kas.start()
    print(f"PORT {kas.port}", flush=True)
    path = f"/api/v1/namespaces/{args.namespace}/configmaps"
    header = request_header_frame("GET", path, content_length=1 << 30, query={"watch": "true"})
    frame = data_frame(args.frame_bytes)
    tunnels = [await open_request(kas, header, within=60) for _ in range(args.requests)]
    readers = [asyncio.create_task(drain_responses(t), name="hostile-kas-reader") for t in tunnels]
    pushed = await asyncio.gather(
        *(push_until_blocked(t, frame, limit=args.limit, stall=args.stall) for t in tunnels)
    )
    stalled = sum(1 for _, write in pushed if write is not None)
    print("PUSHED", stalled, *(n for n, _ in pushed), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the test is done measuring
    for task in readers:
        task.cancel()
    await kas.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--frame-bytes", type=int, default=250 * 1024)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--stall", type=float, default=1.5)
    asyncio.run(_attack(parser.parse_args()))


if __name__ == "__main__":
    main()
