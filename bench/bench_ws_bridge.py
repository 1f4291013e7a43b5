"""Latency of unary gRPC calls to kas: grpc:// ("direct") vs ws:// ("bridge"), same run.

Both paths reach the same grpc.aio echo server on loopback, and both go through the agent's WsBridge
(the destination policy is applied there): grpc:// as a raw pipe, ws:// as WebSocket to a kas-like
ws-tunnel endpoint (tests/integration/transport/peers.py, built on the same
agent_proto.wstunnel codec kas uses). Prints p50/p99 per path and the ratios. Bounded: --calls per path
(default 2000), after --warmup calls, and a 120 s overall limit.

    .venv/bin/python -m bench.bench_ws_bridge [--calls N] [--payload BYTES]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.secret import Secret
from agent_runtime.spec import WorkerSpec
from agent_runtime.transport import KasConnection, open_kas_connection
from tests.integration.transport.grpc_peer import ECHO, GrpcPeer
from tests.integration.transport.peers import WsTunnelPeer

_LIMIT_S = 120.0


async def _latencies(conn: KasConnection, calls: int, warmup: int, payload: bytes) -> list[float]:
    call = conn.channel.unary_unary(ECHO)
    metadata = conn.call_metadata()
    for _ in range(warmup):
        await call(payload, metadata=metadata, wait_for_ready=True)
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await call(payload, metadata=metadata)
        samples.append(time.perf_counter() - start)
    return samples


def _percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


async def _run(calls: int, warmup: int, payload_size: int) -> None:
    grpc_peer = await GrpcPeer().start()
    ws_peer = await WsTunnelPeer(target_port=grpc_peer.port).start()
    payload = b"x" * payload_size
    results: dict[str, list[float]] = {}
    try:
        async with asyncio.timeout(_LIMIT_S):
            for name, address in (
                ("direct", f"grpc://127.0.0.1:{grpc_peer.port}"),
                ("bridge", f"ws://127.0.0.1:{ws_peer.port}/"),
            ):
                spec = WorkerSpec(id=f"bench/{name}", kas_address=address, token=Secret("bench-" + "t" * 50))
                conn = await open_kas_connection(
                    spec,
                    user_agent="gitlab-agent/bench/0",
                    policy=PERMISSIVE_POLICY.destinations,
                    environ={},
                )
                try:
                    results[name] = await _latencies(conn, calls, warmup, payload)
                finally:
                    await conn.close(grace=1)
    finally:
        await ws_peer.close()
        await grpc_peer.close()
    print(f"unary echo, {payload_size}-byte payload, {calls} calls per path after {warmup} warm-up calls")
    for name, samples in results.items():
        p50, p99 = _percentile(samples, 50), _percentile(samples, 99)
        print(f"  {name:7s} p50 {p50 * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us")
    direct, bridge = results["direct"], results["bridge"]
    for q in (50, 99):
        ratio = _percentile(bridge, q) / _percentile(direct, q)
        print(f"  bridge/direct p{q}: {ratio:.2f}x ({(ratio - 1) * 100:+.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--payload", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(_run(min(args.calls, 100_000), min(args.warmup, 10_000), min(args.payload, 4 * 1024 * 1024)))


if __name__ == "__main__":
    main()
