"""What a user trips over (issue 17 §3, issue 19 §3), with the operator and kas as processes.

One agent token used by two GitLabAgents, a ServiceAccount that does not exist, the first tunnel counts
after connecting, and the per-namespace agent cap.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import pytest

from tests.e2e.conftest import kubectl_ok
from tests.e2e.harness import (
    KasProcess,
    Kube,
    OperatorProcess,
    condition,
    gitlab_agent,
    metric_value,
    phase,
    secret,
    service_account,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)


def _with_reason(kube: Kube, ns: str, name: str, type_: str, reason: str) -> dict[str, Any] | None:
    body = kube.gla(ns, name)
    return body if (condition(body, type_) or {}).get("reason") == reason else None


def _in_phase(kube: Kube, ns: str, name: str, wanted: str) -> dict[str, Any] | None:
    body = kube.gla(ns, name)
    return body if phase(body) == wanted else None


def _connected(operator: OperatorProcess, ns: str, name: str) -> float | None:
    return metric_value(operator.metrics(), "agentk_connected", {"agent": f"{ns}/{name}"})


def _reader(ns: str, account: str) -> list[dict[str, Any]]:
    """A Role that may list ConfigMaps of `ns`, bound to ServiceAccount `account` only."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "configmap-reader", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "configmap-reader", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
    }
    return [role, binding]


def test_a_shared_token_runs_only_the_oldest_agent_and_the_next_takes_over(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns, agent = operator.namespace, kas.agents[40]
    kube.apply(service_account(ns, "other"), *_reader(ns, "agent"))
    # Two Secrets with the same token: what counts is the token, not the Secret's name.
    kube.apply(secret(ns, "token-a", agent.token), gitlab_agent(ns, "holder", kas.agent_url, "token-a"))
    wait_for("holder Connected", lambda: _in_phase(kube, ns, "holder", "Connected"), timeout=20)
    time.sleep(1.1)  # creationTimestamp has a resolution of one second: the second one is younger
    kube.apply(
        secret(ns, "token-b", agent.token),
        gitlab_agent(ns, "twin", kas.agent_url, "token-b", serviceAccountName="other"),
    )

    body = wait_for("twin TokenInUse", lambda: _with_reason(kube, ns, "twin", "Ready", "TokenInUse"))
    ready = condition(body, "Ready") or {}
    assert ready["status"] == "False"
    assert f"GitLabAgent {ns}/holder" in ready["message"]
    assert (body["status"].get("lastError") or {}).get("reason") == "TokenInUse"
    assert (condition(body, "Connected") or {}).get("status") == "False"
    assert agent.token not in str(body)
    wait_for("no worker for the twin", lambda: _connected(operator, ns, "twin") is None, timeout=10)
    assert phase(kube.gla(ns, "holder")) == "Connected"
    # Every CI request reaches the holder, whose ServiceAccount may list ConfigMaps ("other" may not):
    # with both connected, kas spread them over both and about half were forbidden.
    codes = [kas.proxy_get(agent.id, f"/api/v1/namespaces/{ns}/configmaps")[0] for _ in range(10)]
    assert codes == [200] * 10

    kubectl_ok(kube.kubectl("delete", "gla", "holder", "-n", ns, "--timeout=30s"))

    wait_for("twin Connected", lambda: _in_phase(kube, ns, "twin", "Connected"), timeout=20)
    assert (condition(kube.gla(ns, "twin"), "Ready") or {}).get("status") == "True"
    assert agent.token not in operator.log()


def test_two_tokens_of_one_gitlab_agent_run_only_the_oldest_resource(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    """GitLab lets an agent have two tokens; kas routes by agent id, so they are one agent to kas."""
    ns, agent = operator.namespace, kas.agents[47]
    second_token = "second-token-of-47-" + "s" * 40
    kas.write_agents({agent.id: [agent.token, second_token]})
    try:
        kube.apply(service_account(ns, "other"), *_reader(ns, "agent"))
        kube.apply(secret(ns, "first", agent.token), gitlab_agent(ns, "holder", kas.agent_url, "first"))
        wait_for("holder Connected", lambda: _in_phase(kube, ns, "holder", "Connected"), timeout=20)
        time.sleep(1.1)  # creationTimestamp has a resolution of one second
        kube.apply(
            secret(ns, "second", second_token),
            gitlab_agent(ns, "twin", kas.agent_url, "second", serviceAccountName="other"),
        )

        # Only kas knows that the tokens belong to one agent: the twin connects, learns it, and stops.
        body = wait_for("twin AgentInUse", lambda: _with_reason(kube, ns, "twin", "Ready", "AgentInUse"))
        message = (condition(body, "Ready") or {})["message"]
        assert f"GitLabAgent {ns}/holder" in message
        assert f"GitLab agent {agent.id}" in message
        assert phase(body) == "Failed"
        wait_for("no worker for the twin", lambda: _connected(operator, ns, "twin") is None, timeout=10)
        codes = [kas.proxy_get(agent.id, f"/api/v1/namespaces/{ns}/configmaps")[0] for _ in range(10)]
        assert codes == [200] * 10

        kubectl_ok(kube.kubectl("delete", "gla", "holder", "-n", ns, "--timeout=30s"))

        wait_for("twin Connected", lambda: _in_phase(kube, ns, "twin", "Connected"), timeout=20)
        assert second_token not in operator.log()
    finally:
        kas.write_agents()


def test_after_a_restart_a_younger_twin_never_connects_even_if_kopf_hands_it_over_first(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns, agent = operator.namespace, kas.agents[46]
    kube.apply(secret(ns, "token", agent.token), gitlab_agent(ns, "zz-holder", kas.agent_url, "token"))
    wait_for("holder Connected", lambda: _in_phase(kube, ns, "zz-holder", "Connected"), timeout=20)
    time.sleep(1.1)  # creationTimestamp has a resolution of one second
    # The younger one sorts first by name: kopf lists (and mostly hands over) resources in that order.
    kube.apply(gitlab_agent(ns, "aa-twin", kas.agent_url, "token"))
    wait_for("twin TokenInUse", lambda: _with_reason(kube, ns, "aa-twin", "Ready", "TokenInUse"))

    for _ in range(3):
        assert operator.stop() == 0
        operator.start()
        wait_for("holder connected", lambda: _connected(operator, ns, "zz-holder") == 1.0, timeout=20)
        time.sleep(1.0)  # the twin, had it been started, would have connected by now
        restarted = operator.log().rsplit("--- start #", 1)[1]
        assert f'"worker": "{ns}/aa-twin"' not in restarted, "the twin ran after the restart"
        assert (condition(kube.gla(ns, "aa-twin"), "Ready") or {}).get("reason") == "TokenInUse"
        # Ready = every agent connected or refused with a reason: the twin is not left waiting.
        wait_for("readiness", lambda: operator.http_status("/readiness") == 200, timeout=10)


def test_a_missing_service_account_degrades_the_agent_until_it_exists(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns, agent = operator.namespace, kas.agents[41]
    kube.apply(
        secret(ns, "token", agent.token),
        gitlab_agent(ns, "lost", kas.agent_url, "token", serviceAccountName="ghost"),
    )

    body = wait_for("Degraded", lambda: _in_phase(kube, ns, "lost", "Degraded"), timeout=20)
    found = condition(body, "ServiceAccountFound") or {}
    assert (found.get("status"), found.get("reason")) == ("False", "ServiceAccountNotFound")
    assert f"ServiceAccount {ns}/ghost" in found["message"]
    assert "kubectl create serviceaccount ghost" in found["message"]
    assert (condition(body, "Connected") or {}).get("status") == "True", "still connected to kas"
    assert (condition(body, "Ready") or {}).get("reason") == "ServiceAccountNotFound"
    wait_for(
        "a Warning event",
        lambda: "ServiceAccountNotFound" in {e["reason"] for e in kube.events(ns, "lost")},
        timeout=10,
    )

    kube.apply(service_account(ns, "ghost"))

    body = wait_for("Connected", lambda: _in_phase(kube, ns, "lost", "Connected"), timeout=20)
    assert (condition(body, "ServiceAccountFound") or {}).get("status") == "True"
    assert (condition(body, "Ready") or {}).get("status") == "True"

    kubectl_ok(kube.kubectl("delete", "serviceaccount", "ghost", "-n", ns))

    body = wait_for("Degraded again", lambda: _in_phase(kube, ns, "lost", "Degraded"), timeout=20)
    assert (condition(body, "ServiceAccountFound") or {}).get("reason") == "ServiceAccountNotFound"


def test_the_first_tunnels_show_right_after_connecting(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns, agent = operator.namespace, kas.agents[42]
    kube.apply(secret(ns, "token", agent.token), gitlab_agent(ns, "fresh", kas.agent_url, "token"))
    wait_for("Connected", lambda: _in_phase(kube, ns, "fresh", "Connected"), timeout=20)

    # The counts alone are written at most every 10 s; the first ones must not wait for that.
    body = wait_for(
        "idle tunnels on the status",
        lambda: (b := kube.gla(ns, "fresh")) and (b["status"].get("tunnels") or {}).get("idle") and b,
        timeout=5,
    )
    assert not body["status"]["tunnelsSummary"].startswith("0 idle")


def test_only_n_agents_of_a_namespace_run_and_the_next_starts_when_one_goes(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns = operator.namespace
    assert operator.stop() == 0
    operator.extra_args = (*operator.extra_args, "--max-agents-per-namespace=2")
    operator.start()
    names = ["a", "b", "c"]
    objects = []
    for i, name in enumerate(names):
        objects += [
            secret(ns, f"{name}-token", kas.agents[43 + i].token),
            gitlab_agent(ns, name, kas.agent_url, f"{name}-token"),
        ]
    kube.apply(*objects)  # same second, most likely: then the names order them

    for name in names[:2]:
        wait_for(f"{name} Connected", partial(_in_phase, kube, ns, name, "Connected"), timeout=20)
    body = wait_for("c refused", lambda: _with_reason(kube, ns, "c", "Ready", "NamespaceAgentLimit"))
    ready = condition(body, "Ready") or {}
    assert "2 GitLabAgents" in ready["message"]
    assert "--max-agents-per-namespace" in ready["message"]
    assert phase(body) == "Failed"
    # kopf may hand over c before b: c then starts, and stops once b shows up.
    wait_for("no worker for c", lambda: _connected(operator, ns, "c") is None, timeout=10)

    kubectl_ok(kube.kubectl("delete", "gla", "a", "-n", ns, "--timeout=30s"))

    wait_for("c Connected", lambda: _in_phase(kube, ns, "c", "Connected"), timeout=20)
    assert phase(kube.gla(ns, "b")) == "Connected"
