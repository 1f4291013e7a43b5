"""Who a tunnelled request acts as: the policy's verdict, the Impersonate-* headers and the permissions a
SubjectAccessReview must grant, exactly (mutation testing found them unpinned: docs/testing.md)."""

from __future__ import annotations

from agent_proto.flavor import ImpersonationConfig
from agent_runtime.modules.kubernetes_api.identity import (
    ResourceCheck,
    checks_for,
    impersonation_headers,
    policy_refusal,
    service_account_groups,
)
from agent_runtime.policy import ImpersonationPolicy
from agent_runtime.spec import ServiceAccountRef

POLICY = ImpersonationPolicy(allowed_prefixes=("gitlab:", "acme:"))
FULL = ImpersonationConfig(
    username="gitlab:user:alice",
    uid="42",
    groups=["gitlab:users", "gitlab:devs"],
    extra={"agent.gitlab.com/id": ["7"], "scopes": ["a", "b"]},
)


def test_a_service_account_has_its_three_groups() -> None:
    assert service_account_groups(ServiceAccountRef("team-a", "agent")) == [
        "system:serviceaccounts",
        "system:serviceaccounts:team-a",
        "system:authenticated",
    ]


def test_the_policy_passes_allowed_names_and_says_which_one_it_refuses() -> None:
    assert policy_refusal(FULL, POLICY) is None
    assert policy_refusal(ImpersonationConfig(username="acme:bob"), POLICY) is None
    assert policy_refusal(ImpersonationConfig(groups=["gitlab:users"]), POLICY) is None
    assert policy_refusal(ImpersonationConfig(username="bob"), POLICY) == (
        'user "bob" is outside the operator\'s impersonation prefixes (gitlab:, acme:)'
    )
    refused_group = ImpersonationConfig(
        username="gitlab:user:alice", groups=["gitlab:users", "system:masters"]
    )
    assert policy_refusal(refused_group, POLICY) == (
        'group "system:masters" is never impersonated for kas (refused prefix)'
    )
    system_first = ImpersonationPolicy(allowed_prefixes=("system:",))
    assert policy_refusal(ImpersonationConfig(username="system:admin"), system_first) == (
        'user "system:admin" is never impersonated for kas (refused prefix)'
    )


def test_headers_name_every_part_in_order_with_extra_keys_escaped() -> None:
    assert impersonation_headers(FULL) == [
        ("Impersonate-User", "gitlab:user:alice"),
        ("Impersonate-Uid", "42"),
        ("Impersonate-Group", "gitlab:users"),
        ("Impersonate-Group", "gitlab:devs"),
        ("Impersonate-Extra-agent.gitlab.com%2Fid", "7"),
        ("Impersonate-Extra-scopes", "a"),
        ("Impersonate-Extra-scopes", "b"),
    ]
    assert impersonation_headers(ImpersonationConfig(groups=["g"])) == [("Impersonate-Group", "g")]
    assert impersonation_headers(ImpersonationConfig(extra={"k é": ["v"]})) == [
        ("Impersonate-Extra-k%20%C3%A9", "v")
    ]


def test_every_part_needs_its_own_impersonate_permission() -> None:
    assert checks_for(FULL) == [
        ResourceCheck("users", "gitlab:user:alice"),
        ResourceCheck("groups", "gitlab:users"),
        ResourceCheck("groups", "gitlab:devs"),
        ResourceCheck("uids", "42", group="authentication.k8s.io"),
        ResourceCheck("userextras", "7", group="authentication.k8s.io", subresource="agent.gitlab.com/id"),
        ResourceCheck("userextras", "a", group="authentication.k8s.io", subresource="scopes"),
        ResourceCheck("userextras", "b", group="authentication.k8s.io", subresource="scopes"),
    ]
    assert checks_for(ImpersonationConfig()) == []


def test_a_service_account_user_is_checked_as_a_service_account() -> None:
    sa = ImpersonationConfig(username="system:serviceaccount:team-b:deployer")
    assert checks_for(sa) == [ResourceCheck("serviceaccounts", "deployer", namespace="team-b")]
    malformed = ImpersonationConfig(username="system:serviceaccount:team-b")  # no name: a plain user
    assert checks_for(malformed) == [ResourceCheck("users", "system:serviceaccount:team-b")]


def test_a_check_describes_itself_and_its_review_attributes() -> None:
    extra = ResourceCheck("userextras", "7", group="authentication.k8s.io", subresource="scopes")
    assert extra.describe() == 'user extra "scopes"="7"'
    assert extra.attributes() == {
        "verb": "impersonate",
        "group": "authentication.k8s.io",
        "resource": "userextras",
        "name": "7",
        "subresource": "scopes",
    }
    sa = ResourceCheck("serviceaccounts", "deployer", namespace="team-b")
    assert sa.describe() == 'serviceaccount "team-b/deployer"'
    assert sa.attributes() == {
        "verb": "impersonate",
        "group": "",
        "resource": "serviceaccounts",
        "name": "deployer",
        "namespace": "team-b",
    }
    assert ResourceCheck("groups", "gitlab:users").describe() == 'group "gitlab:users"'
    assert ResourceCheck("uids", "42").describe() == 'uid "42"'
