"""kubectl through two kas replicas sharing a real Redis: the CI job reaches replica A, the agent's tunnels
are on replica B only, so A finds B through the Redis tunnel index and forwards over the private API."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

from agent_runtime.runtime import Runtime
from tests.integration.system.conftest import (
    Certs,
    agent_spec,
    ci_kubeconfig,
    connected,
    kubectl,
    started_kas,
    wait_for,
)


async def test_kubectl_via_the_replica_without_the_tunnel(
    runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str, redis_url: str
) -> None:
    shared_secret = tmp_path / "private-api.secret"
    shared_secret.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
    replica: dict[str, Any] = {
        "redis_url": redis_url,
        "private_api": True,
        "shared_secret_file": shared_secret,
        "key_prefix": f"e2e-{secrets.token_hex(4)}",
    }
    async with (
        started_kas(tmp_path / "kas-a", certs, **replica) as kas_a,
        started_kas(tmp_path / "kas-b", certs, **replica) as kas_b,
    ):
        spec = agent_spec(kas_b, "grpc", certs)
        runtime.apply(spec)
        await wait_for(runtime, spec.id, connected)
        assert kas_a.registry.counts()[1] == 0, "replica A holds no tunnel of the agent"

        kubeconfig = ci_kubeconfig(kas_a, certs, tmp_path, namespace=namespace)
        result = await kubectl(kubeconfig, "get", "namespace", namespace, "-o", "name")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"namespace/{namespace}"

        created = await kubectl(kubeconfig, "create", "configmap", "via-replica-b", "--from-literal=k=v")
        assert created.returncode == 0, created.stderr
        listed = await kubectl(kubeconfig, "get", "configmaps", "-o", "name")
        assert "configmap/via-replica-b" in listed.stdout.split()
