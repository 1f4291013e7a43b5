"""Our runtime vs GitLab's agentk, side by side through the same GitLab kas, in one run.

    .venv/bin/python bench/vs_agentk.py [--quick] [--scheme ws|grpc|both] [--rounds R] [--requests N]
        [--list-mb MB] [--concurrent C] [--density 1,10,100] [--runtime-tree DIR] [--profile DIR]
        [--only latency,list,concurrency,density,operator]

--quick: 2 rounds of 150 GET pairs, a 3 MB LIST, N = 1, 10 (about 1.5 minutes); the full run takes 4-6.

One apiserver (etcd + kube-apiserver from .cache/k8s-assets), one Redis, our GitLab Rails stand-in
(tests/support/gitlab_api.py) and ONE GitLab kas (tests/support/gitlab_kas.py, binaries from
scripts/gitlab-peers). Per scheme (ws://, grpc://) two agents connect to that kas, each its own process:
GitLab's agentk (one process per agent, as it ships) and our runtime (bench/_runtime_child.py, one worker).
Both use the apiserver's admin kubeconfig, and the CI job's `ci_access` entry has no `access_as`, so
neither impersonates and the apiserver does the same work for both. The client is this process (aiohttp),
and sends CI requests (`Authorization: Bearer ci:<agent id>:<job token>`) to kas's Kubernetes API proxy.

Measurements, each in R rounds; within a round the contenders take turns (agentk first in even rounds,
ours first in odd ones), so the machine's load hits both alike, and each round gives a ratio ours/agentk:
  - latency: N GETs of a small ConfigMap through the agent, each paired with a direct GET in random order;
    added p50/p99 = tunnel pXX - direct pXX of the same block. CPU per request = the agent process's CPU
    time over the block / tunnelled requests (also kas's);
  - LIST: one LIST of a namespace holding ~--list-mb MB of ConfigMaps (uncompressed), MB/s;
  - concurrency: C simultaneous GETs (one wave, after one warm-up wave per contender): completed, p50, p99;
  - RSS (VmRSS): of each contender's process after the rounds, and of fresh runtime processes with
    N = 1, 10, 100 agents connected to the same kas (--density), and of the operator with N GitLabAgents
    (`operator` in --only), against agentk's one-agent process.
`--runtime-tree DIR` adds a third contender: the runtime of another checkout (a git worktree), run from
DIR/bench/_runtime_child.py, e.g. the commit before the grpc:// bridge. Prints the load average
(/proc/loadavg) at each round. Bounded: every wait has a limit, the whole run --time-limit seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _bootstrap  # noqa: F401 - repository root on sys.path
import aiohttp
from _fleet import GLA_PATH, OperatorProcess, PhaseWatch, create_all, gitlab_agent, install_crd, secret
from _gitlab_side import GitLabSide, gitlab_side
from _procs import RuntimeChild, process_cpu, process_rss
from _profile import PySpy, summarise
from _stack import Endpoint, direct_endpoint, machine_description, work_directory
from _stats import percentile, ratio, table

from tests.support.gitlab_kas import GitLabAgentk, find_gitlab_peers
from tests.support.k8s_cluster import LocalCluster

CONFIGMAP = "/api/v1/namespaces/default/configmaps/bench-vs-agentk"
LIST_NAMESPACE = "bench-vs-agentk"
VALUE_BYTES = 2300
CREATE_CONCURRENCY = 16
CHUNK = 256 * 1024
SETTLE_S = 5.0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Contender:
    """One agent process connected to the GitLab kas, and the CI endpoint that reaches it."""

    name: str
    scheme: str
    pid: int
    endpoint: Endpoint

    @property
    def label(self) -> str:
        return f"{self.name} {self.scheme}"


@dataclass
class Results:
    """Per (metric, scheme, contender name): one value per round; loads per round."""

    values: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    loads: dict[str, list[str]] = field(default_factory=dict)
    latencies: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)
    """Per (scheme, contender name): every latency round's GET times, "direct" and "tunnel", in seconds.
    A p99 of one round's 600 GETs rests on its 6 slowest; pooled over the rounds on 18 (the contenders
    take turns within each round, so the machine's moods hit both alike)."""

    def add(self, metric: str, contender: Contender, value: float) -> None:
        self.values.setdefault((metric, contender.scheme, contender.name), []).append(value)

    def add_latencies(self, contender: Contender, samples: dict[str, list[float]]) -> None:
        pooled = self.latencies.setdefault((contender.scheme, contender.name), {"direct": [], "tunnel": []})
        for path, times in samples.items():
            pooled[path].extend(times)

    def get(self, metric: str, scheme: str, name: str) -> list[float]:
        return self.values.get((metric, scheme, name), [])


# --- the stack ------------------------------------------------------------------------------------


async def _wait_serving(endpoint: Endpoint, what: str, limit: float = 90.0) -> None:
    """Until a GET through the agent answers 200."""
    last = ""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(
                    endpoint.base_url + CONFIGMAP, ssl=endpoint.ssl, headers=endpoint.headers
                ) as r:
                    await r.read()
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except aiohttp.ClientError as err:
                last = repr(err)
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{what} does not serve through GitLab kas after {limit:.0f}s: {last}")


class Agentk:
    def __init__(self, side: GitLabSide, scheme: str) -> None:
        self.agent = side.new_agent(f"agentk-{scheme}")
        self.process = GitLabAgentk(
            find_gitlab_peers().agentk,
            side.work_dir / f"agentk-{scheme}",
            kas_address=side.kas.agent_url(scheme),
            token=self.agent.token,
            kubeconfig=side.cluster.admin_kubeconfig,
            namespace="default",
            pod_name=f"agentk-bench-{scheme}",
        )

    def start(self) -> int:
        self.process.start()
        assert self.process.proc is not None
        return self.process.proc.pid  # `env` execs agentk: the same pid

    def stop(self) -> None:
        self.process.stop()


class OurRuntime:
    def __init__(self, side: GitLabSide, scheme: str, name: str, tree: Path | None, agents: int = 1) -> None:
        self.side, self.scheme = side, scheme
        self.agents = [side.new_agent(f"{name}-{scheme}-{i}") for i in range(agents)]
        child = (tree / "bench" / "_runtime_child.py") if tree else None
        self.child = RuntimeChild(
            side.cluster.admin_kubeconfig, side.work_dir / f"{name}-{scheme}-{agents}.log", child=child
        )

    async def start(self) -> int:
        await self.child.start()
        return self.child.pid

    async def connect(self, limit: float = 120.0) -> float:
        """Apply every agent, wait until all are Connected; seconds it took."""
        began = time.monotonic()
        await self.child.command(
            cmd="apply",
            kas=self.side.kas.agent_url(self.scheme),
            agents=[[a.id, a.token] for a in self.agents],
        )
        waited = await self.child.command(cmd="wait", timeout=limit, time_limit=limit + 10)
        if not waited["ok"]:
            raise RuntimeError(f"our agents did not connect to GitLab kas: {waited['phases']}")
        return time.monotonic() - began

    async def stop(self) -> None:
        await self.child.stop()


async def operator_density(side: GitLabSide, scheme: str, n: int) -> tuple[object, ...]:
    """The operator (`python -m agent_operator`, one namespace) with N GitLabAgents on GitLab's kas:
    RSS before any resource and 5 s after all are Connected (watched on the apiserver)."""
    namespace = f"bench-vs-agentk-operator-{n}"
    await asyncio.to_thread(side.cluster.create_namespace, namespace)
    sa_path = f"/api/v1/namespaces/{namespace}/serviceaccounts"
    await asyncio.to_thread(side.cluster.request, "POST", sa_path, {"metadata": {"name": "default"}})
    agents = [side.new_agent(f"operator-{n}-{i}") for i in range(n)]
    secrets_ = [
        (
            sa_path.replace("serviceaccounts", "secrets"),
            secret(namespace, f"token-{a.id}", a.token, f"agent-{a.id}"),
        )
        for a in agents
    ]
    glas = [
        (
            GLA_PATH.format(ns=namespace),
            gitlab_agent(namespace, f"agent-{a.id}", side.kas.agent_url(scheme), f"token-{a.id}"),
        )
        for a in agents
    ]
    names = [body["metadata"]["name"] for _, body in glas]
    direct = direct_endpoint(side.cluster)
    work = side.work_dir / f"operator-{n}"
    work.mkdir()
    operator = OperatorProcess(work, side.cluster.admin_kubeconfig, namespace)
    watch = PhaseWatch(direct, namespace)
    try:
        await operator.start()
        await asyncio.sleep(3.0)
        empty = process_rss(operator.pid) / 2**20
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
            watcher = group.create_task(watch.run())
            await create_all(session, direct, secrets_)
            await asyncio.wait_for(watch.ready.wait(), 10)
            began = time.monotonic()
            await create_all(session, direct, glas)
            ok = await watch.wait_all(names, "Connected", 180.0)
            connected = time.monotonic() - began
            watcher.cancel()
        if not ok:
            raise RuntimeError(f"GitLabAgents not all Connected on GitLab kas: {watch.phases}")
        await asyncio.sleep(SETTLE_S)
        total = process_rss(operator.pid) / 2**20
    finally:
        operator.stop()
    return (
        "operator",
        n,
        scheme,
        f"{connected:.2f}",
        empty,
        total,
        total / n * 1024,
        (total - empty) / n * 1024,
    )


# --- measurements ---------------------------------------------------------------------------------


async def _get(session: aiohttp.ClientSession, endpoint: Endpoint) -> float:
    began = time.perf_counter()
    async with session.get(endpoint.base_url + CONFIGMAP, ssl=endpoint.ssl, headers=endpoint.headers) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{endpoint.name}: GET answered {r.status}")
    return time.perf_counter() - began


async def latency_block(
    direct: Endpoint, who: Contender, kas_pid: int, requests: int, results: Results, seed: int
) -> None:
    """`requests` pairs (direct, through `who`) in random order; added p50/p99 and CPU per request."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {"direct": [], "tunnel": []}
    async with aiohttp.ClientSession() as session:
        for _ in range(min(50, requests // 5)):
            await _get(session, who.endpoint)
            await _get(session, direct)
        cpu_before = process_cpu(who.pid), process_cpu(kas_pid)
        for _ in range(requests):
            pair = [("direct", direct), ("tunnel", who.endpoint)]
            rng.shuffle(pair)
            for name, endpoint in pair:
                samples[name].append(await _get(session, endpoint))
        cpu_agent = process_cpu(who.pid) - cpu_before[0]
        cpu_kas = process_cpu(kas_pid) - cpu_before[1]
    results.add_latencies(who, samples)
    for q in (50, 99):
        results.add(f"added p{q} ms", who, _added(samples, q) * 1e3)
    results.add("direct p50 ms", who, percentile(samples["direct"], 50) * 1e3)
    results.add("agent CPU ms/request", who, cpu_agent / requests * 1e3)
    results.add("kas CPU ms/request", who, cpu_kas / requests * 1e3)


def _added(samples: dict[str, list[float]], q: float) -> float:
    """What the agent adds at percentile q: the tunnelled GETs' pq minus the direct GETs' pq (seconds)."""
    return percentile(samples["tunnel"], q) - percentile(samples["direct"], q)


async def create_list_objects(cluster: LocalCluster, direct: Endpoint, megabytes: float) -> int:
    await asyncio.to_thread(cluster.create_namespace, LIST_NAMESPACE)
    count = int(megabytes * 1e6 / (VALUE_BYTES * 1.13))
    url = f"{direct.base_url}/api/v1/namespaces/{LIST_NAMESPACE}/configmaps"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def creator(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            value = os.urandom(VALUE_BYTES * 3 // 4).hex()[:VALUE_BYTES]
            body = {"metadata": {"name": f"cm-{i:06d}"}, "data": {"v": value}}
            async with session.post(url, json=body, ssl=direct.ssl, headers=direct.headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"creating ConfigMap {i}: {r.status}")

    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        for _ in range(CREATE_CONCURRENCY):
            group.create_task(creator(session))
    return count


async def list_once(endpoint: Endpoint) -> tuple[int, float]:
    """(bytes, seconds) of one uncompressed LIST, on a fresh connection."""
    url = f"{endpoint.base_url}/api/v1/namespaces/{LIST_NAMESPACE}/configmaps"
    headers = {**endpoint.headers, "Accept-Encoding": "identity"}
    total = 0
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        began = time.perf_counter()
        async with session.get(url, ssl=endpoint.ssl, headers=headers) as r:
            if r.status != 200:
                raise RuntimeError(f"{endpoint.name}: LIST answered {r.status}")
            async for chunk in r.content.iter_chunked(CHUNK):
                total += len(chunk)
        return total, time.perf_counter() - began


async def list_block(who: Contender, results: Results) -> None:
    cpu_before = process_cpu(who.pid)
    size, seconds = await list_once(who.endpoint)
    results.add("LIST MB/s", who, size / seconds / 1e6)
    results.add("LIST agent CPU s", who, process_cpu(who.pid) - cpu_before)


async def _one(session: aiohttp.ClientSession, endpoint: Endpoint, start: asyncio.Event) -> float | None:
    await start.wait()
    began = time.perf_counter()
    try:
        async with session.get(
            endpoint.base_url + CONFIGMAP, ssl=endpoint.ssl, headers=endpoint.headers
        ) as r:
            await r.read()
            ok = r.status == 200
    except aiohttp.ClientError:
        ok = False
    return time.perf_counter() - began if ok else None


async def wave(endpoint: Endpoint, count: int) -> tuple[list[float], float]:
    """Latencies of the successes of `count` simultaneous GETs (fresh connections), and the wall time."""
    start = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_one(session, endpoint, start)) for _ in range(count)]
            await asyncio.sleep(0.05)
            began = time.perf_counter()
            start.set()
        wall = time.perf_counter() - began
    return [r for t in tasks if (r := t.result()) is not None], wall


async def concurrency_block(who: Contender, count: int, results: Results) -> None:
    cpu_before = process_cpu(who.pid)
    ok, wall = await wave(who.endpoint, count)
    results.add("500: completed", who, len(ok))
    results.add("500: p50 ms", who, percentile(ok, 50) * 1e3)
    results.add("500: p99 ms", who, percentile(ok, 99) * 1e3)
    results.add("500: wall ms", who, wall * 1e3)
    results.add("500: agent CPU ms/request", who, (process_cpu(who.pid) - cpu_before) / count * 1e3)


# --- the run --------------------------------------------------------------------------------------


def _turns(contenders: Sequence[Contender], round_no: int) -> list[Contender]:
    """agentk first in even rounds, last in odd ones (the others keep their order)."""
    return list(contenders) if round_no % 2 == 0 else list(reversed(contenders))


async def run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}; loadavg {loadavg()}")
    results = Results()
    rss: dict[str, float] = {}
    density_rows: list[tuple[object, ...]] = []
    spies: list[PySpy] = []
    async with (
        asyncio.timeout(args.time_limit),
        work_directory("bench-vs-agentk-") as work_dir,
        gitlab_side(work_dir) as side,
    ):
        direct = direct_endpoint(side.cluster)
        body = {"metadata": {"name": CONFIGMAP.rsplit("/", 1)[1]}, "data": {"key": "value" * 20}}
        status, _ = await asyncio.to_thread(
            side.cluster.request, "POST", "/api/v1/namespaces/default/configmaps", body
        )
        if status != 201:
            raise RuntimeError(f"creating the ConfigMap answered {status}")
        by_scheme: dict[str, list[Contender]] = {}
        stoppers: list[Agentk | OurRuntime] = []
        try:
            for scheme in args.schemes:
                agentk = Agentk(side, scheme)
                ours = OurRuntime(side, scheme, "runtime", None)
                found: list[tuple[Agentk | OurRuntime, str]] = [(agentk, "agentk"), (ours, "runtime")]
                if args.runtime_tree:
                    found.append((OurRuntime(side, scheme, "before", args.runtime_tree), "before"))
                side.allow_ci(
                    [a for c, _ in found for a in ([c.agent] if isinstance(c, Agentk) else c.agents)]
                )
                contenders = []
                for contender, name in found:
                    if isinstance(contender, Agentk):
                        pid = contender.start()
                        agent = contender.agent
                    else:
                        pid = await contender.start()
                        await contender.connect()
                        agent = contender.agents[0]
                    stoppers.append(contender)
                    who = Contender(name, scheme, pid, side.endpoint(agent))
                    await _wait_serving(who.endpoint, who.label)
                    contenders.append(who)
                by_scheme[scheme] = contenders
            kas_pid = side.kas.proc.pid if side.kas.proc else 0
            for who in (c for cs in by_scheme.values() for c in cs):
                rss[f"{who.label} at start"] = process_rss(who.pid) / 2**20

            if "latency" in args.only:
                for r in range(args.rounds):
                    results.loads.setdefault("latency", []).append(loadavg())
                    for contenders in by_scheme.values():
                        for who in _turns(contenders, r):
                            spy = None
                            if args.profile and r == 0 and who.name != "agentk":
                                args.profile.mkdir(parents=True, exist_ok=True)
                                out = args.profile / f"vs-agentk-{who.name}-{who.scheme}.txt"
                                spy = PySpy(who.pid, out, seconds=args.profile_seconds)
                                await spy.start()
                                spies.append(spy)
                            await latency_block(direct, who, kas_pid, args.requests, results, seed=r)
                            if spy is not None:
                                await spy.wait()
            if "list" in args.only:
                count = await create_list_objects(side.cluster, direct, args.list_mb)
                print(f"LIST: {count} ConfigMaps in {LIST_NAMESPACE}")
                size, _ = await list_once(direct)
                print(f"LIST size: {size / 1e6:.1f} MB")
                for r in range(args.rounds):
                    results.loads.setdefault("list", []).append(loadavg())
                    for contenders in by_scheme.values():
                        for who in _turns(contenders, r):
                            await list_block(who, results)
            if "concurrency" in args.only:
                for contenders in by_scheme.values():
                    for who in contenders:
                        await wave(who.endpoint, args.concurrent)  # warm-up: tunnels, connections
                for r in range(args.rounds):
                    results.loads.setdefault("concurrency", []).append(loadavg())
                    for contenders in by_scheme.values():
                        for who in _turns(contenders, r):
                            await concurrency_block(who, args.concurrent, results)
            for who in (c for cs in by_scheme.values() for c in cs):
                rss[f"{who.label} after the rounds"] = process_rss(who.pid) / 2**20
        finally:
            for contender in reversed(stoppers):
                if isinstance(contender, Agentk):
                    await asyncio.to_thread(contender.stop)
                else:
                    await contender.stop()

        if "density" in args.only:
            for n in args.density:
                ours = OurRuntime(side, args.schemes[0], "density", None, agents=n)
                try:
                    pid = await ours.start()
                    base = process_rss(pid) / 2**20
                    connected = await ours.connect()
                    await asyncio.sleep(SETTLE_S)
                    total = process_rss(pid) / 2**20
                finally:
                    await ours.stop()
                density_rows.append(
                    (
                        "runtime",
                        n,
                        args.schemes[0],
                        f"{connected:.2f}",
                        base,
                        total,
                        total / n * 1024,
                        (total - base) / n * 1024,
                    )
                )

        if "operator" in args.only:
            await install_crd(side.cluster.admin_kubeconfig)
            for n in args.density:
                density_rows.append(await operator_density(side, args.schemes[0], n))

    report(args, results, rss, density_rows)
    for spy in spies:
        print(f"\n## py-spy of {spy.out.name} (first latency round)\n{summarise(spy.out)}")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(
    args: argparse.Namespace,
    results: Results,
    rss: dict[str, float],
    density_rows: list[tuple[object, ...]],
) -> None:
    names = ["agentk", "runtime"] + (["before"] if args.runtime_tree else [])
    for what, loads in results.loads.items():
        print(f"loadavg at each {what} round: {' | '.join(loads)}")
    metrics = sorted({m for m, _, _ in results.values}, key=_metric_order)
    print(f"\n## per round ({args.rounds} rounds; ratio = ours / agentk; GitLab kas in the middle of both)")
    rows = []
    for metric in metrics:
        for scheme in args.schemes:
            agentk = results.get(metric, scheme, "agentk")
            for name in names[1:]:
                ours = results.get(metric, scheme, name)
                per_round = " / ".join(
                    f"{a:.2f}→{o:.2f} (x{ratio(o, a):.2f})" for a, o in zip(agentk, ours, strict=False)
                )
                rows.append(
                    (
                        metric,
                        scheme,
                        name,
                        _median(agentk),
                        _median(ours),
                        ratio(_median(ours), _median(agentk)),
                        per_round,
                    )
                )
    print(
        table(
            ["metric", "scheme", "ours", "agentk median", "ours median", "ratio", "per round agentk→ours"],
            rows,
        )
    )
    if results.latencies:
        _report_pooled(args, results, names)
    print("\n## RSS (MiB)")
    print(table(["process", "RSS MiB"], sorted(rss.items())))
    if density_rows:
        print("\n## N agents in one Runtime / one operator on GitLab kas (RSS 5 s after all Connected)")
        header = [
            "engine",
            "N",
            "scheme",
            "connect s",
            "RSS 0 agents MiB",
            "RSS MiB",
            "KiB per agent (total/N)",
            "KiB per agent (marginal)",
        ]
        print(table(header, density_rows))
        agentk_rss = [v for k, v in rss.items() if k.startswith("agentk") and k.endswith("after the rounds")]
        if agentk_rss:
            print(
                f"agentk, one agent per process: {max(agentk_rss):.1f} MiB; "
                f"1/100 of it: {max(agentk_rss) / 100 * 1024:.0f} KiB"
            )


def _report_pooled(args: argparse.Namespace, results: Results, names: list[str]) -> None:
    """Added latency per percentile with every round's GETs pooled: steadier tails than a median of
    per-round p99s."""
    print(f"\n## added latency, {args.rounds} latency rounds pooled (ms; ratio = ours / agentk)")
    rows = []
    for scheme in args.schemes:
        agentk = results.latencies.get((scheme, "agentk"))
        for name in names[1:]:
            ours = results.latencies.get((scheme, name))
            if agentk is None or ours is None:
                continue
            for q in (50, 90, 95, 99):
                theirs_added, ours_added = _added(agentk, q), _added(ours, q)
                rows.append(
                    (
                        f"added p{q}",
                        scheme,
                        name,
                        len(ours["tunnel"]),
                        theirs_added * 1e3,
                        ours_added * 1e3,
                        ratio(ours_added, theirs_added),
                    )
                )
    print(table(["metric", "scheme", "ours", "GETs each", "agentk", "ours", "ratio"], rows))


def _metric_order(metric: str) -> tuple[int, str]:
    order = ["added p50", "added p99", "direct", "agent CPU", "kas CPU", "LIST", "500"]
    return next((i for i, prefix in enumerate(order) if metric.startswith(prefix)), len(order)), metric


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 150 GETs, a 3 MB LIST, N = 1, 10")
    parser.add_argument("--scheme", choices=("ws", "grpc", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None, help="GET pairs per contender and round")
    parser.add_argument("--list-mb", type=float, default=None)
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--density", default=None, help="comma-separated N (our runtime only)")
    parser.add_argument("--runtime-tree", type=Path, default=None, help="also run the runtime of DIR")
    parser.add_argument("--only", default="latency,list,concurrency,density,operator")
    parser.add_argument("--time-limit", type=float, default=1800.0)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy our runtime in round 1's latency")
    parser.add_argument("--profile-seconds", type=int, default=8)
    args = parser.parse_args()
    args.schemes = ["ws", "grpc"] if args.scheme == "both" else [args.scheme]
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.requests = args.requests or (150 if args.quick else 600)
    args.list_mb = args.list_mb or (3.0 if args.quick else 10.0)
    args.density = [int(n) for n in (args.density or ("1,10" if args.quick else "1,10,100")).split(",")]
    args.only = set(args.only.split(","))
    if args.runtime_tree:
        args.runtime_tree = args.runtime_tree.resolve()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
