"""Push -> agent: how long a pushed config.yaml takes to reach our runtime and agentk through GitLab's kas.

    .venv/bin/python bench/gitlab_push_config.py [--pushes 20] [--interval 0.3]

One apiserver, Redis, the Rails stand-in and ONE GitLab kas (binaries of scripts/gitlab-peers), a GitLab
project in a box (tests/support/gitlab_project.py: a bare repository served to kas by the Gitaly
stand-in). Our runtime (in this process, one worker) and GitLab's agentk (its own process) connect as the
same agent, so each push reaches both through the same kas. Each push commits a changed
`.gitlab/agents/<name>/config.yaml`, moves the branch and sends `GitPushEvent` to kas's API listener, as
Rails does; then the script waits for both agents to have the new commit. "push" is the moment the
branch moved (right before the event is sent); from there:
  - kas read: when kas asked the Gitaly stand-in for the file at the new commit (TreeEntry);
  - runtime: when our worker's snapshot shows the commit (polled every 2 ms);
  - agentk: the time stamp of agentk's "Applying configuration" debug line for the commit (the file keeps
    agentk at debug level; its clock is this machine's, to the millisecond).
The commit and `git push` themselves (before "push") are shown apart. The baseline is agentk in the same
run; the ratio is ours/agentk per percentile.
Bounded: each push waits at most 15 s for each agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import _bootstrap  # noqa: F401 - repository root on sys.path
from _gitlab_side import bench_kas
from _stack import local_cluster, machine_description, work_directory
from _stats import percentile, ratio, table

from agent_runtime.runtime import Runtime
from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, WorkerSpec
from tests.interop.helpers import started_runtime
from tests.support.gitlab_api import Agent, GitLabApi
from tests.support.gitlab_kas import GitLabAgentk, find_gitlab_peers, make_kas_secrets
from tests.support.gitlab_project import GitLabProject, agent_config_path
from tests.support.k8s_cluster import LocalCluster
from tests.support.redis_server import RedisServer, find_redis_server

AGENT = Agent(
    id=31, name="bench-push", token="glagent-bench-push-" + "p" * 40, project_id=31, project_path="bench/push"
)
CONFIG = "observability:\n  logging:\n    level: debug\n# push {n}\n"
WAIT_S = 15.0


@dataclass(frozen=True)
class Sample:
    git_ms: float
    kas_read_ms: float
    runtime_ms: float
    agentk_ms: float


@dataclass
class Bench:
    project: GitLabProject
    runtime: Runtime
    worker_id: str
    agentk: GitLabAgentk


@asynccontextmanager
async def gitlab_with_project(work_dir: Path, cluster: LocalCluster) -> AsyncIterator[Bench]:
    peers = find_gitlab_peers()
    print(f"GitLab peers: {peers.directory} ({peers.version})")
    redis = RedisServer(find_redis_server())
    await asyncio.to_thread(redis.start)
    secrets_ = make_kas_secrets(work_dir / "secrets")
    api = GitLabApi(secrets_.gitlab_secret)
    api.start()
    kas = bench_kas(peers, work_dir, api, secrets_, redis.port)
    project = GitLabProject(work_dir / "project", project_id=AGENT.project_id, full_path=AGENT.project_path)
    project.start()
    project.push({agent_config_path(AGENT.name): CONFIG.format(n=0)}, "first")
    project.register(api, AGENT)
    project.notify(f"127.0.0.1:{kas.api_port}", secrets_.gitlab_secret)
    agentk = GitLabAgentk(
        peers.agentk,
        work_dir / "agentk",
        kas_address=kas.grpc_url,
        token=AGENT.token,
        kubeconfig=cluster.admin_kubeconfig,
        namespace="default",
        pod_name="agentk-bench-push",
    )
    spec = WorkerSpec(
        id="bench/push",
        kas_address=kas.grpc_url,
        token=Secret(AGENT.token),
        identity=ServiceAccountRef("default", "default"),
    )
    try:
        await asyncio.to_thread(kas.start)
        agentk.start()
        async with started_runtime(cluster.admin_kubeconfig) as runtime:
            runtime.apply(spec)
            yield Bench(project, runtime, spec.id, agentk)
    finally:
        agentk.stop()
        await asyncio.to_thread(kas.stop)
        project.stop()
        api.stop()
        await asyncio.to_thread(redis.stop)


def agentk_applied_at(log: str, commit: str) -> float | None:
    """Wall-clock time of agentk's debug line applying `commit`, from its JSON log."""
    for line in log.splitlines():
        if commit not in line or "Applying configuration" not in line:
            continue
        stamp = json.loads(line)["time"]
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return None


async def until(what: str, probe: Callable[[], float | None]) -> float:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        await asyncio.sleep(0.002)
    raise SystemExit(f"gave up after {WAIT_S:.0f}s waiting for {what}")


async def one_push(bench: Bench, n: int) -> Sample:
    began = time.monotonic()
    commit = await asyncio.to_thread(
        bench.project.push, {agent_config_path(AGENT.name): CONFIG.format(n=n)}, f"push {n}"
    )
    pushed = bench.project.pushes[-1].pushed_at
    pushed_wall = time.time() - (time.monotonic() - pushed)

    def runtime_has() -> float | None:
        snap = bench.runtime.snapshot(bench.worker_id)
        return time.monotonic() if snap is not None and snap.config_commit == commit else None

    runtime_at = await until(f"our runtime to have {commit}", runtime_has)
    agentk_at = await until(
        f"agentk to apply {commit}", lambda: agentk_applied_at(bench.agentk.log(), commit)
    )
    reads = [c.at for c in bench.project.gitaly.calls("TreeEntry") if c.revision == commit]
    return Sample(
        git_ms=(pushed - began) * 1000,
        kas_read_ms=(reads[0] - pushed) * 1000 if reads else float("nan"),
        runtime_ms=(runtime_at - pushed) * 1000,
        agentk_ms=(agentk_at - pushed_wall) * 1000,
    )


async def main(pushes: int, interval: float) -> None:
    print(machine_description())
    async with (
        work_directory("bench-push-") as work_dir,
        local_cluster() as cluster,
        gitlab_with_project(work_dir, cluster) as bench,
    ):
        head = bench.project.head()
        await until("both agents' first configuration", lambda: _both_have(bench, head))
        samples = []
        for n in range(1, pushes + 1):
            samples.append(await one_push(bench, n))
            await asyncio.sleep(interval)
    rows = []
    for q in (50, 99):
        git_ms = percentile([s.git_ms for s in samples], q)
        kas_read = percentile([s.kas_read_ms for s in samples], q)
        ours = percentile([s.runtime_ms for s in samples], q)
        theirs = percentile([s.agentk_ms for s in samples], q)
        figures = (f"{value:.0f} ms" for value in (git_ms, kas_read, ours, theirs))
        rows.append((f"p{q}", *figures, f"x{ratio(ours, theirs):.2f}"))
    print(f"{pushes} pushes, {interval} s apart, load average now {os.getloadavg()[0]:.2f}")
    header = (
        "",
        "commit + git push",
        "push -> kas read",
        "push -> our runtime",
        "push -> agentk",
        "ours/agentk",
    )
    print(table(header, rows))


def _both_have(bench: Bench, commit: str) -> float | None:
    snap = bench.runtime.snapshot(bench.worker_id)
    ours = snap is not None and snap.config_commit == commit
    return 1.0 if ours and f'"agent_id":{AGENT.id}' in bench.agentk.log() else None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between pushes")
    args = parser.parse_args()
    asyncio.run(main(args.pushes, args.interval))
    sys.exit(0)
