"""The whole tunnel, end to end: kubectl (CI kubeconfig) → reference kas proxy → router → reverse tunnel
→ agent_runtime Worker → the real kube-apiserver. Everything real, on loopback."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import Phase, ServiceAccountRef, TlsSettings, WorkerSnapshot, WorkerSpec
from kas.k8s_proxy.certs import self_signed_serving_certificate
from kas.kubeconfig import print_kubeconfig
from kas.server import KasServer
from kas.testing import TestAgent, kas_config, write_agent_config, write_agents_file

AGENT = TestAgent(id=7001, name="e2e-agent", project_path="group/e2e", token="e2e-agent-token-" + "e" * 40)
JOB_TOKEN = "ci-job-token-" + "j" * 30
CI_JOB = {
    "token": JOB_TOKEN,
    "job_id": 1074,
    "pipeline_id": 88,
    "project": {"id": 17, "path": "group/e2e"},
    "user": {"id": 5, "username": "dev"},
}
AGENT_CONFIG = "ci_access:\n  projects:\n    - id: group/e2e\n"


@dataclass
class Certs:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    ca, cert, key = self_signed_serving_certificate().write(tmp_path_factory.mktemp("certs"))
    return Certs(ca, cert, key)


@asynccontextmanager
async def started_kas(
    work: Path,
    certs: Certs,
    *,
    agent_tls: bool = False,
    overrides: dict[str, Any] | None = None,
    agent_config: str = AGENT_CONFIG,
    **options: Any,
) -> AsyncIterator[KasServer]:
    """A reference kas with the CI proxy on (HTTPS) and our agent's config and CI job registered.

    `overrides` are merged into kas.yaml (one level deep), `agent_config` is the agent's config.yaml
    text, and `options` go to kas.testing.kas_config (e.g. redis_url, private_api).
    """
    proxy_listen = {"address": "127.0.0.1:0", "certificate_file": str(certs.cert), "key_file": str(certs.key)}
    merged: dict[str, Any] = {"agent": {"kubernetes_api": {"listen": proxy_listen}}}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    config = kas_config(
        work, [AGENT], tls=(certs.cert, certs.key) if agent_tls else None, overrides=merged, **options
    )
    write_agents_file(work / "agents.yaml", [AGENT], extra={"ci_jobs": [CI_JOB]})
    assert config.agent_configuration.directory is not None
    write_agent_config(config.agent_configuration.directory, AGENT, agent_config)
    server = KasServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


@pytest.fixture
async def kube(admin_kubeconfig: Path) -> AsyncIterator[KubeAccess]:
    access = await asyncio.to_thread(load_kube_access, str(admin_kubeconfig))
    try:
        yield access
    finally:
        await access.close()


@pytest.fixture
async def runtime(kube: KubeAccess) -> AsyncIterator[Runtime]:
    rt = Runtime(kube, RuntimeSettings(observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY))
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(30):
            await rt.stop(2.0)


def agent_spec(
    kas: KasServer, scheme: str, certs: Certs, *, identity: ServiceAccountRef | None = None, **extra: Any
) -> WorkerSpec:
    tls = TlsSettings(ca_pem=certs.ca.read_bytes()) if scheme in ("grpcs", "wss") else TlsSettings()
    return WorkerSpec(
        id=f"e2e/{scheme}",
        kas_address=kas.agent_url(scheme),
        token=Secret(AGENT.token),
        tls=tls,
        identity=identity,
        **extra,
    )


async def wait_for(
    runtime: Runtime, worker_id: str, check: Callable[[WorkerSnapshot], bool], within: float = 20
) -> WorkerSnapshot:
    """Poll the worker's snapshot until `check` holds; fail with the last snapshot otherwise."""
    last: WorkerSnapshot | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = runtime.snapshot(worker_id)
                if last is not None and check(last):
                    return last
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"worker {worker_id} did not reach the expected state; last snapshot: {last}")


def connected(snapshot: WorkerSnapshot) -> bool:
    return snapshot.phase is Phase.CONNECTED and snapshot.tunnels_idle >= 1


def ci_kubeconfig(kas: KasServer, certs: Certs, directory: Path, namespace: str = "") -> Path:
    """A kubeconfig like the one GitLab hands a CI job, pointing at this kas's proxy."""
    assert kas.proxy_url is not None
    token_file = directory / "job-token"
    token_file.write_text(JOB_TOKEN)
    path = directory / "ci-kubeconfig.yaml"
    with path.open("w") as out:
        print_kubeconfig(
            agent_id=AGENT.id,
            agent_name=AGENT.name,
            config_project_path=AGENT.project_path,
            server=kas.proxy_url,
            token_file=token_file,
            ca_file=certs.ca,
            namespace=namespace,
            out=out,
        )
    return path


async def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl off the event loop (the tunnel is served on this loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        ["kubectl", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def ci_headers() -> dict[str, str]:
    """The Authorization header of our CI job towards kas's proxy."""
    return {"Authorization": f"Bearer ci:{AGENT.id}:{JOB_TOKEN}"}


def proxy_ssl(certs: Certs) -> ssl.SSLContext:
    """Client TLS for kas's proxy listener (self-signed CA)."""
    return ssl.create_default_context(cafile=str(certs.ca))
