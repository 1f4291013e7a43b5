"""What kstatus (Flux, Argo CD, `kubectl wait`) reads from live GitLabAgents, computed by the real library.

The operator runs as deployed against the reference kas (which reports v16.5.0, our protocol level).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    KasProcess,
    Kube,
    OperatorProcess,
    condition,
    gitlab_agent,
    phase,
    secret,
    wait_for,
)
from tests.support.kstatus import Kstatus, compute, kstatus_checker
from tests.support.ports import free_port

__all__ = ["kstatus_checker"]
pytestmark = pytest.mark.timeout(180)


def _kstatus(kube: Kube, checker: Path, namespace: str, name: str) -> tuple[Kstatus, dict[str, Any]]:
    body = kube.gla(namespace, name)
    assert body is not None, name
    return compute(checker, body), body


def _when(
    kube: Kube, checker: Path, namespace: str, name: str, wanted: str
) -> tuple[Kstatus, dict[str, Any]]:
    def probe() -> tuple[Kstatus, dict[str, Any]] | None:
        found = _kstatus(kube, checker, namespace, name)
        return found if found[0].status == wanted and phase(found[1]) else None

    return wait_for(f"kstatus {wanted} for {name}", probe, timeout=30)


def test_a_new_gitlabagent_is_in_progress_before_any_operator_saw_it(
    kube: Kube, agent_namespace: str, kstatus_checker: Path
) -> None:
    # No operator watches this namespace: only the CRD's schema default speaks for the resource.
    kube.apply(gitlab_agent(agent_namespace, "fresh", "wss://kas.example.com", "token"))

    verdict, body = _kstatus(kube, kstatus_checker, agent_namespace, "fresh")

    assert body["status"] == {"observedGeneration": 0}
    assert verdict.status == "InProgress", verdict


def test_kstatus_connecting_connected_revoked_fixed(
    kube: Kube, kas: KasProcess, operator: OperatorProcess, kstatus_checker: Path
) -> None:
    ns, agent = operator.namespace, kas.agents[57]
    nowhere = f"grpc://127.0.0.1:{free_port()}"  # nothing listens: the agent keeps connecting
    kube.apply(
        secret(ns, "token", agent.token),
        secret(ns, "other-token", kas.agents[58].token),  # one token, one running agent (admission)
        gitlab_agent(ns, "nowhere", nowhere, "other-token"),
        gitlab_agent(ns, "live", kas.agent_url, "token"),
    )

    verdict, body = _when(kube, kstatus_checker, ns, "live", "Current")
    assert phase(body) == "Connected"
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    for type_, wanted in (("Ready", "True"), ("Reconciling", "False"), ("Stalled", "False")):
        assert (condition(body, type_) or {}).get("status") == wanted, (type_, body["status"])
    assert (condition(body, "VersionCompatible") or {}).get("status") == "True"

    def connecting() -> tuple[Kstatus, dict[str, Any]] | None:
        found = _kstatus(kube, kstatus_checker, ns, "nowhere")
        written = found[1]["status"].get("observedGeneration") == 1
        return found if written and found[0].status == "InProgress" else None

    verdict, body = wait_for("nowhere written and InProgress", connecting, timeout=30)
    assert phase(body) == "Connecting"
    assert (condition(body, "Reconciling") or {}).get("status") == "True"

    replacement = "rotated-token-" + "k" * 40
    try:
        kas.write_agents({agent.id: [replacement]})  # GitLab revokes the token the agent holds

        def failed() -> tuple[Kstatus, dict[str, Any]] | None:
            # Each CI request spends a tunnel; its replacement meets kas with the token, once kas has
            # reloaded its agents file (every 0.2 s), and is refused.
            kas.proxy_get(agent.id, "/version")
            found = _kstatus(kube, kstatus_checker, ns, "live")
            return found if found[0].status == "Failed" else None

        verdict, body = wait_for("kstatus Failed for live", failed, timeout=30, interval=0.5)
        stalled = condition(body, "Stalled") or {}
        assert (stalled.get("status"), stalled.get("reason")) == ("True", "Unauthenticated"), body["status"]
        assert body["status"]["lastError"]["reason"] == "Unauthenticated"
        assert "token" in verdict.message
        assert agent.token not in str(body)
        assert replacement not in str(body)

        kube.apply(secret(ns, "token", replacement))  # the fix: the Secret holds the new token
        verdict, body = _when(kube, kstatus_checker, ns, "live", "Current")
        assert phase(body) == "Connected"
    finally:
        kas.write_agents()
