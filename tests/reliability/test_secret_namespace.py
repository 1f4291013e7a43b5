"""An agent cannot make the operator read another namespace's Secret (issue 13 §7): no Secret reference
of a GitLabAgent can name a namespace. With strict field validation (kubectl's default) the apiserver
refuses the field, naming it; without it the apiserver drops it, so the reference still means a Secret of
the resource's own namespace (which is the only namespace the operator reads a reference in:
agent_operator/sources.py, tests/security/test_secret_opt_in.py).
"""

from __future__ import annotations

import copy
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.operator_api.conftest import gitlabagent_crd, kubectl  # noqa: F401 - fixtures
from tests.reliability.figures import record
from tests.support.k8s_cluster import LocalCluster

BASE: dict[str, Any] = {
    "kasAddress": "wss://kas.example.com/",
    "tokenSecretRef": {"name": "agent-token", "key": "token"},
    "caCert": {"secretKeyRef": {"name": "kas-ca", "key": "ca.crt"}},
    "proxy": {"url": "http://proxy.example.com:3128", "credentialsSecretRef": {"name": "proxy-login"}},
    "kasHeaders": [{"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "k"}}}],
}
REFERENCES = {
    "spec.tokenSecretRef": ("tokenSecretRef",),
    "spec.caCert.secretKeyRef": ("caCert", "secretKeyRef"),
    "spec.proxy.credentialsSecretRef": ("proxy", "credentialsSecretRef"),
    "spec.kasHeaders[0].valueFrom.secretKeyRef": ("kasHeaders", 0, "valueFrom", "secretKeyRef"),
}


@pytest.fixture(scope="module")
def tenant(k8s_cluster: LocalCluster, gitlabagent_crd: str) -> Iterator[str]:  # noqa: F811 - fixture
    k8s_cluster.create_namespace("secret-ns-tenant")
    yield "secret-ns-tenant"
    k8s_cluster.delete_namespace("secret-ns-tenant")


def _with_namespace(path: tuple[str | int, ...]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    target: Any = spec
    for step in path:
        target = target[step]
    target["namespace"] = "victim"
    return spec


def _post(
    cluster: LocalCluster, namespace: str, name: str, spec: dict[str, Any], strict: bool
) -> tuple[int, Any]:
    collection = f"/apis/agentk.dev/v1alpha1/namespaces/{urllib.parse.quote(namespace)}/gitlabagents"
    body = {
        "apiVersion": "agentk.dev/v1alpha1",
        "kind": "GitLabAgent",
        "metadata": {"name": name},
        "spec": spec,
    }
    return cluster.request("POST", collection + ("?fieldValidation=Strict" if strict else ""), body)


def test_no_secret_reference_can_name_a_namespace(k8s_cluster: LocalCluster, tenant: str) -> None:
    refused, pruned = 0, 0
    for i, (field, path) in enumerate(REFERENCES.items()):
        spec = _with_namespace(path)
        status, answer = _post(k8s_cluster, tenant, f"strict-{i}", spec, strict=True)
        assert status in (400, 422), f"{field}.namespace accepted"
        assert f"{field}.namespace" in answer["message"], answer["message"]
        refused += 1

        status, stored = _post(k8s_cluster, tenant, f"lenient-{i}", spec, strict=False)
        assert status == 201, stored
        target: Any = stored["spec"]
        for step in path:
            target = target[step]
        assert "namespace" not in target, f"{field}.namespace was stored"
        pruned += 1
    record("Secret references cannot name a namespace", refused_strict=refused, pruned_lenient=pruned)
