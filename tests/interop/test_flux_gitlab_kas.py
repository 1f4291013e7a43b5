"""The Flux module end to end through GitLab's own kas (PROTOCOL.md §17): a push that "Rails" reports to
kas's API listener (`Notifications/GitPushEvent`) makes our agent patch `reconcile.fluxcd.io/requestedAt`
on exactly the GitRepositories of the pushed project.

The scene: GitLab's kas (configured with `gitlab.external_url`, which it sends to agents as
`gitlab_external_url`), the Rails stand-in (agent_info, verify_project_access), the agent's
configuration project served by the Gitaly stand-in, Flux's GitRepository CRD in the apiserver (no Flux
controller: the annotation is the outcome). Two replicas of our runtime run the same agent as the
operator's ServiceAccount (as deployed), each with its own pod name, so the Lease `agent-<id>-lock`
decides which one acts. Checked:
- a push to project X gives the GitRepositories of X (https and ssh URLs of the agent's GitLab) one new
  requestedAt each, and nothing else changes (another project, X on another GitLab or another port);
- a push to a project the agent may not access (Rails' verify_project_access says 404) changes nothing,
  although the agent asked for it;
- with two replicas each push triggers exactly once (counted on a watch), the standby does nothing, and
  when the leader stops the other takes over and pushes arrive again;
- the same with two operator processes (as deployed, standalone: no kopf peering, so both run the
  GitLabAgent's worker) and a GitLabAgent: only the Lease keeps the second from triggering.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_runtime.backoff import BackoffPolicy
from agent_runtime.flux_settings import FluxTuning
from agent_runtime.kube import load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import FluxState, FluxStatus, ServiceAccountRef, WorkerSpec
from kas.push_client import send_git_push_event_sync
from tests.e2e.harness import OPERATOR_NAMESPACE, Kube, OperatorProcess, gitlab_agent, phase, secret, wait_for
from tests.interop.conftest import KasFactory
from tests.interop.flux_gitlab import (
    FluxCrdNotFoundError,
    RequestedAtWatch,
    allow_gitrepository_patch,
    flux_crd,
    install_crd,
)
from tests.support import flux
from tests.support.gitlab_api import Agent, GitLabApi
from tests.support.gitlab_kas import GitLabKas
from tests.support.gitlab_project import GitLabProject, agent_config_path
from tests.support.k8s_cluster import LocalCluster
from tests.support.require import FLUX, missing

pytestmark = pytest.mark.timeout(180)

AGENT = Agent(
    id=1501,
    name="flux-agent",
    token="glagent-flux-interop-" + "f" * 40,
    project_id=1501,
    project_path="interop/flux-agent",
)
"""An agent of its own: its configuration project is served by the Gitaly stand-in (kas sends no
configuration, hence no gitlab_external_url, without one)."""
APP = (1502, "interop/flux-app")
"""Public: verify_project_access allows it."""
OTHER = (1503, "interop/flux-other")
"""Public too, never pushed."""
PRIVATE = (1504, "interop/flux-private")
"""Neither public nor the agent's configuration project: kas may not forward its pushes."""
AGENT_SA = "flux-agent"
PUSHES = 5
LIVE_WITHIN_S = 30.0
"""Until a push gets through after a stream opened: kas subscribes the stream to push events a moment
after the stream opened, and a push before that is lost (delivery is at most once, §17.1)."""
ARRIVES_WITHIN_S = 10.0
"""Bound on one push → requestedAt (the acceptance figure, 1 s, is bench/flux_push.py's; the machine is
shared). A push needs no poll on either side, so any arrival in this bound came from the push event."""
TUNING = FluxTuning(
    debounce_s=0.5,
    stream_backoff=BackoffPolicy(initial=0.2, cap=1.0, factor=2.0, jitter=0.0, reset_after=10.0),
    lease_duration_s=3.0,
    renew_deadline_s=2.0,
    retry_period_s=0.5,
)
"""Upstream's shapes, shortened so that a takeover takes seconds."""


@dataclass
class Scene:
    cluster: LocalCluster
    kas: GitLabKas
    api: GitLabApi
    namespace: str
    external_url: str
    watch: RequestedAtWatch

    def push(self, project: tuple[int, str]) -> float:
        """GitPushEvent for `project` to kas's API listener, as Rails sends it; when it was sent."""
        sent = time.monotonic()
        send_git_push_event_sync(f"127.0.0.1:{self.kas.api_port}", self.kas.secrets.gitlab_secret, *project)
        return sent


@pytest.fixture
def config_project(gitlab_api: GitLabApi, tmp_path: Path) -> Iterator[GitLabProject]:
    """The agent's configuration project; its HTTP server's address plays GitLab's external URL."""
    with GitLabProject(tmp_path / "config", project_id=AGENT.project_id, full_path=AGENT.project_path) as p:
        p.push({agent_config_path(AGENT.name): "observability:\n  logging:\n    level: info\n"}, "config")
        p.register(gitlab_api, AGENT)
        for _, public in (APP, OTHER):
            gitlab_api.add_public_project(public)
        yield p


@pytest.fixture
def gitrepositories(k8s_cluster: LocalCluster) -> Iterator[str]:
    """Flux's GitRepository CRD (Established) and a namespace the agent may patch GitRepositories in."""
    try:
        crd = flux_crd()
    except FluxCrdNotFoundError as err:
        missing(str(err), FLUX)
    install_crd(k8s_cluster, crd)
    namespace = f"interop-flux-{secrets.token_hex(3)}"
    k8s_cluster.create_namespace(namespace)
    allow_gitrepository_patch(k8s_cluster, namespace, AGENT_SA)
    try:
        yield namespace
    finally:
        k8s_cluster.delete_namespace(namespace)


@pytest.fixture
async def scene(
    k8s_cluster: LocalCluster,
    gitlab_api: GitLabApi,
    start_gitlab_kas: KasFactory,
    config_project: GitLabProject,
    gitrepositories: str,
) -> AsyncIterator[Scene]:
    external_url = f"http://127.0.0.1:{config_project.http.port}"
    kas = await asyncio.to_thread(start_gitlab_kas, external_url=external_url)
    config_project.notify(f"127.0.0.1:{kas.api_port}", kas.secrets.gitlab_secret)
    namespace = gitrepositories
    ssh = "ssh://git@127.0.0.1:2222"
    flux.create(
        k8s_cluster,
        flux.git_repository(namespace, "app", f"{external_url}/{APP[1]}.git"),
        flux.git_repository(namespace, "app-ssh", f"{ssh}/{APP[1]}.git"),
        flux.git_repository(namespace, "other", f"{external_url}/{OTHER[1]}.git"),
        flux.git_repository(namespace, "private", f"{external_url}/{PRIVATE[1]}.git"),
        flux.git_repository(namespace, "app-elsewhere", f"https://gitlab.example.com/{APP[1]}.git"),
        flux.git_repository(namespace, "app-other-port", f"http://127.0.0.1:1/{APP[1]}.git"),
    )
    admin = await asyncio.to_thread(load_kube_access, str(k8s_cluster.admin_kubeconfig))
    watch = RequestedAtWatch(admin, namespace)
    # Not in a TaskGroup: a fixture's set-up and tear-down may run in different tasks.
    watcher = asyncio.create_task(watch.run(), name="requested-at-watch")
    try:
        await asyncio.wait_for(watch.wait_ready(), 10)
        yield Scene(k8s_cluster, kas, gitlab_api, namespace, external_url, watch)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await admin.close()


@asynccontextmanager
async def replica(
    credentials: Path, pod_name: str, namespace: str, kas: GitLabKas, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Runtime, str]]:
    """One replica of our runtime running the agent, with the operator's credentials and its own pod
    name (the Lease holder identity). A worker reads POD_NAME when it is built, so the name is set until
    this replica's Flux module runs; replicas start one after the other."""
    monkeypatch.setenv("POD_NAMESPACE", OPERATOR_NAMESPACE)
    monkeypatch.setenv("POD_NAME", pod_name)
    kube = await asyncio.to_thread(load_kube_access, str(credentials))
    runtime = Runtime(
        kube,
        RuntimeSettings(observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY, flux=TUNING),
    )
    spec = WorkerSpec(
        id=f"{namespace}/flux-agent",
        kas_address=kas.grpc_url,
        token=Secret(AGENT.token),
        identity=ServiceAccountRef(namespace, AGENT_SA),
    )
    await runtime.start()
    try:
        runtime.apply(spec)
        await until(
            f"{pod_name}'s Flux module to run",
            lambda: _flux(runtime, spec.id).state in (FluxState.WATCHING, FluxState.STANDBY),
            within=60,
            detail=lambda: _flux(runtime, spec.id),
        )
        yield runtime, spec.id
    finally:
        async with asyncio.timeout(30):
            await runtime.stop(2.0)
        await kube.close()


def _flux(runtime: Runtime, worker_id: str) -> FluxStatus:
    snapshot = runtime.snapshot(worker_id)
    return snapshot.flux if snapshot is not None else FluxStatus()


async def until(
    what: str, probe: Callable[[], object], within: float, detail: Callable[[], object] = lambda: None
) -> None:
    try:
        async with asyncio.timeout(within):
            while not probe():  # noqa: ASYNC110 - polling observed state is the point
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {within:.0f}s: {what} ({detail()!r})") from None


def _moved_on(watch: RequestedAtWatch, before: dict[str, int], names: tuple[str, ...]) -> Callable[[], bool]:
    """True once each of `names` has more requestedAt changes than in `before`."""
    return lambda: all(watch.counts().get(n, 0) > before.get(n, 0) for n in names)


APP_REPOSITORIES = ("app", "app-ssh")


async def first_push_through(scene: Scene) -> None:
    """Push APP until one gets through (the stream is live at kas), bounded; then let stragglers land."""
    deadline = time.monotonic() + LIVE_WITHIN_S
    while time.monotonic() < deadline:
        arrived = _moved_on(scene.watch, scene.watch.counts(), APP_REPOSITORIES)
        await asyncio.to_thread(scene.push, APP)
        with contextlib.suppress(AssertionError):
            await until("a warm-up push", arrived, within=2.0)
            await asyncio.sleep(1.0)  # an earlier warm-up push that is late must not count later
            return
    raise AssertionError(f"no push reached the GitRepositories within {LIVE_WITHIN_S:.0f}s")


async def pushes_arrive_once_each(scene: Scene, count: int) -> list[float]:
    """`count` pushes of APP, one after the other, each awaited until both of APP's GitRepositories
    have a new requestedAt. Returns push → change latencies (seconds) of `app`."""
    latencies = []
    for _ in range(count):
        arrived = _moved_on(scene.watch, scene.watch.counts(), APP_REPOSITORIES)
        sent = await asyncio.to_thread(scene.push, APP)
        await until(
            "APP's GitRepositories to get a new requestedAt",
            arrived,
            within=ARRIVES_WITHIN_S,
            detail=scene.watch.counts,
        )
        latencies.append(scene.watch.of("app")[-1].at - sent)
    return latencies


async def test_a_push_through_gitlab_kas_reconciles_exactly_its_project_once(
    scene: Scene, operator_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replica(operator_credentials, "replica-a", scene.namespace, scene.kas, monkeypatch) as a:
        leader, worker_id = a
        assert _flux(leader, worker_id).state is FluxState.WATCHING
        async with replica(operator_credentials, "replica-b", scene.namespace, scene.kas, monkeypatch) as b:
            standby = b[0]
            assert _flux(standby, worker_id).state is FluxState.STANDBY
            assert "replica-a" in _flux(standby, worker_id).message
            # The leader asked for this GitLab's projects in scope (the external URL came from kas).
            await until(
                "4 GitRepositories in scope", lambda: _flux(leader, worker_id).watched == 4, within=10
            )
            assert _flux(leader, worker_id).projects == 3

            await first_push_through(scene)
            baseline = scene.watch.counts()
            triggered = _flux(leader, worker_id).triggered

            # The private project first: kas asks Rails, is refused, and drops it; pushes are handled in
            # order per stream, so once the APP pushes after it have arrived, its verdict was taken.
            await asyncio.to_thread(scene.push, PRIVATE)
            latencies = await pushes_arrive_once_each(scene, PUSHES)
            await asyncio.sleep(1.0)  # a second patch of any push would show up by now

            added = {n: c - baseline.get(n, 0) for n, c in scene.watch.counts().items()}
            assert {n: c for n, c in added.items() if c} == {"app": PUSHES, "app-ssh": PUSHES}
            assert scene.watch.of("private") == []
            for name in ("other", "app-elsewhere", "app-other-port"):
                assert scene.watch.of(name) == [], f"{name} was patched"
            denied = [c for c in scene.api.access_checks() if c.project == PRIVATE[1]]
            assert denied, "kas never asked Rails about the private project"
            assert not any(c.allowed for c in denied)
            assert {c.agent_id for c in denied} == {AGENT.id}
            assert _flux(leader, worker_id).triggered == triggered + 2 * PUSHES
            assert _flux(standby, worker_id).triggered == 0
            print(
                f"push -> requestedAt through GitLab's kas over {PUSHES} pushes: "
                f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
            )

            # The leader stops (its Lease released): the other replica takes over.
            await stop_early(leader)
            await until(
                "replica-b to lead",
                lambda: _flux(standby, worker_id).state is FluxState.WATCHING,
                within=15,
                detail=lambda: _flux(standby, worker_id),
            )
            await first_push_through(scene)
            baseline = scene.watch.counts()
            await pushes_arrive_once_each(scene, 2)
            await asyncio.sleep(1.0)
            added = {n: c - baseline.get(n, 0) for n, c in scene.watch.counts().items()}
            assert {n: c for n, c in added.items() if c} == {"app": 2, "app-ssh": 2}


async def stop_early(runtime: Runtime) -> None:
    """Stop a replica early (its context manager then finds it stopped)."""
    async with asyncio.timeout(30):
        await runtime.stop(2.0)


async def test_two_operator_replicas_trigger_each_push_once(
    scene: Scene, kube: Kube, operator_credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = scene.namespace
    # Both replicas watch the namespace; their pod names differ (OperatorProcess), their Leases live in
    # the operator's namespace, as the Deployment's downward API sets it.
    monkeypatch.setenv("POD_NAMESPACE", OPERATOR_NAMESPACE)
    replicas = [OperatorProcess(tmp_path / name, operator_credentials, namespace) for name in ("a", "b")]
    kube.apply(
        secret(namespace, "token", AGENT.token),
        gitlab_agent(namespace, "flux", scene.kas.grpc_url, "token", serviceAccountName=AGENT_SA),
    )
    try:
        for replica_ in replicas:
            replica_.work_dir.mkdir()
            await asyncio.to_thread(replica_.start)
        await asyncio.to_thread(
            wait_for, "Connected", lambda: phase(kube.gla(namespace, "flux")) == "Connected", 60
        )
        holder = await asyncio.to_thread(_lease_holder, scene.cluster, f"agent-{AGENT.id}-lock")
        await first_push_through(scene)
        baseline = scene.watch.counts()
        await pushes_arrive_once_each(scene, PUSHES)
        await asyncio.sleep(1.0)  # a second patch of any push would show up by now
        added = {n: c - baseline.get(n, 0) for n, c in scene.watch.counts().items()}
        assert {n: c for n, c in added.items() if c} == {"app": PUSHES, "app-ssh": PUSHES}
        names = {f"operator-{r.work_dir.name}-1" for r in replicas}
        assert holder in names, (holder, names)
    except AssertionError:
        for replica_ in replicas:
            print(f"--- operator {replica_.work_dir.name} ---\n{replica_.log()[-3000:]}")
        raise
    finally:
        codes = [await asyncio.to_thread(r.stop) for r in replicas if r.proc is not None]
    assert codes == [0, 0], codes


def _lease_holder(cluster: LocalCluster, name: str) -> str:
    """The holder of the Lease `name` in the operator's namespace, once someone holds it."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/{name}"

    def holder() -> str | None:
        status, lease = cluster.request("GET", path)
        return (lease["spec"].get("holderIdentity") or None) if status == 200 else None

    return str(wait_for(f"the Lease {name} held", holder, timeout=30))
