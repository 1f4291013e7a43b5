"""GitLab's own agentk against our reference kas (`python -m kas`), over ws:// and grpc://.

agentk registers (our kas lists it with agentk's version and pod), receives its configuration from our kas
(it asks for debug logging, which agentk only does once the configuration arrived), and serves a CI job's
kubectl through our kas's Kubernetes API proxy as its own ServiceAccount, RBAC enforced.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import JOB_PROJECT, KasAgent, KasProcess, Kube, service_account_kubeconfig, wait_for
from tests.interop.helpers import READ_CONFIGMAPS, kubectl_sync, rbac, whoami
from tests.support.gitlab_kas import GitLabAgentk, GitLabPeers
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)
AGENTK = KasAgent(3900, "gitlab-agentk", ("glagent-agentk-interop-" + "k" * 40,))
CONFIG = {
    "ci_access": {"projects": [{"id": JOB_PROJECT}]},
    # agentk starts at `info`; debug lines in its log show it applied the configuration our kas sent
    "observability": {"logging": {"level": "debug"}},
}


@pytest.fixture(scope="module")
def reference_kas(
    gitlab_peers: GitLabPeers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KasProcess]:
    server = KasProcess(tmp_path_factory.mktemp("reference-kas"), [AGENTK], {AGENTK.name: CONFIG})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agentk_namespace(k8s_cluster: LocalCluster) -> Iterator[str]:
    """A namespace with ServiceAccount `agentk`: its Lease and Events, and reading ConfigMaps."""
    namespace = f"interop-agentk-{secrets.token_hex(3)}"
    k8s_cluster.create_namespace(namespace)
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agentk"}}
    subject = [{"kind": "ServiceAccount", "name": "agentk", "namespace": namespace}]
    own = rbac(
        "Role",
        "agentk",
        namespace,
        rules=[
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["*"]},
            READ_CONFIGMAPS,
        ],
    )
    bindings = [
        rbac("RoleBinding", "agentk", namespace, subjects=subject, roleRef=_role_ref("Role", "agentk")),
    ]
    base = f"/api/v1/namespaces/{namespace}"
    rbac_base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    for path, body in [
        (f"{base}/serviceaccounts", sa),
        (f"{rbac_base}/roles", own),
        *[(f"{rbac_base}/rolebindings", b) for b in bindings],
    ]:
        status, answer = k8s_cluster.request("POST", path, body)
        assert status == 201, answer
    try:
        yield namespace
    finally:
        k8s_cluster.delete_namespace(namespace)


def _role_ref(kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}


def _connected(kas: KasProcess, agent_id: int) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{kas.observability_port}/api/connected_agents?agent_id={agent_id}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return list(json.loads(response.read())["agents"])


@pytest.mark.parametrize("scheme", ["ws", "grpc"])
def test_gitlab_agentk_registers_gets_config_and_serves_ci_through_our_kas(
    gitlab_peers: GitLabPeers,
    reference_kas: KasProcess,
    k8s_cluster: LocalCluster,
    admin_kubeconfig: Path,
    agentk_namespace: str,
    tmp_path: Path,
    scheme: str,
) -> None:
    ns, pod = agentk_namespace, f"agentk-{scheme}"
    kube = Kube(k8s_cluster, admin_kubeconfig)
    identity = service_account_kubeconfig(kube, tmp_path / "agentk.kubeconfig", ns, "agentk", duration="1h")
    address = reference_kas.ws_url if scheme == "ws" else reference_kas.agent_url
    agentk = GitLabAgentk(
        gitlab_peers.agentk,
        tmp_path / "agentk",
        kas_address=address,
        token=AGENTK.token,
        kubeconfig=identity,
        namespace=ns,
        pod_name=pod,
    )
    agentk.start()
    try:
        registered = wait_for(
            "agentk's Register in our kas",
            lambda: [
                a
                for a in _connected(reference_kas, AGENTK.id)
                if a["agent_meta"]["pod_name"] == f"agentk-{scheme}"
            ],
            timeout=30,
            interval=0.3,
        )
        meta = registered[0]["agent_meta"]
        assert meta["version"] == gitlab_peers.version
        assert meta["pod_namespace"] == ns

        kubeconfig = reference_kas.ci_kubeconfig(AGENTK, tmp_path / "ci.kubeconfig")

        def whoami_ok() -> str | None:
            done = kubectl_sync(kubeconfig, "auth", "whoami", "-o", "json", "--request-timeout=5s")
            return done.stdout if done.returncode == 0 else None

        wait_for("CI kubectl through agentk", whoami_ok, timeout=30, interval=0.3)
        info = whoami(kubectl_sync(kubeconfig, "auth", "whoami", "-o", "json"))
        assert info["username"] == f"system:serviceaccount:{ns}:agentk"
        listed = kubectl_sync(kubeconfig, "-n", ns, "get", "configmaps", "-o", "name")
        assert listed.returncode == 0, listed.stderr
        denied = kubectl_sync(kubeconfig, "-n", ns, "get", "secrets")
        assert denied.returncode != 0
        assert f'User "system:serviceaccount:{ns}:agentk" cannot list resource "secrets"' in denied.stderr

        # agentk logs at debug only once a configuration says so, and learns its agent id from it
        wait_for(
            "agentk applying our kas's configuration (debug logging)",
            lambda: '"level":"debug"' in agentk.log(),
            timeout=30,
        )
        assert f'"agent_id":{AGENTK.id}' in agentk.log()
        assert agentk.alive(), agentk.log()[-3000:]
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- agentk log ---\n{agentk.log()[-4000:]}") from None
    finally:
        agentk.stop()
