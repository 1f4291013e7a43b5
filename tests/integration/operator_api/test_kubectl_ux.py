"""What users see through the real kubectl: explain, printer columns, status, the samples."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from agent_operator.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    GitLabAgentStatus,
    LastError,
    Phase,
    TunnelCounts,
    tunnels_summary,
)
from agent_operator.api.status import NEW_RESOURCE_STATUS
from tests.integration.operator_api.conftest import ROOT, Kubectl
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.timeout(120)

SAMPLES = ROOT / "manifests" / "samples"


@pytest.fixture
def agents_namespace(namespace: str, gitlabagent_crd: str) -> str:
    """A fresh namespace (deleted afterwards), once the CRD is installed."""
    return namespace


def _eventually(check: Any, what: str, timeout: float = 30) -> Any:
    """The OpenAPI and discovery views of a new CRD are published a little after it is Established."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def test_explain_shows_the_field_descriptions(kubectl: Kubectl, gitlabagent_crd: str) -> None:
    def explained() -> str:
        out = kubectl("explain", "gitlabagent.spec.kasAddress")
        return out.stdout if out.returncode == 0 and "wss://kas.gitlab.com" in out.stdout else ""

    text = _eventually(explained, "kubectl explain never showed kasAddress's description")
    assert "grpc://" in text
    assert "keep the trailing slash" in text
    tunnels = kubectl("explain", "gla.spec.tunnels.minIdle")
    assert tunnels.returncode == 0, tunnels.stderr
    assert "Idle tunnels kept open" in tunnels.stdout
    status = kubectl("explain", "gitlabagents.status.lastError.hint")
    assert status.returncode == 0, status.stderr
    assert "What to do about it" in status.stdout


def test_samples_apply_and_list_with_the_printer_columns(kubectl: Kubectl, agents_namespace: str) -> None:
    applied = kubectl("apply", "-n", agents_namespace, "-f", str(SAMPLES))
    assert applied.returncode == 0, applied.stderr
    listed = kubectl("get", "gla", "-n", agents_namespace)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "KAS", "PHASE", "AGENT", "ID", "KAS", "VERSION", "TUNNELS", "AGE"]
    assert sorted(row.split()[0] for row in rows) == ["team-a", "team-a-self-managed"]
    # Found through the `gitlab` category too.
    by_category = kubectl("get", "gitlab", "-n", agents_namespace, "-o", "name")
    assert by_category.returncode == 0, by_category.stderr
    assert "gitlabagent.agentk.dev/team-a" in by_category.stdout.split()
    stored = json.loads(
        kubectl("get", "gla", "team-a-self-managed", "-n", agents_namespace, "-o", "json").stdout
    )
    assert stored["spec"]["tunnels"] == {"minIdle": 2, "max": 100}
    assert stored["spec"]["wireFlavor"] == "gitlab"


def _patch_status(cluster: LocalCluster, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    path = f"/apis/agentk.dev/v1alpha1/namespaces/{namespace}/gitlabagents/{name}/status"
    code, answer = cluster.request(
        "PATCH", path, {"status": body}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert code == 200, answer
    return dict(answer)


def test_status_subresource_feeds_the_columns(
    k8s_cluster: LocalCluster, kubectl: Kubectl, agents_namespace: str
) -> None:
    applied = kubectl("apply", "-n", agents_namespace, "-f", str(SAMPLES / "gitlabagent.yaml"))
    assert applied.returncode == 0, applied.stderr
    now = datetime.now(UTC)
    failing = GitLabAgentStatus(
        observed_generation=1,
        phase=Phase.FAILED,
        conditions=[
            Condition(
                type=ConditionType.READY,
                status=ConditionStatus.FALSE,
                reason="Unauthenticated",
                message="kas refused the token",
                last_transition_time=now,
                observed_generation=1,
            )
        ],
        last_error=LastError(
            reason="Unauthenticated",
            message="kas answered 401",
            hint="the-token-was-revoked-create-a-new-one",
        ),
    )
    _patch_status(k8s_cluster, agents_namespace, "team-a", failing.to_merge_patch())
    wide = kubectl("get", "gla", "team-a", "-n", agents_namespace, "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    assert wide.stdout.split("\n")[0].split()[-3:] == ["ERROR", "HINT", "REPLICA"]
    assert "Failed" in wide.stdout
    assert "the-token-was-revoked-create-a-new-one" in wide.stdout

    healthy = GitLabAgentStatus(
        observed_generation=1,
        phase=Phase.CONNECTED,
        agent_id=4242,
        kas_version="18.1.0",
        agent_version="v18.1.0",
        kubernetes_version="v1.37.2",
        connected_since=now,
        tunnels=TunnelCounts(idle=2, active=0),
        tunnels_summary=tunnels_summary(2, 0),
        conditions=[
            Condition(
                type=ConditionType.READY,
                status=ConditionStatus.TRUE,
                reason="Connected",
                message="",
                last_transition_time=now,
                observed_generation=1,
            )
        ],
    )
    stored = _patch_status(k8s_cluster, agents_namespace, "team-a", healthy.to_merge_patch())
    assert "lastError" not in stored["status"], "the merge patch removed the stale error"
    assert GitLabAgentStatus.model_validate(stored["status"]) == healthy
    row = kubectl("get", "gla", "team-a", "-n", agents_namespace, "--no-headers").stdout.split()
    assert row[:7] == ["team-a", "wss://kas.gitlab.com", "Connected", "4242", "18.1.0", "2", "idle/0"]
    assert row[7] == "active"


def test_status_is_written_only_through_the_subresource(
    k8s_cluster: LocalCluster, kubectl: Kubectl, agents_namespace: str
) -> None:
    applied = kubectl("apply", "-n", agents_namespace, "-f", str(SAMPLES / "gitlabagent.yaml"))
    assert applied.returncode == 0, applied.stderr
    path = f"/apis/agentk.dev/v1alpha1/namespaces/{agents_namespace}/gitlabagents/team-a"
    code, answer = k8s_cluster.request(
        "PATCH",
        path,
        {"status": {"phase": "Connected"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert code == 200, answer
    # The CRD's default for a new resource (kstatus reads it as in progress), not the faked phase.
    assert answer.get("status") == NEW_RESOURCE_STATUS, (
        "a user's patch of the main resource cannot fake a status"
    )


def test_status_values_are_validated(
    k8s_cluster: LocalCluster, kubectl: Kubectl, agents_namespace: str
) -> None:
    applied = kubectl("apply", "-n", agents_namespace, "-f", str(SAMPLES / "gitlabagent.yaml"))
    assert applied.returncode == 0, applied.stderr
    path = f"/apis/agentk.dev/v1alpha1/namespaces/{agents_namespace}/gitlabagents/team-a/status"
    code, answer = k8s_cluster.request(
        "PATCH",
        path,
        {"status": {"phase": "Happy"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert code == 422, answer
    assert "status.phase" in answer["message"]
