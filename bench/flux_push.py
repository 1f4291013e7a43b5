"""Push → Flux through GitLab's kas: our agent's requestedAt patch beside GitLab's agentk's webhook call.

    .venv/bin/python bench/flux_push.py [--pushes 100] [--interval 0.1] [--commits 20]

One apiserver, Redis, the Rails stand-in and ONE GitLab kas (scripts/gitlab-peers) configured with
`gitlab.external_url` = the loopback Git server of a GitLab project in a box (the agent's configuration
project, served to kas by the Gitaly stand-in). Our runtime (in this process, default Flux tuning) and
GitLab's agentk (its own process) run as the SAME agent, each with its Lease in a namespace of its own,
so every push reaches both through the same kas and the same Redis fan-out. Flux's GitRepository CRD and
a Receiver CRD are applied; one GitRepository points at the pushed project (public: Rails'
verify_project_access allows it).

Per push, "push" is the moment the script starts sending `Notifications/GitPushEvent` to kas's API
listener (as Rails' NotifyGitPushWorker does), and it waits (at most 5 s each) for:
  - ours, patched: our agent's merge patch of `reconcile.fluxcd.io/requestedAt` answered by the
    apiserver (the worker's last trigger time, wall clock);
  - ours, seen: the new requestedAt delivered on a watch of the GitRepository in this process (what
    source-controller reacts to);
  - agentk: its POST to `<webhook_receiver_url><status.webhookPath>`. agentk's path is a Receiver per
    GitRepository that Flux's notification-controller turns into the same annotation. The controller
    is not in the module proxy here, so the script sets the Receiver's `status.webhookPath` itself and
    points `flux.webhook_receiver_url` (a key of the agent's config.yaml; agentk has no such flag) at a
    loopback HTTP server that records the call and answers 200. agentk's figure is therefore
    "push → agentk's webhook call", one step short of the annotation.

Then, with Flux's controllers built (scripts/flux-controllers), the full loop over `--commits`: commit +
`git push` to a repository on the same Git server, the push event to kas, our agent's patch,
source-controller's fetch, kustomize-controller applying the commit (a ConfigMap naming it):
push → lastAppliedRevision, bounded 30 s per commit. bench/flux_apply.py has the same loop with the
patch made by the script and against Flux's own poll.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import _bootstrap  # noqa: F401 - repository root on sys.path
from _gitlab_side import bench_kas
from _stack import local_cluster, machine_description, work_directory
from _stats import percentile, ratio, table

from agent_runtime.kube import load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import FluxState, ServiceAccountRef, WorkerSpec
from kas.push_client import send_git_push_event_sync
from tests.interop.flux_gitlab import (
    RECEIVER_CRD,
    RequestedAtWatch,
    allow_gitrepository_patch,
    flux_crd,
    install_crd,
)
from tests.support import flux
from tests.support.flux import FluxBinaries, FluxControllers, FluxNotFoundError, find_flux
from tests.support.git_http import WorkingCopy
from tests.support.gitlab_api import Agent, GitLabApi
from tests.support.gitlab_kas import GitLabAgentk, GitLabKas, find_gitlab_peers, make_kas_secrets
from tests.support.gitlab_project import GitLabProject, agent_config_path
from tests.support.k8s_cluster import LocalCluster
from tests.support.redis_server import RedisServer, find_redis_server
from tests.support.webhook_recorder import WebhookRecorder

AGENT = Agent(
    id=41, name="bench-flux", token="glagent-bench-flux-" + "q" * 40, project_id=41, project_path="bench/flux"
)
APP = (42, "bench/flux-app")
LOOP = (43, "bench/flux-loop")
NAMESPACE = "bench-flux-push"
OURS_LEASES, AGENTK_LEASES = "bench-flux-ours", "bench-flux-agentk"
AGENT_SA = "flux-agent"
WEBHOOK_PATH = "/hook/bench-flux-app"
WAIT_S = 5.0
LIVE_WITHIN_S = 90.0
"""agentk opens its stream 10 s after its Receivers settle (its debounce), ours at once."""
APPLY_WAIT_S = 30.0


@dataclass
class Scene:
    cluster: LocalCluster
    kas: GitLabKas
    project: GitLabProject
    watch: RequestedAtWatch
    webhook: WebhookRecorder
    runtime: Runtime
    worker_id: str
    agentk: GitLabAgentk
    work_dir: Path
    external_url: str

    def triggered(self) -> int:
        snapshot = self.runtime.snapshot(self.worker_id)
        return snapshot.flux.triggered if snapshot is not None else 0

    def last_trigger(self) -> float | None:
        snapshot = self.runtime.snapshot(self.worker_id)
        at = snapshot.flux.last_trigger if snapshot is not None else None
        return at.timestamp() if at is not None else None

    def push(self, project: tuple[int, str]) -> float:
        """GitPushEvent to kas's API listener as Rails sends it; when the call began (monotonic)."""
        began = time.monotonic()
        send_git_push_event_sync(f"127.0.0.1:{self.kas.api_port}", self.kas.secrets.gitlab_secret, *project)
        return began


def agent_config(webhook_url: str) -> str:
    return f"flux:\n  webhook_receiver_url: {webhook_url}\nobservability:\n  logging:\n    level: info\n"


def prepare_cluster(cluster: LocalCluster) -> None:
    install_crd(cluster, flux_crd())
    install_crd(cluster, RECEIVER_CRD)
    for namespace in (NAMESPACE, OURS_LEASES, AGENTK_LEASES):
        cluster.create_namespace(namespace)
    allow_gitrepository_patch(cluster, NAMESPACE, AGENT_SA)


@asynccontextmanager
async def gitlab_scene(work_dir: Path, cluster: LocalCluster) -> AsyncIterator[Scene]:
    peers = find_gitlab_peers()
    print(f"GitLab peers: {peers.directory} ({peers.version})")
    await asyncio.to_thread(prepare_cluster, cluster)
    async with AsyncExitStack() as stack:
        redis = RedisServer(find_redis_server())
        await asyncio.to_thread(redis.start)
        stack.push_async_callback(asyncio.to_thread, redis.stop)
        webhook = WebhookRecorder()
        webhook.start()
        stack.callback(webhook.stop)
        secrets_ = make_kas_secrets(work_dir / "secrets")
        api = GitLabApi(secrets_.gitlab_secret)
        api.start()
        stack.callback(api.stop)
        project = GitLabProject(
            work_dir / "config", project_id=AGENT.project_id, full_path=AGENT.project_path
        )
        project.start()
        stack.callback(project.stop)
        project.push({agent_config_path(AGENT.name): agent_config(webhook.url)}, "config")
        project.register(api, AGENT)
        for _, path in (APP, LOOP):
            api.add_public_project(path)
        external_url = f"http://127.0.0.1:{project.http.port}"
        kas = bench_kas(peers, work_dir, api, secrets_, redis.port, external_url=external_url)
        await asyncio.to_thread(kas.start)
        stack.push_async_callback(asyncio.to_thread, kas.stop)
        project.notify(f"127.0.0.1:{kas.api_port}", secrets_.gitlab_secret)
        flux.create(cluster, flux.git_repository(NAMESPACE, "app", f"{external_url}/{APP[1]}.git"))

        agentk = GitLabAgentk(
            peers.agentk,
            work_dir / "agentk",
            kas_address=kas.grpc_url,
            token=AGENT.token,
            kubeconfig=cluster.admin_kubeconfig,
            namespace=AGENTK_LEASES,
            pod_name="agentk-bench-flux",
        )
        agentk.start()
        stack.callback(agentk.stop)

        admin = await asyncio.to_thread(load_kube_access, str(cluster.admin_kubeconfig))
        stack.push_async_callback(admin.close)
        watch = RequestedAtWatch(admin, NAMESPACE)
        watcher = asyncio.create_task(watch.run(), name="requested-at-watch")
        stack.push_async_callback(_cancel, watcher)
        await asyncio.wait_for(watch.wait_ready(), 10)

        os.environ["POD_NAMESPACE"], os.environ["POD_NAME"] = OURS_LEASES, "runtime-bench-flux"
        kube = await asyncio.to_thread(load_kube_access, str(cluster.admin_kubeconfig))
        stack.push_async_callback(kube.close)
        runtime = Runtime(
            kube, RuntimeSettings(observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY)
        )
        await runtime.start()
        stack.push_async_callback(runtime.stop, 2.0)
        spec = WorkerSpec(
            id="bench/flux",
            kas_address=kas.grpc_url,
            token=Secret(AGENT.token),
            identity=ServiceAccountRef(NAMESPACE, AGENT_SA),
        )
        runtime.apply(spec)
        yield Scene(cluster, kas, project, watch, webhook, runtime, spec.id, agentk, work_dir, external_url)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def until(probe: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if probe():
            return True
        await asyncio.sleep(0.002)
    return False


def grew(count: Callable[[], int], before: int) -> Callable[[], bool]:
    return lambda: count() > before


def is_now(read: Callable[[], str | None], wanted: str) -> Callable[[], bool]:
    return lambda: read() == wanted


def set_webhook_path(cluster: LocalCluster) -> bool:
    """Give agentk's Receiver for `app` the status notification-controller would write; False until
    agentk has created it."""
    path = f"/apis/notification.toolkit.fluxcd.io/v1/namespaces/{NAMESPACE}/receivers/gitlab-app"
    status, receiver = cluster.request("GET", path)
    if status != 200:
        return False
    if (receiver.get("status") or {}).get("webhookPath") == WEBHOOK_PATH:
        return True
    patch = {"status": {"webhookPath": WEBHOOK_PATH}}
    headers = {"Content-Type": "application/merge-patch+json"}
    status, answer = cluster.request("PATCH", f"{path}/status", patch, headers=headers)
    if status != 200:
        raise SystemExit(f"cannot set the Receiver's status: {status} {answer}")
    return True


async def both_live(scene: Scene) -> None:
    """Push until a push reaches both agents (each stream open and subscribed at kas), bounded."""
    deadline = time.monotonic() + LIVE_WITHIN_S
    while time.monotonic() < deadline:
        await asyncio.to_thread(set_webhook_path, scene.cluster)
        ours, theirs = len(scene.watch.of("app")), scene.webhook.count()
        await asyncio.to_thread(scene.push, APP)
        got_ours = await until(grew(lambda: len(scene.watch.of("app")), ours), 2.0)
        got_theirs = await until(grew(scene.webhook.count, theirs), 2.0)
        if got_ours and got_theirs:
            await asyncio.sleep(1.0)  # stragglers of earlier warm-up pushes land before measuring
            return
    snapshot = scene.runtime.snapshot(scene.worker_id)
    flux_state = snapshot.flux if snapshot is not None else None
    raise SystemExit(
        f"no push reached both agents within {LIVE_WITHIN_S:.0f}s (ours: {flux_state}; agentk log: "
        f"{scene.agentk.log_path})"
    )


@dataclass(frozen=True)
class Sample:
    """One push, in ms from the push; None: not within WAIT_S."""

    patched: float | None
    """Our agent's requestedAt patch answered by the apiserver (the worker's last trigger time)."""
    seen: float | None
    """The new requestedAt seen on a watch of the GitRepository (what source-controller reacts to)."""
    agentk: float | None
    """agentk's webhook call arrived at the loopback receiver."""


async def one_push(scene: Scene) -> Sample:
    ours, theirs, triggered = len(scene.watch.of("app")), scene.webhook.count(), scene.triggered()
    wall = time.time()
    sent = await asyncio.to_thread(scene.push, APP)
    got_ours = await until(lambda: len(scene.watch.of("app")) > ours, WAIT_S)
    got_theirs = await until(lambda: scene.webhook.count() > theirs, WAIT_S)
    got_patch = await until(lambda: scene.triggered() > triggered, WAIT_S)
    last = scene.last_trigger()
    return Sample(
        patched=(last - wall) * 1000 if got_patch and last is not None else None,
        seen=(scene.watch.of("app")[ours].at - sent) * 1000 if got_ours else None,
        agentk=(scene.webhook.calls[theirs][1] - sent) * 1000 if got_theirs else None,
    )


def _row(label: str, samples: list[float | None]) -> list[object]:
    done = [s for s in samples if s is not None]
    return [
        label,
        f"{len(done)}/{len(samples)}",
        f"{percentile(done, 50):.0f}",
        f"{percentile(done, 99):.0f}",
        f"{max(done, default=float('nan')):.0f}",
    ]


async def measure_pushes(scene: Scene, pushes: int, interval: float) -> None:
    await both_live(scene)
    samples = []
    for _ in range(pushes):
        samples.append(await one_push(scene))
        await asyncio.sleep(interval)
    print(f"{pushes} pushes, {interval} s apart, load average now {os.getloadavg()[0]:.2f}")
    patched = [s.patched for s in samples]
    seen = [s.seen for s in samples]
    agentk = [s.agentk for s in samples]
    header = ["path (through the same GitLab kas)", "arrived", "p50 ms", "p99 ms", "max ms"]
    rows = [
        _row("push -> our agent's requestedAt patch answered", patched),
        _row("push -> new requestedAt on a watch", seen),
        _row("push -> agentk's webhook call", agentk),
    ]
    print(table(header, rows))
    done = {name: [v for v in values if v is not None] for name, values in (("p", patched), ("a", agentk))}
    for q in (50, 99):
        figure = ratio(percentile(done["p"], q), percentile(done["a"], q))
        print(f"p{q} patch answered / agentk's webhook call: x{figure:.2f}")


def start_flux(binaries: FluxBinaries, cluster: LocalCluster, work_dir: Path) -> FluxControllers:
    """Flux's controllers, started (FluxControllers starts a controller that exits at start once more)."""
    controllers = FluxControllers(binaries, cluster, work_dir / "flux")
    controllers.start()
    for why in controllers.restarts:
        print(f"a Flux controller exited at start and was started again: {why.splitlines()[0]}")
    return controllers


async def measure_full_loop(scene: Scene, commits: int) -> None:
    try:
        binaries = find_flux()
    except FluxNotFoundError as err:
        print(f"full loop skipped: {err}")
        return
    cluster = scene.cluster
    repository = f"{LOOP[1]}.git"
    scene.project.http.create_repository(repository)
    copy = WorkingCopy(scene.work_dir / "loop", scene.project.http.url(repository))
    configmap = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bench-flux-loop\n"
        f"  namespace: {NAMESPACE}\ndata:\n  commit: '{{n}}'\n"
    )
    await asyncio.to_thread(copy.commit_and_push, "initial", {"configmap.yaml": configmap.format(n=0)})
    controllers = await asyncio.to_thread(start_flux, binaries, cluster, scene.work_dir)
    try:
        print(f"Flux {controllers.binaries.version}")
        samples = await follow_commits(scene, copy, configmap, commits)
    finally:
        await asyncio.to_thread(controllers.stop)
    print(f"full loop over {commits} commits (git push returned -> kustomize-controller applied it):")
    print(
        table(["path", "applied", "p50 ms", "p99 ms", "max ms"], [_row("push event -> our agent", samples)])
    )


async def follow_commits(scene: Scene, copy: WorkingCopy, configmap: str, commits: int) -> list[float | None]:
    """The loop's GitRepository and Kustomization; per commit, git push returned → applied (ms)."""
    cluster = scene.cluster
    url = f"{scene.external_url}/{LOOP[1]}.git"
    await asyncio.to_thread(
        flux.create,
        cluster,
        flux.git_repository(NAMESPACE, "loop", url, interval="10m"),
        flux.kustomization(NAMESPACE, "loop", "loop", wait=False, interval="10m"),
    )

    def applied() -> str | None:
        return flux.applied_revision(flux.get(cluster, "Kustomization", NAMESPACE, "loop"))

    if not await until(lambda: applied() is not None, 60):
        raise SystemExit("the loop's first commit was not applied within 60 s")
    await loop_live(scene)
    samples: list[float | None] = []
    for n in range(1, commits + 1):
        commit = await asyncio.to_thread(
            copy.commit_and_push, f"commit {n}", {"configmap.yaml": configmap.format(n=n)}
        )
        pushed = time.monotonic()
        await asyncio.to_thread(scene.push, LOOP)
        done = await until(is_now(applied, flux.revision("main", commit)), APPLY_WAIT_S)
        samples.append((time.monotonic() - pushed) * 1000 if done else None)
    return samples


async def loop_live(scene: Scene) -> None:
    """Our agent reopens its stream with the new project after its debounce (10 s): push the loop's
    project until a push patches its GitRepository, bounded."""
    deadline = time.monotonic() + LIVE_WITHIN_S
    while time.monotonic() < deadline:
        before = len(scene.watch.of("loop"))
        await asyncio.to_thread(scene.push, LOOP)
        if await until(grew(lambda: len(scene.watch.of("loop")), before), 2.0):
            await asyncio.sleep(3.0)  # the fetch and apply that push started settle first
            return
    raise SystemExit(f"no push of {LOOP[1]} reached our agent within {LIVE_WITHIN_S:.0f}s")


async def main(pushes: int, interval: float, commits: int) -> None:
    print(machine_description())
    async with (
        work_directory("bench-flux-push-") as work_dir,
        local_cluster() as cluster,
        gitlab_scene(work_dir, cluster) as scene,
    ):
        await measure_pushes(scene, pushes, interval)
        if commits:
            await measure_full_loop(scene, commits)
        snapshot = scene.runtime.snapshot(scene.worker_id)
        if snapshot is not None and snapshot.flux.state is not FluxState.WATCHING:
            print(f"note: our Flux module ended in {snapshot.flux.state}: {snapshot.flux.message}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pushes", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between pushes")
    parser.add_argument("--commits", type=int, default=20, help="full-loop commits (0: skip)")
    args = parser.parse_args()
    asyncio.run(main(args.pushes, args.interval, args.commits))
    sys.exit(0)
