"""Apply -> Connected: 50 GitLabAgent resources applied at once, the operator running as a process.

    .venv/bin/python bench/apply_to_connected.py [--quick] [--agents N] [--kas python|gitlab]
        [--scheme grpc|ws] [--profile DIR]

The real kube-apiserver (with the CRD), a kas and `python -m agent_operator` run as processes. The kas is
the reference kas (`--kas python`, the default) or GitLab's own (`--kas gitlab`: built by
scripts/gitlab-peers, with Redis and the GitLab Rails stand-in, bench/_gitlab_side.py), which the agents
dial over `--scheme` (grpc:// or ws://; the reference kas takes grpc:// here).
One GitLabAgent is created in another namespace first (the apiserver's first create of a CRD with CEL
rules is slow, a one-off a long-running cluster has already paid), then the token Secrets; once the
operator reports ready and SETTLE_S more have passed (the agents go to a running operator), all N
GitLabAgents are POSTed at once (24 in flight) while a watch timestamps every event. Prints p50/p99/max of
the time from each resource's POST to `status.phase: Connected`, split into the apiserver's part (POST to
the watch's ADDED event) and the operator's part (ADDED to Connected), the status writes per resource,
the API requests per resource until all are Connected (the API server's own counters), and, as the
baseline measured in the same run, the same agents applied directly to a Runtime process.
Bounded: every wait has a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import _api_counts as api_counts
import aiohttp
from _fleet import (
    OperatorProcess,
    PhaseWatch,
    create_all,
    fleet_objects,
    gitlab_agent,
    install_crd,
)
from _kas_stack import KasStack, add_kas_arguments, kas_stack
from _procs import RuntimeChild
from _profile import PySpy, summarise
from _stack import Endpoint, direct_endpoint, machine_description, work_directory
from _stats import percentile, ratio, table

from tests.support.k8s_cluster import LocalCluster

NAMESPACE = "bench-apply"
WARMUP_NAMESPACE = "bench-apply-warmup"
CONNECT_LIMIT_S = 120.0
SETTLE_S = 2.0
"""After the operator reports ready, before the agents are applied: what is left of its start settles."""


@dataclass
class Timings:
    """Seconds per resource, each from its POST."""

    answered: list[float] = field(default_factory=list)
    added: list[float] = field(default_factory=list)
    first_status: list[float] = field(default_factory=list)
    connected: list[float] = field(default_factory=list)
    operator_part: list[float] = field(default_factory=list)
    """ADDED seen by a watch -> Connected: what the operator (and kas) take."""
    writes: list[int] = field(default_factory=list)
    requests: list[tuple[str, float]] = field(default_factory=list)
    """API requests per resource from the POSTs until all Connected (the bench's own taken off)."""
    seen_phases: dict[str, int] = field(default_factory=dict)
    watch_restarts: int = 0


async def _through_operator(direct: Endpoint, stack: KasStack) -> Timings:
    secrets, glas = fleet_objects(NAMESPACE, stack.agents, stack.agent_url)
    watch = PhaseWatch(direct, NAMESPACE)
    answered: dict[str, float] = {}
    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        watcher = group.create_task(watch.run(), name="gitlabagent-watch")
        await create_all(session, direct, secrets)
        await asyncio.wait_for(watch.ready.wait(), 10)
        requests_before = await api_counts.scrape(stack.cluster)
        started = await create_all(session, direct, glas, answered)
        names = [body["metadata"]["name"] for _, body in glas]
        ok = await watch.wait_all(names, "Connected", CONNECT_LIMIT_S)
        requests_after = await api_counts.scrape(stack.cluster)
        await asyncio.sleep(3.0)  # count the status writes that follow Connected too
        watcher.cancel()
    if not ok:
        phases: dict[str, int] = {}
        for name in names:
            phase = watch.phases.get(name, "none")
            phases[phase] = phases.get(phase, 0) + 1
        raise RuntimeError(f"not all Connected within {CONNECT_LIMIT_S:.0f}s: {phases}")
    own = {
        ("POST", "gitlabagents", ""): float(len(glas)),
        ("LIST", "gitlabagents", ""): float(watch.restarts),
    }
    t = Timings(
        watch_restarts=watch.restarts,
        requests=api_counts.per_resource(requests_before, requests_after, len(glas), own),
    )
    for n in names:
        seen = watch.first_seen[n]
        t.answered.append(answered[n] - started[n])
        t.added.append(watch.added[n] - started[n])
        t.first_status.append(min(seen.values()) - started[n])
        t.connected.append(seen["Connected"] - started[n])
        t.operator_part.append(seen["Connected"] - watch.added[n])
        t.writes.append(watch.modified.get(n, 0))
        for phase in seen:
            t.seen_phases[phase] = t.seen_phases.get(phase, 0) + 1
    return t


async def _through_runtime(stack: KasStack, work_dir: Path) -> list[float]:
    runtime = RuntimeChild(stack.cluster.admin_kubeconfig, work_dir / "runtime.log")
    try:
        await runtime.start()
        tokens = [[a.id, a.token] for a in stack.agents]
        applied = await runtime.command(cmd="apply", kas=stack.agent_url, agents=tokens)
        waited = await runtime.command(cmd="wait", timeout=CONNECT_LIMIT_S, time_limit=CONNECT_LIMIT_S + 30)
        if not waited["ok"]:
            raise RuntimeError(f"runtime baseline: not all Connected: {waited['phases']}")
        return [t - applied["t"] for t in waited["back"]]
    finally:
        await runtime.stop()


async def _prepare(cluster: LocalCluster, direct: Endpoint) -> None:
    await install_crd(cluster.admin_kubeconfig)
    for namespace in (NAMESPACE, WARMUP_NAMESPACE):
        await asyncio.to_thread(cluster.create_namespace, namespace)
    status, body = await asyncio.to_thread(
        cluster.request,
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
        {"metadata": {"name": "default"}},
    )
    if status != 201:
        raise RuntimeError(f"creating the default ServiceAccount: {status} {body}")
    warmup = gitlab_agent(WARMUP_NAMESPACE, "warmup", "grpc://127.0.0.1:1", "none")
    async with aiohttp.ClientSession() as session:
        await create_all(
            session,
            direct,
            [(f"/apis/agentk.dev/v1alpha1/namespaces/{WARMUP_NAMESPACE}/gitlabagents", warmup)],
        )


def _row(name: str, samples: list[float]) -> tuple[object, ...]:
    return (name, percentile(samples, 50) * 1e3, percentile(samples, 99) * 1e3, max(samples) * 1e3)


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    spy: PySpy | None = None
    async with (
        asyncio.timeout(600),
        work_directory("bench-apply-") as work_dir,
        kas_stack(args, args.agents, work_dir) as stack,
    ):
        print(f"kas: {args.kas}, agents dial {args.scheme}://")
        direct = direct_endpoint(stack.cluster)
        await _prepare(stack.cluster, direct)
        operator = OperatorProcess(work_dir, stack.cluster.admin_kubeconfig, NAMESPACE)
        try:
            await operator.start()
            # The agents are applied to a running operator: its start (informers' lists, preflight checks,
            # first connections to the API server) is over, as it is in a cluster (cold_start.py measures
            # a start).
            await operator.wait_ready()
            await asyncio.sleep(SETTLE_S)
            if args.profile:
                await asyncio.to_thread(args.profile.mkdir, parents=True, exist_ok=True)
                spy = PySpy(operator.pid, args.profile / "apply-operator.txt", seconds=15)
                await spy.start()
            timings = await _through_operator(direct, stack)
            if spy is not None:
                await spy.wait()
            operator.stop()
            await asyncio.sleep(3.0)  # kas notices the operator's agents went away
            baseline = await _through_runtime(stack, work_dir)
        finally:
            operator.stop()
    print(f"{args.agents} GitLabAgents applied at once; times from each resource's POST")
    rows = [
        _row("POST answered (apiserver)", timings.answered),
        _row("ADDED event seen by a watch (apiserver)", timings.added),
        _row("first status written (operator)", timings.first_status),
        _row("status.phase Connected", timings.connected),
        _row("  of which ADDED -> Connected (operator + kas)", timings.operator_part),
        _row("baseline: Runtime.apply -> snapshot Connected", baseline),
    ]
    print(table(["step", "p50 ms", "p99 ms", "max ms"], rows))
    print(
        f"Connected/baseline: p50 {ratio(percentile(timings.connected, 50), percentile(baseline, 50)):.1f}x, "
        f"p99 {ratio(percentile(timings.connected, 99), percentile(baseline, 99)):.1f}x"
    )
    print(
        "status writes (MODIFIED events, incl. kopf's finalizer/annotations) per resource until 3 s after "
        f"all Connected: mean {statistics.mean(timings.writes):.1f}, max {max(timings.writes)}; "
        f"phases seen (resources): {timings.seen_phases}; status watch resumed {timings.watch_restarts}x"
    )
    print(
        "API requests per resource from the POSTs until all Connected: "
        + ", ".join(f"{what} {count:.2f}" for what, count in timings.requests)
    )
    if spy is not None:
        print(summarise(spy.out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="same as the full run (50 resources)")
    parser.add_argument("--agents", type=int, default=50)
    add_kas_arguments(parser)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the operator while it works")
    args = parser.parse_args()
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
