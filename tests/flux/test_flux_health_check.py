"""Flux's own controllers apply GitLabAgents from Git (served over smart HTTP on loopback) with the
`wait: true` health check of manifests/flux-example: Ready only once the agent is connected, and a
failed health check naming the GitLabAgent when its token is refused (the reason on the agent).

The operator runs as deployed (its ServiceAccount, manifests/' RBAC) against the reference kas.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import KasAgent, KasProcess, Kube, OperatorProcess, condition, phase, wait_for
from tests.flux.gitops_repo import AGENT_NAME, example_kustomization, team_files
from tests.support import flux
from tests.support.flux import FluxControllers
from tests.support.git_http import GitHttpServer, WorkingCopy

pytestmark = pytest.mark.timeout(240)
KUSTOMIZATION = "gitlab-agents"
LATE_AGENT = KasAgent(3100, "late-agent", ("late-agent-token-" + "l" * 40,))


def _publish(git_server: GitHttpServer, work: Path, namespace: str, files: dict[str, str]) -> str:
    """A repository `<namespace>/cluster-config.git` holding `files`; the pushed commit."""
    repository = f"{namespace}/cluster-config.git"
    git_server.create_repository(repository)
    return WorkingCopy(work, git_server.url(repository)).commit_and_push("GitLab agents", files)


def _follow(kube: Kube, git_server: GitHttpServer, namespace: str, timeout: str) -> None:
    """GitRepository + the example's Kustomization, both in `namespace`."""
    source = flux.git_repository(
        namespace, "cluster-config", git_server.url(f"{namespace}/cluster-config.git")
    )
    flux.create(kube.cluster, source, example_kustomization(namespace, "cluster-config", timeout))


def _kustomization(kube: Kube, namespace: str) -> dict[str, Any]:
    found = flux.get(kube.cluster, "Kustomization", namespace, KUSTOMIZATION)
    assert found is not None
    return found


def _ready_kustomization(kube: Kube, namespace: str) -> dict[str, Any] | None:
    found = _kustomization(kube, namespace)
    return found if flux.is_ready(found) else None


def test_the_kustomization_is_ready_only_once_the_agent_is_connected(
    kube: Kube,
    operator: OperatorProcess,
    flux_controllers: FluxControllers,
    git_server: GitHttpServer,
    tmp_path: Path,
) -> None:
    ns = operator.namespace
    late_kas = KasProcess(tmp_path / "kas", [LATE_AGENT])  # its port is chosen; nothing listens yet
    commit = _publish(git_server, tmp_path / "work", ns, team_files(ns, late_kas.agent_url, LATE_AGENT.token))
    # Longer than all the waits below together: a timed-out health check is retried only in 10 minutes.
    _follow(kube, git_server, ns, timeout="150s")

    def connecting() -> dict[str, Any] | None:
        agent = kube.gla(ns, AGENT_NAME)
        return agent if phase(agent) == "Connecting" else None

    wait_for("the GitLabAgent applied by Flux and connecting", connecting, timeout=60)
    # Flux's health check polls every 5 s: two rounds of it see an agent that cannot reach kas.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        kust = _kustomization(kube, ns)
        assert not flux.is_ready(kust), kust["status"]
        assert phase(kube.gla(ns, AGENT_NAME)) == "Connecting"
        time.sleep(0.2)
    healthy = condition(kust, "Healthy") or {}
    assert (healthy.get("status"), healthy.get("reason")) == ("Unknown", "Progressing"), kust["status"]
    assert flux.attempted_revision(kust) == flux.revision("main", commit)
    assert flux.applied_revision(kust) is None

    late_kas.start()
    try:
        ready = wait_for("Kustomization Ready", lambda: _ready_kustomization(kube, ns), timeout=60)
        agent = kube.gla(ns, AGENT_NAME)
    finally:
        late_kas.stop()

    assert phase(agent) == "Connected"
    assert flux.applied_revision(ready) == flux.revision("main", commit)
    connected_at = (condition(agent, "Ready") or {})["lastTransitionTime"]
    assert connected_at <= (condition(ready, "Ready") or {})["lastTransitionTime"]  # RFC 3339, UTC


def test_a_refused_token_fails_the_health_check_with_the_agents_reason(
    kube: Kube,
    kas: KasProcess,
    operator: OperatorProcess,
    flux_controllers: FluxControllers,
    git_server: GitHttpServer,
    tmp_path: Path,
) -> None:
    ns = operator.namespace
    wrong_token = "revoked-token-" + "r" * 40
    commit = _publish(git_server, tmp_path / "work", ns, team_files(ns, kas.agent_url, wrong_token))
    _follow(kube, git_server, ns, timeout="90s")

    def failed() -> dict[str, Any] | None:
        kust = _kustomization(kube, ns)
        ready = condition(kust, "Ready") or {}
        return kust if ready.get("reason") == "HealthCheckFailed" else None

    kust = wait_for("the health check failed", failed, timeout=60)

    # Flux names the object and its kstatus verdict; fluxcd/pkg/ssa leaves out the object's own message,
    # so the reason is read where Flux points: the GitLabAgent's Stalled condition.
    message = (condition(kust, "Ready") or {})["message"]
    failed_early = f"failed early due to stalled resources: [GitLabAgent/{ns}/{AGENT_NAME} status: 'Failed']"
    assert re.fullmatch(rf"health check failed after [0-9.]+m?s: {re.escape(failed_early)}", message), message
    stalled = condition(kube.gla(ns, AGENT_NAME), "Stalled") or {}
    assert (stalled.get("status"), stalled.get("reason")) == ("True", "Unauthenticated"), stalled
    assert "token" in stalled["message"], stalled
    assert flux.attempted_revision(kust) == flux.revision("main", commit)
    assert flux.applied_revision(kust) is None
    assert wrong_token not in str(kust)
