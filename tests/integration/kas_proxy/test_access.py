"""Who gets through the proxy, as whom, and what kubectl shows when they do not."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
import pytest

from kas.k8s_proxy.errors import NO_TUNNEL_MESSAGE
from tests.integration.kas_proxy.conftest import (
    AGENT,
    AGENT_ACCESS_JOB,
    CI_JOB_ID,
    CI_JOB_JOB,
    FOREIGN_JOB,
    OFFLINE_AGENT,
    USER_PAT,
)
from tests.integration.kas_proxy.harness import GITLAB_ORIGIN, ProxyHarness
from tests.integration.kas_proxy.loopback_router import LoopbackRouter
from tests.support.k8s_cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_bad_token_is_401(proxy: ProxyHarness[LoopbackRouter]) -> None:
    kubeconfig = proxy.kubeconfig(AGENT.id, "not-a-job-token")

    result = await proxy.kubectl(kubeconfig, "get", "pods")

    # kubectl's first call is API discovery, whose 401 it always words this way
    assert result.code != 0
    assert "error: You must be logged in to the server" in result.stderr
    assert "not-a-job-token" not in result.stderr
    assert proxy.router.calls == []


async def _warm_discovery_cache(proxy: ProxyHarness[LoopbackRouter]) -> None:
    """kubectl caches discovery per server for 10 min; then its first call is the typed request."""
    warm = await proxy.kubectl(proxy.kubeconfig(AGENT.id, AGENT_ACCESS_JOB, name="warm"), "get", "namespaces")
    assert warm.code == 0, warm.stderr


async def test_bad_token_message_reaches_kubectl(proxy: ProxyHarness[LoopbackRouter]) -> None:
    await _warm_discovery_cache(proxy)
    kubeconfig = proxy.kubeconfig(AGENT.id, "not-a-job-token")

    result = await proxy.kubectl(kubeconfig, "get", "pods")

    assert result.code != 0
    assert (
        "error: You must be logged in to the server (GitLab Agent Server: Unauthorized: CI job token)"
        in result.stderr
    )
    assert "not-a-job-token" not in result.stderr


async def test_job_not_allowed_for_the_agent_is_403(proxy: ProxyHarness[LoopbackRouter]) -> None:
    kubeconfig = proxy.kubeconfig(AGENT.id, FOREIGN_JOB)

    result = await proxy.kubectl(kubeconfig, "get", "pods")

    assert result.code != 0
    assert (
        "Error from server (Forbidden): GitLab Agent Server: Forbidden: agentId is not allowed"
        in result.stderr
    )
    assert proxy.router.calls == []


async def test_unknown_agent_is_404(proxy: ProxyHarness[LoopbackRouter]) -> None:
    await _warm_discovery_cache(proxy)
    kubeconfig = proxy.kubeconfig(999, AGENT_ACCESS_JOB)

    result = await proxy.kubectl(kubeconfig, "get", "pods")

    assert result.code != 0
    assert "Error from server (NotFound): " in result.stderr
    assert "GitLab Agent Server: Not found: agent 999" in result.stderr


async def test_agent_without_tunnel_is_502(proxy: ProxyHarness[LoopbackRouter]) -> None:
    proxy.configs[OFFLINE_AGENT.id] = proxy.configs[AGENT.id]
    kubeconfig = proxy.kubeconfig(OFFLINE_AGENT.id, AGENT_ACCESS_JOB)

    result = await proxy.kubectl(kubeconfig, "get", "pods")

    assert result.code != 0
    assert f"GitLab Agent Server: {NO_TUNNEL_MESSAGE}" in result.stderr


async def test_ci_job_impersonation_reaches_the_apiserver(
    proxy: ProxyHarness[LoopbackRouter], namespace: str, k8s_cluster: LocalCluster
) -> None:
    kubeconfig = proxy.kubeconfig(AGENT.id, CI_JOB_JOB)
    job_user = f"gitlab:ci_job:{CI_JOB_ID}"

    denied = await proxy.kubectl(kubeconfig, "get", "configmaps", "-n", namespace)

    assert denied.code != 0
    assert f'User "{job_user}" cannot list resource "configmaps"' in denied.stderr
    sent = proxy.router.calls[-1].sent_headers
    assert sent["Impersonate-User"] == [job_user]
    assert sent["Impersonate-Group"] == [
        "gitlab:ci_job",
        "gitlab:group:5",
        "gitlab:group_env_tier:5:production",
        "gitlab:project:21",
        "gitlab:project_env:21:production",
        "gitlab:project_env_tier:21:production",
    ]
    assert sent["Impersonate-Extra-agent.gitlab.com%2Fci_job_id"] == [str(CI_JOB_ID)]

    _grant_list_configmaps(k8s_cluster, namespace, job_user)
    # No controller publishes kube-root-ca.crt here: the job must see the one ConfigMap made for it.
    listed = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "listed-for-the-job"}}
    status, answer = k8s_cluster.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", listed)
    assert status == 201, answer
    allowed = await proxy.kubectl(kubeconfig, "get", "configmaps", "-n", namespace, "-o", "name")

    assert allowed.code == 0, allowed.stderr
    assert allowed.stdout.split() == ["configmap/listed-for-the-job"]


async def test_personal_access_token_user_is_impersonated(
    proxy: ProxyHarness[LoopbackRouter], namespace: str
) -> None:
    kubeconfig = proxy.kubeconfig(AGENT.id, USER_PAT, kind="pat")

    denied = await proxy.kubectl(kubeconfig, "get", "configmaps", "-n", namespace)

    assert denied.code != 0
    assert 'User "gitlab:user:alice" cannot list resource "configmaps"' in denied.stderr
    sent = proxy.router.calls[-1].sent_headers
    assert sent["Impersonate-Group"] == ["gitlab:user", "gitlab:project_role:11:developer"]
    assert sent["Impersonate-Extra-agent.gitlab.com%2Faccess_type"] == ["personal_access_token"]


def _grant_list_configmaps(cluster: LocalCluster, namespace: str, user: str) -> None:
    role: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "read-configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }
    binding: dict[str, Any] = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "ci-job-reads-configmaps"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    assert cluster.request("POST", f"{base}/roles", role)[0] == 201
    assert cluster.request("POST", f"{base}/rolebindings", binding)[0] == 201


# -- plain HTTP clients: prefix, CORS, Status bodies ---------------------------------------------------


async def _get(
    proxy: ProxyHarness[LoopbackRouter],
    path: str,
    headers: dict[str, str],
    *,
    method: str = "GET",
    raw: bool = False,
) -> tuple[int, Any, Any]:
    context = ssl.create_default_context(cafile=str(proxy.ca_file))
    base = proxy.url.removesuffix("/k8s-proxy/")
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, base + path, headers=headers, ssl=context) as response,
    ):
        body = await response.read()
        decoded = body if raw else (json.loads(body) if body else None)
        return response.status, response.headers, decoded


async def test_missing_credentials_is_a_kubernetes_status(proxy: ProxyHarness[LoopbackRouter]) -> None:
    status, headers, body = await _get(proxy, "/k8s-proxy/api/v1/namespaces", {})

    assert status == 401
    assert headers["Gitlab-Unauthorized"] == "true"
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["reason"] == "Unauthorized"
    assert body["code"] == 401
    assert body["message"].startswith("GitLab Agent Server: Unauthorized")


async def test_path_outside_the_prefix_is_400(proxy: ProxyHarness[LoopbackRouter]) -> None:
    auth = {"Authorization": f"Bearer ci:{AGENT.id}:{AGENT_ACCESS_JOB}"}

    status, _, body = await _get(proxy, "/api/v1/namespaces", auth)

    assert status == 400
    assert body["message"] == "GitLab Agent Server: Bad request: URL does not start with expected prefix"


async def test_foreign_origin_is_refused_with_an_empty_403(proxy: ProxyHarness[LoopbackRouter]) -> None:
    headers = {"Authorization": f"Bearer ci:{AGENT.id}:{AGENT_ACCESS_JOB}", "Origin": "https://evil.example"}

    status, _, body = await _get(proxy, "/k8s-proxy/api/v1/namespaces", headers)

    assert (status, body) == (403, None)


async def test_allowed_origin_gets_cors_headers_and_preflight(proxy: ProxyHarness[LoopbackRouter]) -> None:
    origin = {"Origin": GITLAB_ORIGIN}
    preflight = {
        **origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "X-Csrf-Token",
    }

    status, headers, _ = await _get(
        proxy, "/k8s-proxy/api/v1/namespaces", preflight, method="OPTIONS", raw=True
    )

    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == GITLAB_ORIGIN
    assert headers["Access-Control-Allow-Headers"] == "X-Csrf-Token"
    assert headers["Access-Control-Max-Age"] == "86400"

    auth = {**origin, "Authorization": f"Bearer ci:{AGENT.id}:{AGENT_ACCESS_JOB}"}
    status, headers, body = await _get(proxy, "/k8s-proxy/api/v1/namespaces", auth)

    assert status == 200
    assert body["kind"] == "NamespaceList"
    assert headers["Access-Control-Allow-Origin"] == GITLAB_ORIGIN
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in headers.getall("Vary")


async def test_discovery_errors_are_text_for_client_go(proxy: ProxyHarness[LoopbackRouter]) -> None:
    headers = {
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    }

    status, response_headers, body = await _get(proxy, "/k8s-proxy/api", headers, raw=True)

    assert status == 401
    assert response_headers["Content-Type"].startswith("text/plain")
    assert body == b"GitLab Agent Server: Unauthorized: no valid credentials provided\n"
