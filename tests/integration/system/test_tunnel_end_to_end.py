"""Issue acceptance, end to end: real kubectl through the reference kas and a runtime Worker's tunnel."""

from __future__ import annotations

import asyncio
import json
import ssl
import textwrap
from pathlib import Path

import aiohttp
import pytest

from agent_runtime.constants import TUNNEL_SCALE_UP_STEP
from agent_runtime.runtime import Runtime
from agent_runtime.spec import ServiceAccountRef
from tests.integration.system.conftest import (
    JOB_TOKEN,
    Certs,
    agent_spec,
    ci_kubeconfig,
    connected,
    kubectl,
    started_kas,
    wait_for,
)


@pytest.mark.parametrize("scheme", ["grpc", "grpcs", "ws", "wss"])
async def test_every_scheme_connects_and_serves_kubectl(
    scheme: str, runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str
) -> None:
    async with started_kas(tmp_path / "kas", certs, agent_tls=scheme in ("grpcs", "wss")) as kas:
        spec = agent_spec(kas, scheme, certs)
        runtime.apply(spec)
        snapshot = await wait_for(runtime, spec.id, connected)
        assert snapshot.kas_version, "the worker learns kas's version"
        await wait_for(runtime, spec.id, lambda s: s.registered and s.agent_id == 7001)

        kubeconfig = ci_kubeconfig(kas, certs, tmp_path)
        result = await kubectl(kubeconfig, "get", "namespace", namespace, "-o", "name")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"namespace/{namespace}"
        await runtime.remove(spec.id)


async def test_kubectl_get_list_watch_apply_delete(
    runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str
) -> None:
    async with started_kas(tmp_path / "kas", certs) as kas:
        spec = agent_spec(kas, "grpc", certs)
        runtime.apply(spec)
        await wait_for(runtime, spec.id, connected)
        kubeconfig = ci_kubeconfig(kas, certs, tmp_path, namespace=namespace)

        manifest = tmp_path / "cm.yaml"
        manifest.write_text(
            textwrap.dedent(f"""\
                apiVersion: v1
                kind: ConfigMap
                metadata: {{name: through-the-tunnel, namespace: {namespace}}}
                data: {{greeting: hello}}
            """)
        )
        applied = await kubectl(kubeconfig, "apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        assert "configmap/through-the-tunnel created" in applied.stdout

        got = await kubectl(kubeconfig, "get", "configmap", "through-the-tunnel", "-o", "json")
        assert json.loads(got.stdout)["data"] == {"greeting": "hello"}
        listed = await kubectl(kubeconfig, "get", "configmaps", "-o", "name")
        assert "configmap/through-the-tunnel" in listed.stdout.split()

        # A watch stays open through the tunnel and streams the change made while it runs.
        watch = await asyncio.create_subprocess_exec(
            "kubectl", "--kubeconfig", str(kubeconfig), "get", "configmap", "through-the-tunnel",
            "--watch", "-o", "jsonpath={.data.greeting}{\"\\n\"}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert watch.stdout is not None
            async with asyncio.timeout(20):
                assert (await watch.stdout.readline()).strip() == b"hello"
                patched = await kubectl(
                    kubeconfig,
                    "patch",
                    "configmap",
                    "through-the-tunnel",
                    "-p",
                    '{"data":{"greeting":"bye"}}',
                )
                assert patched.returncode == 0, patched.stderr
                assert (await watch.stdout.readline()).strip() == b"bye"
        finally:
            watch.kill()
            await watch.wait()

        deleted = await kubectl(kubeconfig, "delete", "configmap", "through-the-tunnel")
        assert deleted.returncode == 0, deleted.stderr
        gone = await kubectl(kubeconfig, "get", "configmap", "through-the-tunnel")
        assert gone.returncode != 0
        assert "NotFound" in gone.stderr


async def test_hundred_concurrent_requests_through_one_agent(
    runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str
) -> None:
    async with started_kas(tmp_path / "kas", certs) as kas:
        spec = agent_spec(kas, "grpc", certs)
        runtime.apply(spec)
        await wait_for(runtime, spec.id, connected)
        assert kas.proxy_url is not None
        url = f"{kas.proxy_url.rstrip('/')}/api/v1/namespaces/{namespace}"
        headers = {"Authorization": f"Bearer ci:7001:{JOB_TOKEN}"}
        ssl_context = ssl.create_default_context(cafile=str(certs.ca))
        async with aiohttp.ClientSession(headers=headers) as session:

            async def one() -> int:
                async with session.get(url, ssl=ssl_context) as response:
                    await response.read()
                    return response.status

            async with asyncio.timeout(60):
                statuses = await asyncio.gather(*(one() for _ in range(100)))
        assert statuses == [200] * 100
        # The pool grew beyond its minimum to serve the burst (PROTOCOL.md §8: +10 when idle runs short);
        # the extras stay idle for TUNNEL_MAX_IDLE_S (60 s), so kas still holds them now.
        grown = spec.tunnels.min_idle + TUNNEL_SCALE_UP_STEP
        async with asyncio.timeout(10):
            while kas.registry.counts()[1] < grown:  # noqa: ASYNC110 - kas's registry has no event to await
                await asyncio.sleep(0.05)


async def test_service_account_identity_limits_the_agent(
    runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str, admin_kubeconfig: Path
) -> None:
    """Requests run as the agent's ServiceAccount: no rights → 403 from the apiserver; a RoleBinding → 200."""
    async with started_kas(tmp_path / "kas", certs) as kas:
        identity = ServiceAccountRef(namespace, "limited-agent")
        spec = agent_spec(kas, "grpc", certs, identity=identity)
        runtime.apply(spec)
        await wait_for(runtime, spec.id, connected)
        kubeconfig = ci_kubeconfig(kas, certs, tmp_path, namespace=namespace)

        denied = await kubectl(kubeconfig, "get", "secrets")
        assert denied.returncode != 0
        assert "forbidden" in denied.stderr.lower()
        assert f"system:serviceaccount:{namespace}:limited-agent" in denied.stderr

        for grant in (
            ["create", "role", "read-secrets", "--verb=get,list", "--resource=secrets"],
            ["create", "rolebinding", "agent-reads-secrets", "--role=read-secrets",
             f"--serviceaccount={namespace}:limited-agent"],
        ):  # fmt: skip
            result = await kubectl(admin_kubeconfig, "-n", namespace, *grant)
            assert result.returncode == 0, result.stderr
        allowed = await kubectl(kubeconfig, "get", "secrets", "-o", "name")
        assert allowed.returncode == 0, allowed.stderr
