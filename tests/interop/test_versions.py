"""Issue 12's acceptance: the operator on GitLab's own kas stamped as several releases.

Whatever kas's version, a working agent is `Connected`, `Ready=True` and kstatus `Current`, and a CI job's
kubectl reaches the cluster; `VersionCompatible` carries GitLab's skew policy as advice: True for kas
v16.5.0 and v16.6.0 (the agent speaks v16.5.0), False (`KasTooNew`, with the hint) for v18.6.0, Unknown for
an unstamped kas (v0.0.0) and over gRPC (GitLab's kas tells its version only in the WebSocket handshake).
A token GitLab does not know (revoked) is kstatus `Failed` with the reason, `Current` once the Secret is
fixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import kubectl_ok
from tests.e2e.harness import Kube, OperatorProcess, condition, gitlab_agent, phase, secret, wait_for
from tests.interop.conftest import AGENT, KasFactory
from tests.interop.helpers import kubectl_sync
from tests.interop.test_operator_gitlab_kas import _bearer, grants
from tests.support.gitlab_api import GitLabApi
from tests.support.gitlab_kas import PEERS_HINT, GitLabKas, GitLabPeers
from tests.support.kstatus import compute, kstatus_checker
from tests.support.require import GITLAB_PEERS, missing

__all__ = ["grants", "kstatus_checker"]
pytestmark = [pytest.mark.timeout(240), pytest.mark.e2e]


def _start(peers: GitLabPeers, start_gitlab_kas: KasFactory, binary: str) -> GitLabKas:
    path = peers.directory / binary
    if not os.access(path, os.X_OK):
        reason = f"{PEERS_HINT}: {path.name} is missing, run it again"
        missing(reason, GITLAB_PEERS)
    return start_gitlab_kas(binary=path)


def _kstatus_when(kube: Kube, checker: Path, ns: str, wanted: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        body = kube.gla(ns, "gitlab")
        return body if body and phase(body) and compute(checker, body).status == wanted else None

    return wait_for(f"kstatus {wanted}", probe, timeout=60, interval=0.3)


def _ci_request_works(kas: GitLabKas, api: GitLabApi, ns: str, tmp_path: Path) -> None:
    kubeconfig = kas.kubeconfig(_bearer(api, {"agent": {}}), tmp_path / "ci.kubeconfig", ns)

    def answered() -> str | None:
        done = kubectl_sync(kubeconfig, "auth", "whoami", "-o", "json", "--request-timeout=5s")
        return done.stdout if done.returncode == 0 else None

    answer = wait_for("a CI job's kubectl through GitLab's kas", answered, timeout=30, interval=0.5)
    assert json.loads(answer)["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:agent"


@pytest.mark.parametrize(
    ("binary", "scheme", "compatible", "reason"),
    [
        ("kas", "ws", "True", "WithinSupportedSkew"),
        ("kas-v16.6.0", "ws", "True", "WithinSupportedSkew"),
        ("kas-v18.6.0", "ws", "False", "KasTooNew"),
        ("kas-v0.0.0", "ws", "Unknown", "KasVersionUnknown"),
        ("kas-v18.6.0", "grpc", "Unknown", "KasVersionUnknown"),
    ],
    ids=["v16.5.0", "v16.6.0", "v18.6.0", "unstamped", "v18.6.0-grpc"],
)
def test_a_working_agent_is_ready_whatever_kas_version(
    kube: Kube,
    gitlab_peers: GitLabPeers,
    start_gitlab_kas: KasFactory,
    gitlab_api: GitLabApi,
    operator: OperatorProcess,
    grants: str,
    kstatus_checker: Path,
    tmp_path: Path,
    binary: str,
    scheme: str,
    compatible: str,
    reason: str,
) -> None:
    kas, ns = _start(gitlab_peers, start_gitlab_kas, binary), grants
    kube.apply(secret(ns, "token", AGENT.token), gitlab_agent(ns, "gitlab", kas.agent_url(scheme), "token"))

    body = _kstatus_when(kube, kstatus_checker, ns, "Current")

    status = body["status"]
    assert phase(body) == "Connected", status
    assert (condition(body, "Ready") or {}).get("status") == "True", status
    version = condition(body, "VersionCompatible") or {}
    assert (version.get("status"), version.get("reason")) == (compatible, reason), status
    _ci_request_works(kas, gitlab_api, ns, tmp_path)
    row = next(
        line
        for line in kubectl_ok(kube.kubectl("get", "gla", "-n", ns)).splitlines()
        if line.startswith("gitlab ")
    )
    assert "Connected" in row

    def warnings() -> list[dict[str, Any]]:
        return [e for e in kube.events(ns, "gitlab") if e["reason"] == "VersionIncompatible"]

    if compatible == "False":
        assert "v18.6.0" in row
        assert "upgrade the operator" in version["message"]
        assert "v16.5.0" in version["message"]
        # Events go out after the statuses (status_writer.EVENTS_YIELD_TO_WRITES_S).
        assert [e["type"] for e in wait_for("a VersionIncompatible Event", warnings)] == ["Warning"]
    else:
        assert warnings() == []
    print(f"[interop] {binary} over {scheme}: {row.split()}; VersionCompatible {version['message']!r}")


def test_a_revoked_token_is_failed_then_current_after_the_secret_is_fixed(
    kube: Kube,
    gitlab_peers: GitLabPeers,
    start_gitlab_kas: KasFactory,
    operator: OperatorProcess,
    grants: str,
    kstatus_checker: Path,
) -> None:
    kas, ns = _start(gitlab_peers, start_gitlab_kas, "kas-v18.6.0"), grants
    revoked = "glagent-revoked-" + "r" * 40  # GitLab answers a revoked token as one it does not know
    kube.apply(secret(ns, "token", revoked), gitlab_agent(ns, "gitlab", kas.ws_url, "token"))

    body = _kstatus_when(kube, kstatus_checker, ns, "Failed")

    stalled = condition(body, "Stalled") or {}
    assert (stalled.get("status"), stalled.get("reason")) == ("True", "Unauthenticated"), body["status"]
    assert body["status"]["lastError"]["reason"] == "Unauthenticated"
    assert "token" in body["status"]["lastError"]["hint"]
    assert revoked not in str(body)

    kube.apply(secret(ns, "token", AGENT.token))
    body = _kstatus_when(kube, kstatus_checker, ns, "Current")
    assert phase(body) == "Connected"
    assert (condition(body, "Stalled") or {}).get("status") == "False"
