"""Our runtime against GitLab's own kas, over ws:// and grpc://.

kas is GitLab's binary, "GitLab Rails" our stand-in (tests/support/gitlab_api.py), behind it the real
kube-apiserver. Without Gitaly kas never sends a configuration, so everything here rests on what Rails
answers: agent_info for the tunnel and Register, job/allowed_agents (carrying the agent's ci_access
entry, `access_as` included) for CI jobs, authorize_proxy_user for a personal access token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from agent_runtime.runtime import Runtime
from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, WorkerSnapshot, WorkerSpec
from tests.interop.access_modes import MODES, TEAM_EXTRA, VIEWERS, mode_bearer
from tests.interop.conftest import AGENT
from tests.interop.helpers import (
    AGENT_SA,
    assert_identity,
    drop_cluster_grant,
    first_success,
    grant_operator_extra,
    kubectl,
    prepare_namespace,
    started_runtime,
    whoami,
)
from tests.support.gitlab_api import GitLabApi
from tests.support.gitlab_kas import GitLabKas
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.timeout(240)
T = TypeVar("T")


@dataclass
class Tunnel:
    """Our runtime connected to GitLab's kas with one agent."""

    scheme: str
    kas: GitLabKas
    runtime: Runtime
    spec: WorkerSpec
    namespace: str

    def snapshot(self) -> WorkerSnapshot | None:
        return self.runtime.snapshot(self.spec.id)


async def wait_until_async(what: str, probe: Callable[[], T | None], within: float = 30.0) -> T:
    """Poll `probe` (in a thread: it may block) until it returns something truthy."""
    last = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await asyncio.to_thread(probe)
                if last:
                    return last
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})") from None


@pytest.fixture(scope="module", params=["ws", "grpc"])
async def tunnel(
    request: pytest.FixtureRequest,
    gitlab_kas: GitLabKas,
    gitlab_api: GitLabApi,
    k8s_cluster: LocalCluster,
    operator_credentials: Path,
) -> AsyncIterator[Tunnel]:
    scheme: str = request.param
    namespace = f"interop-{scheme}-{secrets.token_hex(3)}"
    k8s_cluster.create_namespace(namespace)
    grant = prepare_namespace(k8s_cluster, namespace, VIEWERS)
    extra = grant_operator_extra(k8s_cluster, TEAM_EXTRA)
    spec = WorkerSpec(
        id=f"interop/{scheme}",
        kas_address=gitlab_kas.agent_url(scheme),
        token=Secret(AGENT.token),
        identity=ServiceAccountRef(namespace, AGENT_SA),
    )
    try:
        async with started_runtime(operator_credentials) as runtime:
            runtime.apply(spec)
            yield Tunnel(scheme, gitlab_kas, runtime, spec, namespace)
    finally:
        drop_cluster_grant(k8s_cluster, grant)
        drop_cluster_grant(k8s_cluster, extra)
        k8s_cluster.delete_namespace(namespace)


def _registered(snapshot: WorkerSnapshot | None) -> WorkerSnapshot | None:
    ok = snapshot is not None and snapshot.tunnels_idle >= 1 and snapshot.registered
    return snapshot if ok else None


async def test_tunnels_open_and_kas_lists_the_registered_agent(tunnel: Tunnel, gitlab_api: GitLabApi) -> None:
    snap: WorkerSnapshot = await wait_until_async(
        "idle tunnels and Register", lambda: _registered(tunnel.snapshot()), within=30
    )
    connected = await wait_until_async(
        "kas's API listener lists the agent",
        lambda: [a for a in tunnel.kas.connected_agents(AGENT.id) if a.agent_meta.version == "v16.5.0"],
    )
    info = connected[0]
    assert info.agent_id == AGENT.id
    assert info.project_id == AGENT.project_id
    # what Register carried: the cluster's version, as the apiserver reported it to the worker
    assert info.agent_meta.kubernetes_version.git_version == snap.kubernetes_version, (info, snap)
    assert gitlab_api.calls("/agent_info"), "kas asked Rails who the agent is"
    assert gitlab_api.jwt_failures == 0
    if tunnel.scheme == "ws":
        # kas announces itself only in the WebSocket handshake's Server header
        assert snap.kas_version is not None
        assert "v16.5.0" in snap.kas_version, snap


@pytest.mark.parametrize("mode_name", list(MODES))
async def test_kubectl_through_gitlab_kas_runs_as_the_access_mode(
    tunnel: Tunnel, gitlab_api: GitLabApi, tmp_path: Path, mode_name: str
) -> None:
    mode, ns = MODES[mode_name], tunnel.namespace
    kubeconfig = tunnel.kas.kubeconfig(mode_bearer(gitlab_api, mode), tmp_path / "kubeconfig", namespace=ns)
    await first_success(kubeconfig, 30)

    assert_identity(whoami(await kubectl(kubeconfig, "auth", "whoami", "-o", "json")), mode.identity, ns)
    listed = await kubectl(kubeconfig, "get", "configmaps", "-o", "name")
    assert listed.returncode == 0, listed.stderr
    denied = await kubectl(kubeconfig, "get", "secrets")
    assert denied.returncode != 0
    # the apiserver's own Forbidden, passed through kas unchanged
    assert f'User "{mode.identity.user(ns)}" cannot list resource "secrets"' in denied.stderr, denied.stderr
    if mode.pat:
        assert gitlab_api.calls("/authorize_proxy_user")
    else:
        assert gitlab_api.calls("/job/allowed_agents")


async def test_unknown_job_token_is_refused_by_kas(tunnel: Tunnel, tmp_path: Path) -> None:
    kubeconfig = tunnel.kas.kubeconfig(f"ci:{AGENT.id}:not-a-job-token", tmp_path / "kubeconfig")
    refused = await kubectl(kubeconfig, "get", "configmaps")
    assert refused.returncode != 0
    assert "Unauthorized" in refused.stderr or "unauthorized" in refused.stderr, refused.stderr


async def test_a_watch_through_gitlab_kas_sees_an_event(
    tunnel: Tunnel, gitlab_api: GitLabApi, k8s_cluster: LocalCluster, tmp_path: Path
) -> None:
    ns = tunnel.namespace
    kubeconfig = tunnel.kas.kubeconfig(mode_bearer(gitlab_api, MODES["ci_job"]), tmp_path / "kubeconfig", ns)
    await first_success(kubeconfig, 30)
    watch = await asyncio.create_subprocess_exec(
        "kubectl", f"--kubeconfig={kubeconfig}", "get", "configmaps", "--watch-only", "-o", "name",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert watch.stdout is not None
    created: list[str] = []
    line = b""
    try:
        # kubectl opens the watch at some point after it started: create objects until one is seen
        for i in range(30):
            created.append(f"watched-{i}")
            body = {"metadata": {"name": created[-1]}, "data": {"k": "v"}}
            status, answer = await asyncio.to_thread(
                k8s_cluster.request, "POST", f"/api/v1/namespaces/{ns}/configmaps", body
            )
            assert status == 201, answer
            try:
                line = await asyncio.wait_for(watch.stdout.readline(), 1.0)
                break
            except TimeoutError:
                continue
    finally:
        watch.terminate()
        _, err = await watch.communicate()
    assert line.decode().strip() in {f"configmap/{n}" for n in created}, err.decode()


async def test_a_10_mb_list_arrives_intact(
    tunnel: Tunnel, gitlab_api: GitLabApi, k8s_cluster: LocalCluster, tmp_path: Path
) -> None:
    ns = tunnel.namespace
    bearer = mode_bearer(gitlab_api, MODES["ci_job"])
    await first_success(tunnel.kas.kubeconfig(bearer, tmp_path / "kubeconfig", ns), 30)
    chunk = 900 * 1024  # under the 1 MiB object limit
    for i in range(12):
        filler = hashlib.sha256(f"{ns}-{i}".encode()).hexdigest() * (chunk // 64)
        body = {"metadata": {"name": f"big-{i:02d}"}, "data": {"blob": filler}}
        status, answer = await asyncio.to_thread(
            k8s_cluster.request, "POST", f"/api/v1/namespaces/{ns}/configmaps", body, timeout=30
        )
        assert status in (201, 409), answer
    path = f"/api/v1/namespaces/{ns}/configmaps?labelSelector=&limit=0"
    status, direct = await asyncio.to_thread(k8s_cluster.request, "GET", path, timeout=60)
    assert status == 200
    context = ssl.create_default_context(cafile=str(tunnel.kas.secrets.ca))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            tunnel.kas.proxy_url + path,
            headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json"},
            ssl=context,
            timeout=aiohttp.ClientTimeout(total=120),
        ) as response,
    ):
        raw = await response.read()
        assert response.status == 200, raw[:500]
    assert len(raw) >= 10 * 1024 * 1024
    through = json.loads(raw)

    def contents(listing: dict[str, object]) -> dict[str, str]:
        items = listing["items"]
        assert isinstance(items, list)
        return {
            i["metadata"]["name"]: hashlib.sha256(json.dumps(i["data"]).encode()).hexdigest() for i in items
        }

    assert contents(through) == contents(direct)


async def test_kas_reports_usage_to_rails_with_its_jwt(tunnel: Tunnel, gitlab_api: GitLabApi) -> None:
    """After proxied requests kas POSTs usage counters (every 2 s here), signed like every other call."""
    reports = await wait_until_async("a usage_metrics report", gitlab_api.usage_reports, within=20)
    counters = {name for report in reports for name in report.get("counters", {})}
    assert counters, reports
    assert gitlab_api.jwt_failures == 0
