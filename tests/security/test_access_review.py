"""AccessReviewer against the real API server, with the operator's own credentials from manifests/: a
granted `impersonate` is allowed and a missing one denied, verdicts are cached for the TTL and no longer,
and a review the credentials may not make is an error, never a verdict."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.modules.kubernetes_api.access_review import AccessReviewer, AccessReviewError
from agent_runtime.modules.kubernetes_api.identity import ResourceCheck
from agent_runtime.spec import ServiceAccountRef
from tests.e2e.harness import Kube
from tests.security.conftest import Tenants

pytestmark = pytest.mark.timeout(120)

TTL = 10.0
ALICE = ResourceCheck("users", "gitlab:user:alice")


class ManualClock:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


def _grant(kube: Kube, sa: ServiceAccountRef, resources: list[str], *, to_namespace: bool = False) -> None:
    """impersonate on `resources` for `sa`, or (`to_namespace`) for every ServiceAccount of its namespace."""
    name = f"review-{sa.namespace}-{sa.name}"
    subject = {"kind": "ServiceAccount", "name": sa.name, "namespace": sa.namespace}
    if to_namespace:
        subject = {"kind": "Group", "name": f"system:serviceaccounts:{sa.namespace}"}
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": resources, "verbs": ["impersonate"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [subject],
        },
    )


async def _granted(kube: KubeAccess, sa: ServiceAccountRef) -> None:
    """Until the authorizer sees the grant (RBAC reaches it through its informers), with uncached reviews."""
    async with asyncio.timeout(30):
        while not (await AccessReviewer(kube, ManualClock(), TTL).check(sa, ALICE)).allowed:  # noqa: ASYNC110
            await asyncio.sleep(0.2)


@pytest.fixture
def reviewed_sa(deployed_kube: Kube, tenants: Tenants) -> ServiceAccountRef:
    """A fresh ServiceAccount of the attacker's namespace, without any rights."""
    name = f"reviewed-{secrets.token_hex(3)}"
    deployed_kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": tenants.attacker},
        }
    )
    return ServiceAccountRef(tenants.attacker, name)


async def test_a_granted_impersonation_is_allowed_and_a_missing_one_denied(
    operator_kube: KubeAccess, deployed_kube: Kube, reviewed_sa: ServiceAccountRef
) -> None:
    _grant(deployed_kube, reviewed_sa, ["users"])
    reviewer = AccessReviewer(operator_kube, ManualClock(), TTL)
    await _granted(operator_kube, reviewed_sa)
    assert (await reviewer.check(reviewed_sa, ALICE)).allowed
    group = await reviewer.check(reviewed_sa, ResourceCheck("groups", "gitlab:users"))
    assert not group.allowed
    uid = await reviewer.check(reviewed_sa, ResourceCheck("uids", "42", group="authentication.k8s.io"))
    assert not uid.allowed


async def test_verdicts_are_cached_for_the_ttl_and_no_longer(
    operator_kube: KubeAccess, deployed_kube: Kube, reviewed_sa: ServiceAccountRef
) -> None:
    clock = ManualClock()
    reviewer = AccessReviewer(operator_kube, clock, TTL)
    assert not (await reviewer.check(reviewed_sa, ALICE)).allowed
    _grant(deployed_kube, reviewed_sa, ["users"])
    await _granted(operator_kube, reviewed_sa)
    clock.t += TTL - 0.5
    assert not (await reviewer.check(reviewed_sa, ALICE)).allowed  # still the cached denial
    clock.t += 0.5  # exactly the TTL: the cached verdict has expired
    assert (await reviewer.check(reviewed_sa, ALICE)).allowed  # asked again


async def test_a_review_the_credentials_may_not_make_is_an_error(
    user_kubeconfig: Path, reviewed_sa: ServiceAccountRef
) -> None:
    """alice may not create SubjectAccessReviews: that is no verdict about the ServiceAccount."""
    alice = await asyncio.to_thread(load_kube_access, str(user_kubeconfig))
    try:
        with pytest.raises(AccessReviewError, match="SubjectAccessReview: HTTP 403"):
            await AccessReviewer(alice, ManualClock(), TTL).check(reviewed_sa, ALICE)
    finally:
        await alice.close()


async def test_a_grant_to_the_namespaces_service_accounts_counts(
    operator_kube: KubeAccess, deployed_kube: Kube
) -> None:
    """The review carries the groups a ServiceAccount's token has: a grant to all ServiceAccounts of a
    namespace (a Group subject) allows. A namespace of its own, so no other test's account gains it."""
    namespace = f"review-group-{secrets.token_hex(3)}"
    deployed_kube.cluster.create_namespace(namespace)
    try:
        sa = ServiceAccountRef(namespace, "agent")
        _grant(deployed_kube, sa, ["users"], to_namespace=True)
        await _granted(operator_kube, sa)
        assert (await AccessReviewer(operator_kube, ManualClock(), TTL).check(sa, ALICE)).allowed
    finally:
        deployed_kube.cluster.delete_namespace(namespace)


async def test_the_refusal_message_carries_at_most_300_characters_of_the_answer(
    user_kubeconfig: Path, reviewed_sa: ServiceAccountRef
) -> None:
    alice = await asyncio.to_thread(load_kube_access, str(user_kubeconfig))
    try:
        with pytest.raises(AccessReviewError) as refused:
            await AccessReviewer(alice, ManualClock(), TTL).check(reviewed_sa, ALICE)
    finally:
        await alice.close()
    prefix = "SubjectAccessReview: HTTP 403: "
    assert str(refused.value).startswith(prefix + "{")
    assert len(str(refused.value)) == len(prefix) + 300  # the API server's Status is longer


async def test_the_verdict_cache_stays_bounded(
    operator_kube: KubeAccess, reviewed_sa: ServiceAccountRef
) -> None:
    """At most 4096 verdicts are kept: past that, expired ones go first, then all. (Filled by hand: 4097
    reviews would take the API server a while; the entries are what check() stores.)"""
    clock = ManualClock()
    reviewer = AccessReviewer(operator_kube, clock, TTL)
    verdict = await reviewer.check(reviewed_sa, ALICE)

    def fill(valid: int, expired: int, expired_at: float = clock.t - 1) -> None:
        entries = [(f"v{n}", clock.t + TTL) for n in range(valid)]
        entries += [(f"e{n}", expired_at) for n in range(expired)]
        reviewer._cache = {(reviewed_sa, ResourceCheck("users", n)): (at, verdict) for n, at in entries}

    async def after_a_new_check() -> int:
        await reviewer.check(reviewed_sa, ResourceCheck("users", "new"))
        assert (reviewed_sa, ResourceCheck("users", "new")) in reviewer._cache
        return len(reviewer._cache)

    fill(4095, 1)  # at the bound: nothing is dropped
    assert await after_a_new_check() == 4097
    fill(4096, 1)  # past it: the expired one goes, which is enough
    assert await after_a_new_check() == 4097
    fill(4096, 1, expired_at=clock.t)  # expiring right now counts as expired (a hit needs expiry > now)
    assert await after_a_new_check() == 4097
    fill(0, 4097)  # past it, all expired: they go
    assert await after_a_new_check() == 1
    fill(4097, 0)  # past it, none expired: everything goes
    assert await after_a_new_check() == 1


async def test_an_api_server_that_never_answers_ends_the_review_after_ten_seconds() -> None:
    """A review is bounded (10 s, in the error users see), never a request stuck behind a silent server.
    The server is a loopback socket that reads the request and answers nothing."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    configuration = k8s_client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    silent = KubeAccess.from_configuration(configuration)
    started = asyncio.get_running_loop().time()
    try:
        with pytest.raises(AccessReviewError) as refused:
            await AccessReviewer(silent, ManualClock(), TTL).check(ServiceAccountRef("ns", "sa"), ALICE)
    finally:
        await silent.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    waited = asyncio.get_running_loop().time() - started
    assert str(refused.value) == "SubjectAccessReview: no answer within 10 s"
    assert held, "the review never reached the server"
    assert waited >= 10.0  # it did wait for its bound, not fail early for another reason
