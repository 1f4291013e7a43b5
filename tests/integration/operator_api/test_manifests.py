"""The kustomize base in manifests/ applies to a real apiserver, and its RBAC is what the operator needs."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
import yaml

from tests.integration.operator_api.conftest import ROOT, Kubectl
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)

NAMESPACE = "gitlab-agent-operator"
OPERATOR = f"system:serviceaccount:{NAMESPACE}:gitlab-agent-operator"
BASE = str(ROOT / "manifests")


@pytest.fixture(scope="module")
def operator_namespace(k8s_cluster: LocalCluster, gitlabagent_crd: str) -> Iterator[str]:
    """The base's namespace, existing beforehand: a server-side dry run creates nothing, so the
    namespaced objects of the same apply would otherwise find no namespace to be checked in.

    The e2e fixtures of the same session may have applied manifests/ already (the operator they run
    uses its ServiceAccount): then the namespace is theirs, and stays."""
    created = k8s_cluster.request("GET", f"/api/v1/namespaces/{NAMESPACE}")[0] == 404
    if created:
        k8s_cluster.create_namespace(NAMESPACE)
    yield NAMESPACE
    if created:
        k8s_cluster.delete_namespace(NAMESPACE)


def test_base_builds_the_expected_objects(kubectl: Kubectl) -> None:
    built = kubectl("kustomize", BASE)
    assert built.returncode == 0, built.stderr
    objects = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(built.stdout)}
    assert objects == {
        ("Namespace", NAMESPACE),
        ("CustomResourceDefinition", "gitlabagents.agentk.dev"),
        ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"),
        ("ServiceAccount", "gitlab-agent-operator"),
        ("ClusterRole", "gitlab-agent-operator"),
        ("ClusterRoleBinding", "gitlab-agent-operator"),
        ("Role", "gitlab-agent-operator"),
        ("RoleBinding", "gitlab-agent-operator"),
        ("Deployment", "gitlab-agent-operator"),
        ("Service", "gitlab-agent-operator-metrics"),
    }
    crd = next(
        o for o in yaml.safe_load_all(built.stdout) if o["metadata"]["name"] == "gitlabagents.agentk.dev"
    )
    committed = yaml.safe_load((ROOT / "crds" / "gitlabagents.agentk.dev.yaml").read_text())
    assert crd["spec"] == committed["spec"], "the base ships the generated CRD unchanged"


def test_server_side_dry_run_of_the_base_succeeds(kubectl: Kubectl, operator_namespace: str) -> None:
    applied = kubectl("apply", "--dry-run=server", "-k", BASE)
    assert applied.returncode == 0, applied.stderr
    assert "deployment.apps/gitlab-agent-operator" in applied.stdout


def _pod_security_verdict(k8s_cluster: LocalCluster, namespace: str, pod_spec: dict[str, object]) -> int:
    """HTTP status of a dry-run create of a Pod with `pod_spec` in `namespace`."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator"}, "spec": pod_spec}
    status, answer = k8s_cluster.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)
    assert status in (201, 403), answer
    if status == 403:
        assert "violates PodSecurity" in answer["message"], answer
    return status


def test_the_pod_template_meets_the_namespaces_pod_security_standard(
    kubectl: Kubectl, k8s_cluster: LocalCluster
) -> None:
    """PodSecurity admission judges Pods, not Deployments (a Deployment's dry run passes whatever its
    template says), so the template is created as a Pod in a namespace labelled as manifests/ label it.
    A hostNetwork/hostPID variant must be refused there, or the check checks nothing."""
    built = list(yaml.safe_load_all(kubectl("kustomize", BASE).stdout))
    labels = next(o for o in built if o["kind"] == "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    template = next(o for o in built if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    namespace = f"pod-security-{secrets.token_hex(3)}"
    k8s_cluster.create_namespace(namespace, labels=labels)
    try:
        assert _pod_security_verdict(k8s_cluster, namespace, template) == 201
        for loosened in ({"hostNetwork": True}, {"hostPID": True}):
            assert _pod_security_verdict(k8s_cluster, namespace, {**template, **loosened}) == 403, loosened
    finally:
        k8s_cluster.delete_namespace(namespace)


def test_deployment_is_hardened(kubectl: Kubectl) -> None:
    built = yaml.safe_load_all(kubectl("kustomize", BASE).stdout)
    deployment = next(o for o in built if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/liveness"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readiness"
    assert container["ports"][0]["containerPort"] == 8080
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert pod["terminationGracePeriodSeconds"] > 30
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]


@pytest.fixture(scope="module")
def installed_base(kubectl: Kubectl, operator_namespace: str) -> None:
    """The base applied for real (nothing schedules the pod: there is no scheduler), to ask RBAC.

    Left applied afterwards: the e2e, interop and security fixtures of the same session apply the
    same base once and run the operator under its ClusterRole, which must not vanish under them."""
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-k", BASE)
    assert applied.returncode == 0, applied.stderr


ALLOWED = [
    ("patch", "gitlabagents.agentk.dev", "team-a"),
    ("watch", "gitlabagents.agentk.dev", "team-a"),
    ("patch", "gitlabagents.agentk.dev/status", "team-a"),
    ("update", "gitlabagents.agentk.dev/status", "team-a"),
    ("list", "secrets", "team-a"),
    ("patch", "secrets", "team-a"),
    ("patch", "configmaps", "team-b"),
    ("watch", "configmaps", "team-b"),
    ("create", "events", "team-a"),
    ("impersonate", "serviceaccounts", "team-a"),
    ("impersonate", "users", ""),
    ("create", "subjectaccessreviews.authorization.k8s.io", ""),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("patch", "clusterkopfpeerings.kopf.dev", ""),
    ("create", "clusterkopfpeerings.kopf.dev", ""),
    ("update", "leases.coordination.k8s.io", NAMESPACE),
]
DENIED = [
    ("create", "gitlabagents.agentk.dev", "team-a"),
    ("update", "gitlabagents.agentk.dev", "team-a"),
    ("delete", "gitlabagents.agentk.dev", "team-a"),
    ("create", "secrets", "team-a"),
    ("update", "secrets", "team-a"),
    ("delete", "configmaps", "team-a"),
    ("get", "pods", "team-a"),
    ("create", "deployments.apps", "team-a"),
    ("update", "leases.coordination.k8s.io", "team-a"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", ""),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
]


def _can_i(kubectl: Kubectl, verb: str, resource: str, namespace: str) -> bool:
    resource, _, subresource = resource.partition("/")  # `kind/x` would mean the object named x
    args = ["auth", "can-i", verb, resource, f"--as={OPERATOR}"]
    args += [f"--subresource={subresource}"] if subresource else []
    args += [f"--namespace={namespace}"] if namespace else []
    answer = kubectl(*args)
    assert answer.stdout.strip() in {"yes", "no"}, answer.stderr
    return answer.stdout.strip() == "yes"


@pytest.mark.usefixtures("installed_base")
@pytest.mark.parametrize(("verb", "resource", "namespace"), ALLOWED)
def test_operator_may(kubectl: Kubectl, verb: str, resource: str, namespace: str) -> None:
    assert _can_i(kubectl, verb, resource, namespace)


@pytest.mark.usefixtures("installed_base")
@pytest.mark.parametrize(("verb", "resource", "namespace"), DENIED)
def test_operator_may_not(kubectl: Kubectl, verb: str, resource: str, namespace: str) -> None:
    assert not _can_i(kubectl, verb, resource, namespace)


@pytest.mark.usefixtures("installed_base")
def test_the_kopf_peering_kind_is_served(kubectl: Kubectl) -> None:
    waited = kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/clusterkopfpeerings.kopf.dev"
    )
    assert waited.returncode == 0, waited.stderr
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "operator-api-test"},
    }
    created = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(peering))
    assert created.returncode == 0, created.stderr
