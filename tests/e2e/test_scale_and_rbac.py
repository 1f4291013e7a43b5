"""Many agents in one process; missing operator RBAC at start-up; each agent limited to its own SA.

(Every e2e test runs the operator under manifests/' RBAC: see conftest.py.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    KasProcess,
    Kube,
    OperatorProcess,
    gitlab_agent,
    phase,
    run_once,
    secret,
    wait_for,
)
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.timeout(300)

FLEET = 50


def _all_connected(kube: Kube, namespace: str) -> list[dict[str, Any]] | None:
    status, body = kube.request("GET", f"/apis/agentk.dev/v1alpha1/namespaces/{namespace}/gitlabagents")
    assert status == 200, body
    items = body["items"]
    done = [i for i in items if phase(i) == "Connected" and i["status"].get("agentId")]
    return items if len(done) == FLEET else None


def test_fifty_agents_in_one_process_all_serve_requests(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns = operator.namespace
    objects: list[dict[str, Any]] = []
    for i, agent in enumerate(kas.agents[10 : 10 + FLEET]):
        address = kas.agent_url if i % 2 else kas.ws_url  # both transports
        objects += [
            secret(ns, f"token-{i}", agent.token),
            gitlab_agent(ns, f"fleet-{i}", address, f"token-{i}"),
        ]
    kube.apply(*objects)

    items = wait_for(f"{FLEET} agents Connected", lambda: _all_connected(kube, ns), timeout=120, interval=1)

    ids = {i["status"]["agentId"] for i in items}
    assert ids == {a.id for a in kas.agents[10 : 10 + FLEET]}
    for agent in kas.agents[10 : 10 + FLEET]:
        code, body = kas.proxy_get(agent.id, "/version")
        assert code == 200, (agent.id, body)
    wait_for("readiness", lambda: operator.http_status("/readiness") == 200, timeout=20)


def test_missing_rbac_is_a_clear_start_up_error(
    k8s_cluster: LocalCluster, kube: Kube, tmp_path: Path
) -> None:
    code, output = run_once(
        [
            sys.executable,
            "-m",
            "agent_operator",
            f"--kubeconfig={k8s_cluster.user_kubeconfig}",
            "--all-namespaces",
        ],
        tmp_path / "operator.log",
    )

    assert code == 3, output
    assert "missing RBAC" in output
    assert "cannot list gitlabagents.agentk.dev cluster-wide" in output
    assert "cannot patch gitlabagents/status.agentk.dev" in output


def test_each_agent_has_only_its_service_accounts_rights(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns, agent = operator.namespace, kas.agents[0]
    kube.apply(secret(ns, "token", agent.token), gitlab_agent(ns, "scoped", kas.agent_url, "token"))
    wait_for("Connected", lambda: (b := kube.gla(ns, "scoped")) and phase(b) == "Connected" and b, timeout=20)
    path = f"/api/v1/namespaces/{ns}/configmaps"

    code, body = kas.proxy_get(agent.id, path)
    assert code == 403, body
    assert f"system:serviceaccount:{ns}:agent" in str(body)

    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "read-configmaps", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "agent-reads-configmaps", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
        },
    )

    def allowed() -> Any:
        code, body = kas.proxy_get(agent.id, path)
        return body if code == 200 else None

    body = wait_for("200 with the RoleBinding", allowed)
    assert body["kind"] == "ConfigMapList"
