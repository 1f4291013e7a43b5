"""Two operator replicas with kopf peering: the highest priority runs the agents, the other takes over."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    OPERATOR_NAMESPACE,
    OPERATOR_SERVICE_ACCOUNT,
    KasProcess,
    Kube,
    OperatorProcess,
    gitlab_agent,
    metric_value,
    phase,
    secret,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

KOPF_PEERING_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                        },
                    }
                },
            }
        ],
    },
}


def _runs(operator: OperatorProcess, worker: str) -> bool:
    return metric_value(operator.metrics(), "agentk_connected", {"agent": worker}) == 1.0


def _connected(kube: Kube, namespace: str, name: str) -> bool:
    return phase(kube.gla(namespace, name)) == "Connected"


def _watched_version(kube: Kube, namespace: str, name: str) -> str | None:
    """The Secret's resourceVersion while it carries the watch label, else None."""
    code, body = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    assert code == 200, body
    metadata = body["metadata"]
    if (metadata.get("labels") or {}).get("agentk.dev/watched") != "true":
        return None
    return str(metadata["resourceVersion"])


def _runs_none(operator: OperatorProcess, workers: list[str]) -> bool:
    text = operator.metrics()
    return all(metric_value(text, "agentk_connected", {"agent": w}) is None for w in workers)


def _namespaced_peering_rights(namespace: str) -> list[dict[str, Any]]:
    """With --namespace, kopf peers through a KopfPeering in that namespace; manifests/ grant only the
    cluster-wide kind (the Deployment runs cluster-wide), so such an operator needs this Role as well."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "operator-peering", "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["kopf.dev"],
                    "resources": ["kopfpeerings"],
                    "verbs": ["get", "list", "watch", "patch", "create"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "operator-peering", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator-peering"},
            "subjects": [
                {"kind": "ServiceAccount", "name": OPERATOR_SERVICE_ACCOUNT, "namespace": OPERATOR_NAMESPACE}
            ],
        },
    ]


def test_only_one_replica_runs_the_agents(
    kube: Kube, kas: KasProcess, agent_namespace: str, operator_credentials: Path, tmp_path: Path
) -> None:
    ns = agent_namespace
    kube.apply(KOPF_PEERING_CRD, *_namespaced_peering_rights(ns))
    assert (
        kube.kubectl(
            "wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev"
        ).returncode
        == 0
    )
    credentials = operator_credentials
    high = OperatorProcess(tmp_path / "high", credentials, ns, "--peering=e2e", "--peering-priority=200")
    low = OperatorProcess(tmp_path / "low", credentials, ns, "--peering=e2e", "--peering-priority=100")
    for proc in (high, low):
        proc.work_dir.mkdir()
    names = ["p-one", "p-two"]
    workers = [f"{ns}/{n}" for n in names]
    try:
        high.start()
        low.start()
        for i, name in enumerate(names):
            agent = kas.agents[55 + i]
            kube.apply(
                secret(ns, f"{name}-token", agent.token),
                gitlab_agent(ns, name, kas.agent_url, f"{name}-token"),
            )
        for worker in workers:
            wait_for(
                f"{worker} on the high-priority replica", functools.partial(_runs, high, worker), timeout=30
            )
        assert _runs_none(low, workers)

        # The label goes on once the agent's first status is written, or at the latest 10 s after the
        # Secret was read (deferred_labels.LABEL_YIELD_S): an agent may run before it is on.
        labelled = {
            name: wait_for(
                f"{name}-token labelled",
                functools.partial(_watched_version, kube, ns, f"{name}-token"),
                timeout=30,
            )
            for name in names
        }
        high.stop()  # the low-priority replica takes over

        for worker in workers:
            wait_for(f"{worker} taken over", functools.partial(_runs, low, worker), timeout=60)
        for name in names:
            wait_for(f"{name} Connected", functools.partial(_connected, kube, ns, name), timeout=30)

        high.start()  # back: the low one pauses and drains its workers

        wait_for("low-priority replica drained", lambda: _runs_none(low, workers), timeout=60)
        for worker in workers:
            wait_for(
                f"{worker} back on the high-priority replica",
                functools.partial(_runs, high, worker),
                timeout=60,
            )
        assert _runs_none(low, workers)
        # Neither replica unlabelled the Secrets when it handed its agents over: the one running them
        # watches Secrets by that label. The new owner labels them again, so only an unchanged
        # resourceVersion shows that the label never went away meanwhile.
        time.sleep(3)  # the release's background unwatch, if any, has run by now
        assert {name: _watched_version(kube, ns, f"{name}-token") for name in names} == labelled
    finally:
        codes = {"high": high.stop(), "low": low.stop()}
    assert codes == {"high": 0, "low": 0}, (high.log()[-3000:], low.log()[-3000:])
