"""The operator (as deployed: its ServiceAccount, manifests/' RBAC) with a GitLabAgent on GitLab's own kas.

The GitLabAgent becomes Connected and a client's kubectl reaches the cluster through GitLab's kas and the
operator's worker in every access mode: as the agent's ServiceAccount (`access_as: agent`), as the CI job
(`ci_job`), as an identity of the agent's `impersonate` configuration, and as a user with a personal
access token (`user`); each checked with `kubectl auth whoami` and an RBAC denial.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Kube, OperatorProcess, condition, gitlab_agent, phase, secret, wait_for
from tests.interop.access_modes import MODES, TEAM_EXTRA, VIEWERS, mode_bearer
from tests.interop.conftest import AGENT
from tests.interop.helpers import (
    assert_identity,
    drop_cluster_grant,
    grant_operator_extra,
    kubectl_sync,
    prepare_namespace,
)
from tests.support.gitlab_api import AccessAs, CiJob, GitLabApi
from tests.support.gitlab_kas import GitLabKas

pytestmark = [pytest.mark.timeout(180), pytest.mark.e2e]
JOB_ID = 100


@pytest.fixture
def grants(kube: Kube, agent_namespace: str) -> Iterator[str]:
    """`agent` may impersonate and view the namespace, as may the identities of every access mode; the
    operator may impersonate the `impersonate` mode's own extra key."""
    grant = prepare_namespace(kube.cluster, agent_namespace, VIEWERS)
    extra = grant_operator_extra(kube.cluster, TEAM_EXTRA)
    try:
        yield agent_namespace
    finally:
        drop_cluster_grant(kube.cluster, grant)
        drop_cluster_grant(kube.cluster, extra)


def _bearer(api: GitLabApi, access_as: AccessAs) -> str:
    token = secrets.token_hex(16)
    api.add_job(CiJob(token=token, agents={AGENT.id: access_as}, job_id=JOB_ID))
    return f"ci:{AGENT.id}:{token}"


@pytest.mark.parametrize("scheme", ["ws", "grpc"])
def test_gitlab_agent_on_gitlab_kas_connects_and_serves_ci(
    kube: Kube,
    gitlab_kas: GitLabKas,
    gitlab_api: GitLabApi,
    operator: OperatorProcess,
    grants: str,
    tmp_path: Path,
    scheme: str,
) -> None:
    ns = grants
    kube.apply(
        secret(ns, "token", AGENT.token),
        gitlab_agent(ns, "gitlab", gitlab_kas.agent_url(scheme), "token"),
    )
    try:
        wait_for("Connected", lambda: phase(kube.gla(ns, "gitlab")) == "Connected", timeout=60)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{kube.gla(ns, 'gitlab')}\n{operator.log()[-3000:]}") from None

    for mode in MODES.values():
        kubeconfig = gitlab_kas.kubeconfig(mode_bearer(gitlab_api, mode), tmp_path / "ci.kubeconfig", ns)
        last: list[str] = []

        def answered(path: Path = kubeconfig, last: list[str] = last) -> str | None:
            done = kubectl_sync(path, "auth", "whoami", "-o", "json", "--request-timeout=5s")
            last[:] = [done.stderr]
            return done.stdout if done.returncode == 0 else None

        try:
            answer = wait_for(
                "kubectl through GitLab kas and the operator", answered, timeout=30, interval=0.5
            )
        except AssertionError as err:
            raise AssertionError(f"{err}: {last}\n{operator.log()[-3000:]}") from None
        assert_identity(json.loads(answer)["status"]["userInfo"], mode.identity, ns)
        listed = kubectl_sync(kubeconfig, "get", "configmaps", "-o", "name")
        assert listed.returncode == 0, listed.stderr
        denied = kubectl_sync(kubeconfig, "get", "secrets")
        user = mode.identity.user(ns)
        assert f'User "{user}" cannot list resource "secrets"' in denied.stderr, denied.stderr
    registered = condition(kube.gla(ns, "gitlab"), "Registered")
    assert registered is not None, kube.gla(ns, "gitlab")
    assert registered["status"] == "True", registered
