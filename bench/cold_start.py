"""Cold start: N GitLabAgents already exist, then the operator starts; how long until all are Connected.

    .venv/bin/python bench/cold_start.py [--agents 1000] [--runs 2] [--kas python|gitlab] [--scheme grpc|ws]
        [--profile DIR]

Issue 20's "1000 agents all Connected from a cold operator start", two ways per run: the resources and
their token Secrets are created with no operator running, then `python -m agent_operator` starts (the
first start: Secrets not labelled yet, no finalizers, no status), is stopped, and starts again (a restart,
as after an upgrade or a rescheduled pod). Times are from each process start to 50 % and 100 % of the
resources saying Connected with a `connectedSince` of that process (a watch of the benchmark's own). Also:
kopf's finalizer per resource, the API requests per agent the operator made (the apiserver's own counter,
without the benchmark's), its CPU seconds and RSS at all Connected. Each run uses a fresh namespace against
the same kas (its own process, not counted: the reference kas, or GitLab's own with `--kas gitlab`) and
the real kube-apiserver. Bounded: every wait has
a limit.
`bench/density.py --mode operator` measures the other case: the operator running, the resources POSTed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _api_counts as api_counts
import _bootstrap  # noqa: F401 - the repository root on sys.path
import aiohttp
from _fleet import FleetAgent, OperatorProcess, PhaseWatch, create_all, fleet_objects, install_crd
from _kas_stack import add_kas_arguments, kas_stack
from _procs import process_cpu, process_rss
from _profile import PySpy, summarise
from _stack import direct_endpoint, machine_description, work_directory
from _stats import table

from tests.support.k8s_cluster import LocalCluster

CONNECT_LIMIT_S = 180.0
PROFILE_S = 30
"""py-spy samples the operator this long from its liveness answer (--profile)."""


class RestartWatch(PhaseWatch):
    """PhaseWatch that also notes when each resource first says Connected with a `connectedSince` at or
    after `since` (wall clock): Connected by the operator started then, not a status left by the last one."""

    since: float = 0.0
    reconnected: dict[str, float]
    connected_since: dict[str, float]
    """The `connectedSince` (wall clock) each resource first said Connected with: when its worker
    connected, as the operator saw it, however late the status that says so was written."""

    def _observe(self, kind: str, obj: dict[str, Any], now: float) -> None:
        super()._observe(kind, obj, now)
        status = obj.get("status") or {}
        if status.get("phase") != "Connected" or not status.get("connectedSince"):
            return
        stamp = datetime.datetime.fromisoformat(status["connectedSince"].replace("Z", "+00:00")).timestamp()
        if stamp >= math.floor(self.since):
            self.reconnected.setdefault(obj["metadata"]["name"], now)
            self.connected_since.setdefault(obj["metadata"]["name"], stamp)


async def _start_and_measure(
    cluster: LocalCluster, namespace: str, names: list[str], operator: OperatorProcess, profile: Path | None
) -> dict[str, Any]:
    """Start `operator`; measure until every resource says Connected through it (or the limit)."""
    watch = RestartWatch(direct_endpoint(cluster), namespace)
    watch.reconnected = {}
    watch.connected_since = {}
    watch.since = time.time()  # before the watch's LIST: what it lists is the last operator's
    spy: PySpy | None = None
    async with asyncio.TaskGroup() as group:
        watcher = group.create_task(watch.run(), name="gitlabagent-watch")
        await asyncio.wait_for(watch.ready.wait(), 10)
        requests_before = await api_counts.scrape(cluster)
        started = time.monotonic()
        await operator.start()
        live = time.monotonic()
        if profile is not None:
            spy = PySpy(operator.pid, profile / f"{namespace}-{operator.work_dir.name}.txt", PROFILE_S)
            await spy.start()
        ok = await _wait_reconnected(watch, names)
        cpu = process_cpu(operator.pid)
        rss = process_rss(operator.pid)
        requests_after = await api_counts.scrape(cluster)
        watcher.cancel()
    if spy is not None:
        await spy.wait()
    connected = sorted(watch.reconnected[n] - started for n in names if n in watch.reconnected)
    nan = float("nan")
    stages = {
        "kopf's finalizer": [watch.finalized[n] - started for n in names if n in watch.finalized],
        "worker connected (connectedSince)": [
            watch.connected_since[n] - watch.since for n in names if n in watch.connected_since
        ],
        "Connected": connected,
    }
    own = {("WATCH", "gitlabagents", ""): 1.0, ("LIST", "gitlabagents", ""): float(watch.relists)}
    return {
        "ok": ok,
        "live_s": live - started,
        "half_s": connected[len(connected) // 2] if connected else nan,
        "all_s": connected[-1] if ok else nan,
        "all_after_live_s": connected[-1] - (live - started) if ok else nan,
        "cpu_s": cpu,
        "rss_mib": rss / 2**20,
        "requests": api_counts.per_resource(requests_before, requests_after, len(names), own),
        "stages": "; ".join(f"{what} {_spread(times)}" for what, times in stages.items()),
        "profile": summarise(spy.out) if spy is not None else "",
    }


async def _wait_reconnected(watch: RestartWatch, names: list[str]) -> bool:
    try:
        async with asyncio.timeout(CONNECT_LIMIT_S):
            while len(watch.reconnected) < len(names):
                watch.changed.clear()
                await watch.changed.wait()
    except TimeoutError:
        return False
    return True


async def _one_run(
    cluster: LocalCluster,
    kas_url: str,
    agents: Sequence[FleetAgent],
    work_dir: Path,
    run: int,
    profile: Path | None,
) -> list[dict[str, Any]]:
    """The first start (Secrets not labelled yet, no finalizers, no status) and a restart (what an
    upgrade or a rescheduled pod sees), each measured from its process start."""
    namespace = f"bench-cold-{len(agents)}-{run}"
    await asyncio.to_thread(cluster.create_namespace, namespace)
    sa_path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    await asyncio.to_thread(cluster.request, "POST", sa_path, {"metadata": {"name": "default"}})
    secrets, glas = fleet_objects(namespace, agents, kas_url)
    names = [body["metadata"]["name"] for _, body in glas]
    direct = direct_endpoint(cluster)
    async with aiohttp.ClientSession() as session:
        await create_all(session, direct, secrets)
        await create_all(session, direct, glas)
    results = []
    for start in ("first start", "restart"):
        operator_dir = work_dir / f"operator-{run}-{start.replace(' ', '-')}"
        operator_dir.mkdir()
        operator = OperatorProcess(operator_dir, cluster.admin_kubeconfig, namespace)
        try:
            result = await _start_and_measure(cluster, namespace, names, operator, profile)
        finally:
            operator.stop()
        results.append({"run": f"{run}, {start}", **result})
        await asyncio.sleep(3.0)  # let kas notice the agents went away
    return results


def _spread(samples: list[float]) -> str:
    """p50 / max of `samples`, in seconds."""
    if not samples:
        return "none"
    ordered = sorted(samples)
    return f"{ordered[len(ordered) // 2]:.1f} / {ordered[-1]:.1f}"


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    results = []
    async with (
        asyncio.timeout(60 + args.runs * (CONNECT_LIMIT_S + 120)),
        work_directory("bench-cold-") as work_dir,
        kas_stack(args, args.agents, work_dir) as stack,
    ):
        print(f"kas: {args.kas}, agents dial {args.scheme}://")
        await install_crd(stack.cluster.admin_kubeconfig)
        for run in range(1, args.runs + 1):
            results.extend(
                await _one_run(stack.cluster, stack.agent_url, stack.agents, work_dir, run, args.profile)
            )
    header = [
        "run",
        "all Connected",
        "live after s",
        "50 % s",
        "100 % s",
        "100 % after live s",
        "CPU s",
        "RSS MiB",
    ]
    rows = [
        (
            r["run"],
            "yes" if r["ok"] else "no",
            r["live_s"],
            r["half_s"],
            r["all_s"],
            r["all_after_live_s"],
            r["cpu_s"],
            r["rss_mib"],
        )
        for r in results
    ]
    print(f"N = {args.agents}, times from the operator's process start")
    print(table(header, rows))
    for r in results:
        counts = ", ".join(f"{what} {per:.2f}" for what, per in r["requests"])
        print(f"run {r['run']}: per resource from the process start, p50 / max s: {r['stages']}")
        print(f"run {r['run']}: API requests per agent until all Connected: {counts}")
        if r["profile"]:
            print(r["profile"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=1000, help="GitLabAgents (default 1000)")
    parser.add_argument("--runs", type=int, default=2, help="fresh operator starts (default 2)")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the operator into DIR")
    add_kas_arguments(parser)
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
