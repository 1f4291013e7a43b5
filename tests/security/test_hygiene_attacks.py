"""Attacks a tenant's kas makes with the fields of a tunnelled request (issue 19, findings 1-4 and 10).

Each test plays tenant A's kas against a worker acting as tenant A's ServiceAccount, which has no rights
at all, under the operator's own credentials and RBAC from manifests/. On 8048859 every one of them got
through: another tenant's Secrets read, a ClusterRoleBinding created, a uid forged, requests injected,
responses of another tenant received.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from agent_runtime.constants import NESTED_IMPERSONATION_ERROR
from agent_runtime.spec import ServiceAccountRef
from tests.e2e.harness import Kube
from tests.integration.runtime.fake_kas import HttpResult, http
from tests.security.conftest import StartAgent, Tenants

pytestmark = pytest.mark.timeout(120)

UPGRADE = {"Upgrade": ["SPDY/3.1"], "Connection": ["Upgrade"]}
"""Any request with an Upgrade header takes the upgrade path (its own HTTP/1.1 connection)."""
SPELLINGS = [
    ("impersonate-user", "impersonate-group"),
    ("IMPERSONATE-USER", "IMPERSONATE-GROUP"),
    ("Impersonate-user", "iMPERSONATE-gROUP"),
]


def attacker(tenants: Tenants) -> ServiceAccountRef:
    return ServiceAccountRef(tenants.attacker, "agent")


def leaked(result: HttpResult, tenants: Tenants) -> bool:
    """The victim's Secret value, raw or base64, anywhere in what the attacker got back."""
    return tenants.victim_value in result.body or base64.b64encode(tenants.victim_value) in result.body


def refused_as_nested(result: HttpResult) -> bool:
    return result.error is not None and NESTED_IMPERSONATION_ERROR in result.error[1]


def refused_by_agent(result: HttpResult) -> dict[str, Any]:
    """The agent's own 400 Status (the request never reached the API server)."""
    assert result.status == 400, result
    status: dict[str, Any] = json.loads(result.body)
    assert status["reason"] == "BadRequest"
    assert status["message"].startswith("refused by the agent: ")
    return status


@pytest.mark.parametrize("path", ["normal", "upgrade"])
@pytest.mark.parametrize(("user_header", "group_header"), SPELLINGS)
async def test_impersonation_headers_in_any_spelling_are_nested_impersonation(
    start_agent: StartAgent, tenants: Tenants, path: str, user_header: str, group_header: str
) -> None:
    kas = await start_agent(attacker(tenants))
    header = {user_header: ["system:admin"], group_header: ["system:masters"]}
    if path == "upgrade":
        header |= UPGRADE
    result = await http(kas, "GET", f"/api/v1/namespaces/{tenants.victim}/secrets", header=header)
    assert not leaked(result, tenants)
    assert refused_as_nested(result), result


async def test_no_cluster_role_binding_through_the_upgrade_path(
    start_agent: StartAgent, tenants: Tenants, deployed_kube: Kube
) -> None:
    kas = await start_agent(attacker(tenants))
    name = f"pwned-{tenants.attacker}"
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": tenants.attacker}],
    }
    header = {
        "impersonate-user": ["system:admin"],
        "impersonate-group": ["system:masters"],
        "content-type": ["application/json"],
    } | UPGRADE
    result = await http(
        kas,
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        header=header,
        body=json.dumps(binding).encode(),
    )
    assert refused_as_nested(result), result
    status, _ = deployed_kube.request("GET", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}")
    assert status == 404


async def test_a_forged_uid_never_reaches_the_api_server(start_agent: StartAgent, tenants: Tenants) -> None:
    kas = await start_agent(attacker(tenants))
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    plain = await http(
        kas,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        header={"Content-Type": ["application/json"]},
        body=json.dumps(review).encode(),
    )
    assert plain.status == 201, plain
    assert json.loads(plain.body)["status"]["userInfo"]["username"] == (
        f"system:serviceaccount:{tenants.attacker}:agent"
    )
    forged = await http(
        kas,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        header={"Content-Type": ["application/json"], "impersonate-uid": ["forged-uid"]},
        body=json.dumps(review).encode(),
    )
    assert refused_as_nested(forged), forged


@pytest.mark.parametrize(
    ("method", "header"),
    [
        ("GET /api/v1/namespaces HTTP/1.1\r\nX-Smuggled: 1\r\n\r\nGET", UPGRADE),
        ("GET", {"X-A: b\r\n\r\nGET /api/v1/namespaces HTTP/1.1\r\nX-B": ["c"]} | UPGRADE),
        ("GET", {"X-Value": ["ok\r\n\r\nGET /api/v1/namespaces HTTP/1.1"]} | UPGRADE),
        ("GET", {"X-Value": ["nul\x00byte"]}),
        ("G(E)T", {}),
    ],
    ids=["method-crlf", "name-crlf", "value-crlf", "value-nul", "method-not-a-token"],
)
async def test_line_breaks_and_non_tokens_are_refused_before_the_api_server(
    start_agent: StartAgent, tenants: Tenants, method: str, header: dict[str, list[str]]
) -> None:
    kas = await start_agent(attacker(tenants))
    result = await http(kas, method, f"/api/v1/namespaces/{tenants.attacker}/configmaps", header=header)
    refused_by_agent(result)


@pytest.mark.parametrize("url_path", [":6444/api", "@127.0.0.2/api", "api/v1/namespaces"])
async def test_a_path_without_leading_slash_is_refused(
    start_agent: StartAgent, tenants: Tenants, url_path: str
) -> None:
    kas = await start_agent(attacker(tenants))
    refused_by_agent(await http(kas, "GET", url_path))


async def test_framing_headers_cannot_smuggle_a_request_into_another_tenants_connection(
    start_agent: StartAgent, tenants: Tenants, deployed_kube: Kube
) -> None:
    """A body framed two ways (Content-Length from kas, Transfer-Encoding from the client) must not leave
    a second request on a keep-alive connection that another tenant's next request then uses."""
    victim = ServiceAccountRef(tenants.victim, "reader")
    deployed_kube.apply(*_secret_reader(tenants.victim))
    attacker_kas = await start_agent(attacker(tenants))
    victim_kas = await start_agent(victim)
    smuggled = b"0\r\n\r\nGET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    await http(
        attacker_kas,
        "POST",
        f"/api/v1/namespaces/{tenants.attacker}/configmaps",
        header={"transfer-encoding": ["chunked"], "Content-Type": ["application/json"]},
        body=smuggled,
    )
    own = await http(victim_kas, "GET", f"/api/v1/namespaces/{tenants.victim}/secrets")
    assert own.status == 200, own
    assert leaked(own, tenants), "the victim reads its own Secret"
    after = await http(attacker_kas, "GET", f"/api/v1/namespaces/{tenants.attacker}/configmaps")
    assert not leaked(after, tenants)
    assert after.status == 403, after  # the attacker's own answer: its ServiceAccount has no rights


async def test_client_credentials_and_framing_headers_are_dropped_in_any_spelling(
    start_agent: StartAgent, tenants: Tenants
) -> None:
    """A client `authorization` (any case) must not replace the operator's credentials: the request
    still runs as the agent's ServiceAccount."""
    kas = await start_agent(attacker(tenants))
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    result = await http(
        kas,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        header={
            "authorization": ["Bearer not-a-token"],
            "content-type": ["application/json"],
            "proxy-authorization": ["Basic eDp5"],
            "te": ["trailers"],
            "connection": ["keep-alive, x-drop-me"],
            "x-drop-me": ["named by Connection"],
        },
        body=json.dumps(review).encode(),
    )
    assert result.status == 201, result
    user = json.loads(result.body)["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{tenants.attacker}:agent"


def _secret_reader(namespace: str) -> list[dict[str, Any]]:
    """ServiceAccount `reader` that may list the Secrets of its namespace."""
    meta = {"name": "reader", "namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    ]
