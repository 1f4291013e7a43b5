"""kas's impersonation requests against the operator's impersonation policy (issue 19, finding 12).

The agent's ServiceAccount here has what docs/operations.md used to recommend: `impersonate` on every user
and group. With a hostile kas that was cluster-admin: kas asks for `system:masters`, the access review
approves, the API server obeys. The policy admits only `gitlab:` names (or the operator's
`--impersonation-prefixes`) and never `system:` ones, whatever RBAC allows.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest

from agent_proto.flavor import ImpersonationConfig
from agent_runtime.policy import PERMISSIVE_POLICY, ImpersonationPolicy
from agent_runtime.spec import ServiceAccountRef
from tests.e2e.harness import Kube
from tests.integration.runtime.fake_kas import HttpResult, http
from tests.security.conftest import StartAgent, Tenants

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def impersonator(deployed_kube: Kube, tenants: Tenants) -> ServiceAccountRef:
    """A ServiceAccount of the attacker's namespace that may impersonate any user and group."""
    name = f"impersonator-{tenants.attacker}"
    deployed_kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "impersonator", "namespace": tenants.attacker},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "impersonator", "namespace": tenants.attacker}],
        },
    )
    return ServiceAccountRef(tenants.attacker, "impersonator")


def forbidden(result: HttpResult) -> dict[str, Any]:
    assert result.status == 403, result
    status: dict[str, Any] = json.loads(result.body)
    assert status["reason"] == "ImpersonationForbiddenError"
    return status


async def whoami(start: StartAgent, sa: ServiceAccountRef, imp: ImpersonationConfig, **kw: Any) -> HttpResult:
    kas = await start(sa, **kw)
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    return await http(
        kas,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        header={"Content-Type": ["application/json"]},
        body=json.dumps(review).encode(),
        imp=imp,
    )


async def test_system_masters_is_never_impersonated_for_kas(
    start_agent: StartAgent, tenants: Tenants, impersonator: ServiceAccountRef
) -> None:
    kas = await start_agent(impersonator)
    imp = ImpersonationConfig(username="system:admin", groups=["system:masters"])
    result = await http(kas, "GET", f"/api/v1/namespaces/{tenants.victim}/secrets", imp=imp)
    assert base64.b64encode(tenants.victim_value) not in result.body
    status = forbidden(result)
    assert '"system:admin" is never impersonated' in status["message"]


async def test_a_group_outside_the_prefixes_is_refused(
    start_agent: StartAgent, impersonator: ServiceAccountRef
) -> None:
    imp = ImpersonationConfig(username="gitlab:user:alice", groups=["gitlab:users", "cluster-operators"])
    status = forbidden(await whoami(start_agent, impersonator, imp))
    assert (
        '"cluster-operators" is outside the operator\'s impersonation prefixes (gitlab:)' in status["message"]
    )


async def test_gitlab_identities_pass_the_policy_and_rbac_decides(
    start_agent: StartAgent, impersonator: ServiceAccountRef
) -> None:
    imp = ImpersonationConfig(username="gitlab:user:alice", groups=["gitlab:users"])
    result = await whoami(start_agent, impersonator, imp)
    assert result.status == 201, result
    user = json.loads(result.body)["status"]["userInfo"]
    assert user["username"] == "gitlab:user:alice"
    assert "gitlab:users" in user["groups"]


async def test_the_operator_chooses_other_prefixes(
    start_agent: StartAgent, impersonator: ServiceAccountRef
) -> None:
    policy = dataclasses.replace(
        PERMISSIVE_POLICY,
        impersonation=ImpersonationPolicy(allowed_prefixes=("acme:",)),
    )
    allowed = await whoami(start_agent, impersonator, ImpersonationConfig(username="acme:bob"), policy=policy)
    assert allowed.status == 201, allowed
    assert json.loads(allowed.body)["status"]["userInfo"]["username"] == "acme:bob"
    refused = await whoami(
        start_agent, impersonator, ImpersonationConfig(username="gitlab:user:alice"), policy=policy
    )
    forbidden(refused)
