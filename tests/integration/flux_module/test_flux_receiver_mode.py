"""The Flux module's receiver mode (spec.flux.mode: receiver) against a real kube-apiserver with Flux's
GitRepository CRD and the project's Receiver CRD (tests/interop/flux_gitlab.py, shared with the interop
test and bench/flux_push.py), a loopback kas and a loopback webhook recorder standing in for
notification-controller (which cannot be built here: the test writes each Receiver's status.webhookPath
as it would)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from agent_runtime.kube import KubeAccess
from agent_runtime.modules.flux.receivers import AGENT_LABEL, PROJECT_ANNOTATION
from agent_runtime.policy import PERMISSIVE_POLICY, TenantPolicy
from agent_runtime.runtime import Runtime
from agent_runtime.spec import FluxMode, FluxState, FluxStatus
from tests.integration.flux_module.conftest import (
    FAST,
    agent_spec,
    create_gitrepository,
    create_namespace,
    eventually,
    requested_at,
    running,
)
from tests.integration.flux_module.flux_kas import GITLAB_URL, FluxKas
from tests.interop.flux_gitlab import RECEIVER_CRD, install_crd
from tests.support.k8s_cluster import LocalCluster
from tests.support.webhook_recorder import WebhookRecorder

pytestmark = pytest.mark.usefixtures("pod_env")

RECEIVERS = "/apis/notification.toolkit.fluxcd.io/v1/namespaces/{ns}/receivers"
GITREPOSITORIES = "/apis/source.toolkit.fluxcd.io/v1/namespaces/{ns}/gitrepositories"


@pytest.fixture
def recorder() -> Iterator[WebhookRecorder]:
    server = WebhookRecorder()
    server.start()
    yield server
    server.stop()


def _allowing(webhook_url: str) -> TenantPolicy:
    """The tests' permissive policy (plaintext loopback kas), allowing one webhook base URL."""
    destinations = dataclasses.replace(PERMISSIVE_POLICY.destinations, flux_webhook_urls=(webhook_url,))
    return dataclasses.replace(PERMISSIVE_POLICY, destinations=destinations)


def _flux(runtime: Runtime, worker_id: str) -> FluxStatus:
    snapshot = runtime.snapshot(worker_id)
    return snapshot.flux if snapshot is not None else FluxStatus()


def _allow_receivers(cluster: LocalCluster, namespace: str) -> None:
    """The agent's ServiceAccount `agent` of `namespace` may manage Receivers (and their Secrets) there."""
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    role = {
        "metadata": {"name": "flux-receivers"},
        "rules": [
            {
                "apiGroups": ["notification.toolkit.fluxcd.io"],
                "resources": ["receivers"],
                "verbs": ["create", "patch", "get", "list", "delete"],
            },
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete"]},
        ],
    }
    binding = {
        "metadata": {"name": "flux-receivers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "flux-receivers"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}],
    }
    for path, body in ((f"{rbac}/roles", role), (f"{rbac}/rolebindings", binding)):
        status, answer = cluster.request("POST", path, body)
        assert status in (201, 409), answer


def _receivers(cluster: LocalCluster, namespace: str) -> dict[str, dict[str, Any]]:
    status, answer = cluster.request("GET", RECEIVERS.format(ns=namespace))
    assert status == 200, answer
    return {item["metadata"]["name"]: item for item in answer["items"]}


def _secret_exists(cluster: LocalCluster, namespace: str, name: str) -> bool:
    return cluster.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")[0] == 200


def _set_webhook_path(cluster: LocalCluster, namespace: str, name: str, path: str) -> None:
    """What notification-controller writes once it has reconciled the Receiver."""
    url = f"{RECEIVERS.format(ns=namespace)}/{name}/status"
    _, current = cluster.request("GET", url)
    current["status"] = {"webhookPath": path}
    status, answer = cluster.request("PUT", url, current)
    assert status == 200, answer


def _uid(cluster: LocalCluster, namespace: str, name: str) -> str:
    status, obj = cluster.request("GET", f"{GITREPOSITORIES.format(ns=namespace)}/{name}")
    assert status == 200, obj
    return str(obj["metadata"]["uid"])


async def test_receiver_mode_keeps_one_receiver_per_gitrepository_and_posts_to_the_pushed_ones(
    with_crd: LocalCluster, kube: KubeAccess, recorder: WebhookRecorder
) -> None:
    cluster = with_crd
    install_crd(cluster, RECEIVER_CRD)
    ns, denied = "recv-a", "recv-a-denied"
    create_namespace(cluster, ns, may_patch=False)
    create_namespace(cluster, denied, may_patch=False, agent_namespace=ns)
    _allow_receivers(cluster, ns)
    for name, url in (
        ("app", f"{GITLAB_URL}/group/app.git"),
        ("app-ssh", "ssh://git@gitlab.example.com/group/app.git"),
        ("other", f"{GITLAB_URL}/group/other.git"),
        ("github", "https://github.com/group/app.git"),
    ):
        create_gitrepository(cluster, ns, name, url)
    create_gitrepository(cluster, denied, "app", f"{GITLAB_URL}/group/app.git")
    kas = FluxKas(webhook_receiver_url=recorder.url + "/")
    await kas.start()
    policy = _allowing(recorder.url)
    spec = dataclasses.replace(agent_spec(kas, 301, ns), flux_mode=FluxMode.RECEIVER)
    try:
        async with running(kube, policy=policy) as runtime:
            runtime.apply(spec)
            expected = {"gitlab-301-app", "gitlab-301-app-ssh", "gitlab-301-other"}
            await eventually(lambda: set(_receivers(cluster, ns)) == expected, what="three Receivers")
            await eventually(lambda: 301 in kas.requests, what="a ReconcileProjects call")
            assert kas.requests[301] == [frozenset({"group/app", "group/other"})]
            assert _receivers(cluster, denied) == {}

            receiver = _receivers(cluster, ns)["gitlab-301-app"]
            meta = receiver["metadata"]
            assert meta["labels"][AGENT_LABEL] == "301"
            assert meta["annotations"][PROJECT_ANNOTATION] == "group/app"
            [owner] = meta["ownerReferences"]
            assert (owner["kind"], owner["name"], owner["uid"]) == (
                "GitRepository",
                "app",
                _uid(cluster, ns, "app"),
            )
            assert owner["controller"] is True
            assert receiver["spec"]["type"] == "generic"
            assert receiver["spec"]["resources"] == [
                {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "name": "app"}
            ]
            assert receiver["spec"]["secretRef"] == {"name": "gitlab-301-app-token"}
            assert _secret_exists(cluster, ns, "gitlab-301-app-token")

            for name in expected:
                _set_webhook_path(cluster, ns, name, f"/hook/{name}")
            _set_webhook_path(cluster, ns, "gitlab-301-other", "/hook/redirect")
            recorder.redirects["/hook/redirect"] = "/hook/followed"

            # A push: one POST per Receiver of the project, with an empty body; none for the others.
            assert kas.push(301, "group/app") == 1
            await eventually(lambda: _flux(runtime, spec.id).triggered == 2, what="two webhook calls")
            assert sorted(recorder.paths()) == ["/hook/gitlab-301-app", "/hook/gitlab-301-app-ssh"]
            assert recorder.body_lengths == [0, 0]
            assert requested_at(cluster, ns, "app") is None  # receiver mode does not patch
            flux = _flux(runtime, spec.id)
            assert flux.state is FluxState.WATCHING, flux.message

            # A redirect is not followed: the call counts as failed.
            kas.push(301, "group/other")
            await eventually(lambda: _flux(runtime, spec.id).failed == 1, what="a failed call")
            assert recorder.paths()[2:] == ["/hook/redirect"]

            # The GitRepository goes, or stops being the agent's: its Receiver and Secret go.
            cluster.request("DELETE", f"{GITREPOSITORIES.format(ns=ns)}/app-ssh")
            status, answer = cluster.request(
                "PATCH",
                f"{GITREPOSITORIES.format(ns=ns)}/other",
                {"spec": {"url": "https://github.com/group/other.git"}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert status == 200, answer
            await eventually(
                lambda: set(_receivers(cluster, ns)) == {"gitlab-301-app"}, what="two Receivers removed"
            )
            assert not _secret_exists(cluster, ns, "gitlab-301-app-ssh-token")
            assert not _secret_exists(cluster, ns, "gitlab-301-other-token")
            assert _secret_exists(cluster, ns, "gitlab-301-app-token")
    finally:
        await kas.stop()


async def test_a_webhook_url_the_operator_does_not_allow_is_refused(
    with_crd: LocalCluster, kube: KubeAccess, recorder: WebhookRecorder
) -> None:
    cluster = with_crd
    install_crd(cluster, RECEIVER_CRD)
    ns = "recv-b"
    create_namespace(cluster, ns, may_patch=False)
    _allow_receivers(cluster, ns)
    create_gitrepository(cluster, ns, "app", f"{GITLAB_URL}/group/app.git")
    kas = FluxKas(webhook_receiver_url="http://169.254.169.254/latest/meta-data")  # kas's choice: untrusted
    await kas.start()
    policy = _allowing(recorder.url)
    spec = dataclasses.replace(agent_spec(kas, 302, ns), flux_mode=FluxMode.RECEIVER)
    try:
        async with running(kube, policy=policy) as runtime:
            runtime.apply(spec)
            await eventually(
                lambda: _flux(runtime, spec.id).state is FluxState.WEBHOOK_REFUSED, what="WebhookURLRefused"
            )
            message = _flux(runtime, spec.id).message
            assert "http://169.254.169.254:80/latest/meta-data" in message
            assert f"allowed: {recorder.url}" in message
            assert "--flux-webhook-receiver-urls" in message
            assert _receivers(cluster, ns) == {}
            assert 302 not in kas.requests  # no stream either: nothing is asked of kas
    finally:
        await kas.stop()


async def test_receiver_requests_the_agent_may_not_make_are_reported_with_a_hint(
    with_crd: LocalCluster, kube: KubeAccess, recorder: WebhookRecorder
) -> None:
    cluster = with_crd
    install_crd(cluster, RECEIVER_CRD)
    ns = "recv-c"
    create_namespace(cluster, ns, may_patch=False)
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    role = {  # passes the scope check (patch on receivers), but may not create the token Secret
        "metadata": {"name": "receivers-only"},
        "rules": [
            {
                "apiGroups": ["notification.toolkit.fluxcd.io"],
                "resources": ["receivers"],
                "verbs": ["patch", "list"],
            }
        ],
    }
    binding = {
        "metadata": {"name": "receivers-only"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "receivers-only"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}],
    }
    for path, body in ((f"{rbac}/roles", role), (f"{rbac}/rolebindings", binding)):
        assert cluster.request("POST", path, body)[0] == 201
    create_gitrepository(cluster, ns, "app", f"{GITLAB_URL}/group/app.git")
    kas = FluxKas(webhook_receiver_url=recorder.url)
    await kas.start()
    spec = dataclasses.replace(agent_spec(kas, 303, ns), flux_mode=FluxMode.RECEIVER)
    tuning = dataclasses.replace(FAST, access_ttl_s=0.3)  # the scope (and its message) is refreshed often
    try:
        async with running(kube, tuning, policy=_allowing(recorder.url)) as runtime:
            runtime.apply(spec)
            await eventually(
                lambda: "HTTP 403: the agent needs create" in _flux(runtime, spec.id).message,
                what="the 403 hint",
            )
            assert _flux(runtime, spec.id).state is FluxState.WATCHING
            assert _receivers(cluster, ns) == {}
    finally:
        await kas.stop()
