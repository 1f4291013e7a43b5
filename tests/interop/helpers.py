"""What the interop scenarios share: kubectl off the event loop, RBAC set-up, identities to expect."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_runtime.kube import load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from tests.e2e.harness import OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT
from tests.support.k8s_cluster import LocalCluster

READ_CONFIGMAPS = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}
AGENT_SA = "agent"
"""The ServiceAccount our agents act as in the test namespace."""


def kubectl_sync(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def kubectl(kubeconfig: Path, *args: str, limit: float = 60) -> subprocess.CompletedProcess[str]:
    """The real kubectl, in a thread: the tunnel it goes through is served on this event loop."""
    return await asyncio.to_thread(kubectl_sync, kubeconfig, *args, timeout=limit)


def _ok(cluster: LocalCluster, method: str, path: str, body: Any) -> None:
    status, answer = cluster.request(method, path, body)
    assert status in (200, 201, 409), f"{method} {path}: {status} {answer}"


def rbac(kind: str, name: str, namespace: str | None = None, **body: Any) -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, **body}


def prepare_namespace(cluster: LocalCluster, namespace: str, viewers: Sequence[str] = ()) -> str:
    """ServiceAccount `agent` (allowed to impersonate, as the Kubernetes API proxy needs), and a role
    that reads ConfigMaps (not Secrets) for it and for the users in `viewers`. (Not the built-in `view`:
    without kube-controller-manager its aggregated rules stay empty.)
    Returns the name of the cluster-wide grant, for `drop_cluster_grant`."""
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT_SA}}
    _ok(cluster, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", sa)
    grant = f"interop-impersonate-{namespace}"
    rules = [{"apiGroups": ["", "authentication.k8s.io"], "resources": ["*"], "verbs": ["impersonate"]}]
    subject = {"kind": "ServiceAccount", "name": AGENT_SA, "namespace": namespace}
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": grant}
    _ok(
        cluster,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        rbac("ClusterRole", grant, rules=rules),
    )
    _ok(
        cluster,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        rbac("ClusterRoleBinding", grant, roleRef=role_ref, subjects=[subject]),
    )
    users = [{"kind": "User", "name": u, "apiGroup": "rbac.authorization.k8s.io"} for u in viewers]
    _ok(
        cluster,
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles",
        rbac("Role", "read-configmaps", namespace, rules=[READ_CONFIGMAPS]),
    )
    role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"}
    _ok(
        cluster,
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
        rbac("RoleBinding", "read-configmaps", namespace, roleRef=role, subjects=[subject, *users]),
    )
    return grant


def grant_operator_extra(cluster: LocalCluster, key: str) -> str:
    """Extend the operator's role to impersonate user extra `key`, which kas never sends by itself but an
    agent's `impersonate` configuration may name (docs/operations.md); returns the grant's name."""
    grant = f"interop-operator-extra-{key.replace('/', '-').replace('.', '-')}"
    rules = [
        {"apiGroups": ["authentication.k8s.io"], "resources": [f"userextras/{key}"], "verbs": ["impersonate"]}
    ]
    subject = {"kind": "ServiceAccount", "name": OPERATOR_SERVICE_ACCOUNT, "namespace": OPERATOR_NAMESPACE}
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": grant}
    _ok(
        cluster,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        rbac("ClusterRole", grant, rules=rules),
    )
    _ok(
        cluster,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        rbac("ClusterRoleBinding", grant, roleRef=role_ref, subjects=[subject]),
    )
    return grant


def drop_cluster_grant(cluster: LocalCluster, grant: str) -> None:
    cluster.request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{grant}")
    cluster.request("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{grant}")


@dataclass(frozen=True)
class Identity:
    """Whom the apiserver must see for one access mode (`{ns}` = the test namespace)."""

    username: str
    groups: frozenset[str]
    extra: Mapping[str, list[str]] = field(default_factory=dict)
    """Extras that must be present with exactly these values (others may be too)."""

    def user(self, namespace: str) -> str:
        return self.username.format(ns=namespace)


def whoami(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    info: dict[str, Any] = json.loads(result.stdout)["status"]["userInfo"]
    return info


def assert_identity(info: Mapping[str, Any], expected: Identity, namespace: str) -> None:
    assert info["username"] == expected.user(namespace), info
    groups = {g.format(ns=namespace) for g in expected.groups} | {"system:authenticated"}
    assert set(info.get("groups", [])) == groups, info
    extra = info.get("extra", {})
    for key, values in expected.extra.items():
        assert extra.get(key) == values, (key, extra)


@asynccontextmanager
async def started_runtime(kubeconfig: Path) -> AsyncIterator[Runtime]:
    """Our runtime in this process with `kubeconfig`'s credentials (the tests give it the operator's
    ServiceAccount token, as deployed), loopback kas allowed; stopped at the end."""
    kube = await asyncio.to_thread(load_kube_access, str(kubeconfig))
    runtime = Runtime(
        kube, RuntimeSettings(observability_address=None, stop_grace=2.0, policy=PERMISSIVE_POLICY)
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        async with asyncio.timeout(30):
            await runtime.stop(2.0)
        await kube.close()


async def first_success(kubeconfig: Path, within: float, *args: str) -> float:
    """Repeat `kubectl args` (default: GET /version) until it succeeds; seconds it took.

    AssertionError with kubectl's last answer after `within` seconds."""
    argv = args or ("get", "--raw", "/version")
    began = time.monotonic()
    last: subprocess.CompletedProcess[str] | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = await kubectl(kubeconfig, *argv, "--request-timeout=5s", limit=20)
                if last.returncode == 0:
                    return time.monotonic() - began
                await asyncio.sleep(0.1)
    except TimeoutError:
        detail = last.stderr.strip() if last else "no answer"
        raise AssertionError(f"kubectl {' '.join(argv)} failed for {within:.0f}s: {detail}") from None
