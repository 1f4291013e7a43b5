"""Finding 12: the RBAC the docs give agents and the operator, checked against the real API server.

- The agent ServiceAccount's narrow grant (manifests/samples/agent-impersonation.yaml, docs/operations.md)
  lets it impersonate exactly its tenant's GitLab groups: never another project's, never system:masters.
  The operator asks exactly these SubjectAccessReviews before it impersonates an identity for kas.
- Constrained impersonation (KEP-5284, beta and on by default since Kubernetes 1.36), as docs/security.md
  shows it for the operator's own ServiceAccount: an impersonator with `impersonate:serviceaccount` /
  `impersonate:user-info` plus per-namespace `impersonate-on:<mode>:<verb>` rules can act as an identity
  only for those verbs in those namespaces, whatever rights the identity itself has.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import Kube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "agent-impersonation.yaml"
RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _sar(kube: Kube, namespace: str, sa: str, **attributes: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{sa}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": attributes,
        },
    }
    code, answer = kube.cluster.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    assert code == 201, answer
    return bool(answer["status"].get("allowed"))


def _sample_for(namespace: str, suffix: str) -> list[dict[str, Any]]:
    """The sample, moved from team-a to the test's namespace (cluster-wide names made unique)."""
    documents = [d for d in yaml.safe_load_all(SAMPLE.read_text()) if d]
    for doc in documents:
        if doc["kind"].startswith("Cluster"):
            doc["metadata"]["name"] += f"-{suffix}"
        else:
            doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] += f"-{suffix}"
            for subject in doc["subjects"]:
                subject["namespace"] = namespace
    return documents


@pytest.fixture
def cluster_objects(deployed_kube: Kube) -> Iterator[list[str]]:
    """Paths of cluster-scoped objects a test creates; deleted afterwards."""
    paths: list[str] = []
    yield paths
    for path in paths:
        deployed_kube.cluster.request("DELETE", path)


def test_the_documented_agent_grant_allows_exactly_its_tenants_identities(
    deployed_kube: Kube, namespace: str, cluster_objects: list[str]
) -> None:
    suffix = secrets.token_hex(3)
    documents = _sample_for(namespace, suffix)
    deployed_kube.apply(*documents)
    cluster_objects += [
        f"{RBAC}/{d['kind'].lower()}s/{d['metadata']['name']}"
        for d in documents
        if d["kind"].startswith("Cluster")
    ]

    def may(resource: str, name: str, group: str = "", subresource: str = "") -> bool:
        attributes = {"verb": "impersonate", "resource": resource, "name": name, "group": group}
        if subresource:
            attributes["subresource"] = subresource
        return _sar(deployed_kube, namespace, "gitlab-agent", **attributes)

    assert may("users", "gitlab:ci_job:1074")
    for group in ("gitlab:ci_job", "gitlab:group:7", "gitlab:project:42"):
        assert may("groups", group), group
    assert may("userextras", "1074", "authentication.k8s.io", "agent.gitlab.com/ci_job_id")
    # Another tenant's project, and the cluster's own groups: never.
    for group in ("gitlab:project:43", "gitlab:group:8", "system:masters", "system:nodes"):
        assert not may("groups", group), group
    assert not may("serviceaccounts", "default")
    assert not may("uids", "0", "authentication.k8s.io")


def _role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules}


def _binding(
    kind: str, name: str, role_kind: str, subject: dict[str, Any], namespace: str | None = None
) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
        "subjects": [subject],
    }


def _request(
    kube: Kube, token: str, headers: list[tuple[str, str]], method: str, path: str, body: Any = None
) -> int:
    """One request with repeated headers (Impersonate-Group), which urllib cannot send."""
    context = ssl.create_default_context(cafile=str(kube.cluster.ca_file))
    url = urllib.parse.urlsplit(kube.cluster.url)
    connection = http.client.HTTPSConnection(url.hostname or "", url.port, context=context, timeout=10)
    try:
        connection.putrequest(method, path)
        connection.putheader("Authorization", f"Bearer {token}")
        for name, value in headers:
            connection.putheader(name, value)
        data = json.dumps(body).encode() if body is not None else b""
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(data)))
        connection.endheaders(data)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


def test_constrained_impersonation_confines_the_impersonator_to_the_tenant_namespace(
    deployed_kube: Kube, namespace: str, cluster_objects: list[str]
) -> None:
    kube, suffix = deployed_kube, secrets.token_hex(3)
    other = f"other-{suffix}"
    kube.cluster.create_namespace(other)
    deputy = {"kind": "ServiceAccount", "name": "deputy", "namespace": namespace}
    powerful = f"system:serviceaccount:{namespace}:powerful"
    who = f"constrained-{suffix}"
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "deputy", "namespace": namespace},
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "powerful", "namespace": namespace},
        },
        # The impersonated identities may do everything (the worst case): the constraint must hold anyway.
        _binding(
            "ClusterRoleBinding",
            f"powerful-{suffix}",
            "ClusterRole",
            {"kind": "ServiceAccount", "name": "powerful", "namespace": namespace},
        )
        | {
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            }
        },
        _binding(
            "ClusterRoleBinding",
            f"project-{suffix}",
            "ClusterRole",
            {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": f"gitlab:project:{suffix}"},
        )
        | {
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            }
        },
        # Whom the deputy may impersonate (cluster-wide: identities are not namespaced)...
        _role(
            "ClusterRole",
            who,
            [
                {
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["serviceaccounts"],
                    "verbs": ["impersonate:serviceaccount"],
                },
                {
                    "apiGroups": ["authentication.k8s.io"],
                    "resources": ["users", "groups"],
                    "verbs": ["impersonate:user-info"],
                },
            ],
        ),
        _binding("ClusterRoleBinding", who, "ClusterRole", deputy),
        # ...and for what: common verbs, in the tenant's namespace only.
        _role(
            "Role",
            who,
            [
                {
                    "apiGroups": ["", "apps"],
                    "resources": ["*"],
                    "verbs": [
                        f"impersonate-on:{mode}:{verb}"
                        for mode in ("serviceaccount", "user-info")
                        for verb in _VERBS
                    ],
                }
            ],
            namespace,
        ),
        _binding("RoleBinding", who, "Role", deputy, namespace),
    )
    cluster_objects += [
        f"{RBAC}/clusterroles/{who}",
        f"{RBAC}/clusterrolebindings/{who}",
        f"{RBAC}/clusterrolebindings/powerful-{suffix}",
        f"{RBAC}/clusterrolebindings/project-{suffix}",
    ]
    token = kube.kubectl("create", "token", "deputy", "-n", namespace).stdout.strip()
    assert token

    def as_(headers: list[tuple[str, str]], method: str, path: str, body: Any = None) -> int:
        return _request(kube, token, headers, method, path, body)

    # A ServiceAccount by name alone (the API server adds its groups), and a CI job as kas asks for it.
    sa = [("Impersonate-User", powerful)]
    job = [("Impersonate-User", "gitlab:ci_job:1"), ("Impersonate-Group", f"gitlab:project:{suffix}")]
    # A ServiceAccount name with explicit groups is neither mode: only the legacy `impersonate` verb
    # allows it, so an impersonator that sends them (as the operator did before it sent the name alone)
    # keeps needing that.
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    sa_with_groups = [*sa, *(("Impersonate-Group", g) for g in groups)]
    crb = _binding(
        "ClusterRoleBinding",
        f"escalate-{suffix}",
        "ClusterRole",
        {"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"},
    ) | {"roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"}}
    cluster_objects.append(f"{RBAC}/clusterrolebindings/escalate-{suffix}")
    try:
        for identity in (sa, job):
            assert as_(identity, "GET", f"/api/v1/namespaces/{namespace}/pods") == 200, identity
            assert as_(identity, "GET", f"/api/v1/namespaces/{namespace}/secrets") == 200, identity
            # Outside the namespace, and cluster-scoped writes: refused, though the identity may do them.
            assert as_(identity, "GET", f"/api/v1/namespaces/{other}/secrets") == 403, identity
            assert as_(identity, "POST", f"{RBAC}/clusterrolebindings", crb) == 403, identity
        assert as_(sa_with_groups, "GET", f"/api/v1/namespaces/{namespace}/pods") == 403
        # Without the constraint the same identity could (the legacy grant is absent, nothing falls back).
        admin_token = kube.kubectl("create", "token", "gitlab-agent-operator", "-n", "gitlab-agent-operator")
        assert admin_token.returncode == 0, admin_token.stderr
        assert (
            _request(kube, admin_token.stdout.strip(), sa, "GET", f"/api/v1/namespaces/{other}/secrets")
            == 200
        )
    finally:
        kube.cluster.delete_namespace(other)
