"""A GitLabAgent's life with the operator as a process: apply, rotate, suspend, delete, restart."""

from __future__ import annotations

import time
from collections.abc import Callable
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
    wait_for,
)

pytestmark = pytest.mark.timeout(180)


def _connected(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    body = kube.gla(namespace, name)
    status = (body or {}).get("status") or {}
    return body if phase(body) == "Connected" and status.get("agentId") and status.get("kasVersion") else None


def _in_phase(kube: Kube, namespace: str, name: str, wanted: str) -> dict[str, Any] | None:
    body = kube.gla(namespace, name)
    return body if phase(body) == wanted else None


def _without_finalizers(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    body = kube.gla(namespace, name)
    return body if body is not None and not body["metadata"].get("finalizers") else None


def _reconnected(kube: Kube, namespace: str, name: str, before: dict[str, Any]) -> dict[str, Any] | None:
    body = _connected(kube, namespace, name)
    if body is None or body["status"]["connectedSince"] == before["status"]["connectedSince"]:
        return None
    return body


def test_apply_connects_and_kubectl_shows_it(kube: Kube, kas: KasProcess, operator: OperatorProcess) -> None:
    ns, agent = operator.namespace, kas.agents[0]
    kube.apply(secret(ns, "token", agent.token), gitlab_agent(ns, "team-a", kas.agent_url, "token"))

    body = wait_for("Connected", lambda: _connected(kube, ns, "team-a"), timeout=20)

    status = body["status"]
    assert isinstance(status, dict)
    assert status["agentId"] == agent.id
    assert status["kasVersion"]
    assert status["observedGeneration"] == 1
    assert status["tunnelsSummary"].endswith("idle/0 active")
    for type_ in ("Ready", "Connected", "TokenAvailable", "VersionCompatible"):
        assert (condition(body, type_) or {}).get("status") == "True", (type_, status)
    assert "lastError" not in status
    table = kubectl_ok(kube.kubectl("get", "gla", "-n", ns))
    row = next(line for line in table.splitlines() if line.startswith("team-a"))
    assert "Connected" in row
    assert str(agent.id) in row
    assert str(status["kasVersion"]) in row
    # The watch label goes on after the first status (deferred_labels.py), so it may come a moment later.
    wait_for("the token Secret labelled for the watch", lambda: _watched(kube, ns, "token"), timeout=15)
    assert agent.token not in str(body)  # never in status
    # Events go out after the statuses (status_writer.EVENTS_YIELD_TO_WRITES_S): they may come a moment later.
    wait_for("a Connected Event", lambda: "Connected" in {e["reason"] for e in kube.events(ns, "team-a")})
    # The tunnel serves a request from a CI job, end to end.
    code, version = kas.proxy_get(agent.id, "/version")
    assert code == 200, version
    assert version["gitVersion"] == kube.cluster.version
    wait_for("readiness", lambda: operator.http_status("/readiness") == 200, timeout=10)
    assert agent.token not in operator.log()


def test_token_rotation_reconnects_only_that_agent(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns = operator.namespace
    first, second = kas.agents[1], kas.agents[2]
    new_token = "rotated-token-" + "r" * 40
    kas.write_agents({first.id: [first.token, new_token]})
    kube.apply(
        secret(ns, "first-token", first.token),
        secret(ns, "second-token", second.token),
        gitlab_agent(ns, "first", kas.agent_url, "first-token"),
        gitlab_agent(ns, "second", kas.ws_url, "second-token"),
    )
    wait_for("first Connected", lambda: _connected(kube, ns, "first"), timeout=20)
    second_body = wait_for("second Connected", lambda: _connected(kube, ns, "second"), timeout=20)
    second_since = second_body["status"]["connectedSince"]

    # A token kas does not know: the worker must use it, and fail with a typed reason and hint.
    kube.apply(secret(ns, "first-token", "revoked-token-" + "z" * 40))
    failed = wait_for(
        "Unauthenticated",
        lambda: (
            (b := kube.gla(ns, "first"))
            and (b["status"].get("lastError") or {}).get("reason") == "Unauthenticated"
            and b
        ),
        timeout=20,
    )
    assert phase(failed) == "Failed"
    assert "token" in failed["status"]["lastError"]["hint"]
    # The valid new token: connected again, in place.
    kube.apply(secret(ns, "first-token", new_token))
    wait_for("first Connected again", lambda: _connected(kube, ns, "first"), timeout=20)
    code, _ = kas.proxy_get(first.id, "/version")
    assert code == 200

    wait_for(
        "a TokenRotated Event", lambda: "TokenRotated" in {e["reason"] for e in kube.events(ns, "first")}
    )
    after = kube.gla(ns, "second")
    assert phase(after) == "Connected"
    assert after is not None
    assert after["status"]["connectedSince"] == second_since
    assert "TokenRotated" not in {e["reason"] for e in kube.events(ns, "second")}
    assert new_token not in operator.log()


def test_suspend_stops_and_resumes(kube: Kube, kas: KasProcess, operator: OperatorProcess) -> None:
    ns, agent = operator.namespace, kas.agents[3]
    kube.apply(secret(ns, "token", agent.token), gitlab_agent(ns, "pausable", kas.agent_url, "token"))
    wait_for("Connected", lambda: _connected(kube, ns, "pausable"), timeout=20)
    worker = {"agent": f"{ns}/pausable"}

    kube.patch_gla(ns, "pausable", {"spec": {"suspend": True}})

    body = wait_for("Suspended", lambda: _in_phase(kube, ns, "pausable", "Suspended"))
    assert (condition(body, "Connected") or {}).get("reason") == "Suspended"
    assert "connectedSince" not in body["status"]
    wait_for("worker gone", lambda: metric_value(operator.metrics(), "agentk_connected", worker) is None)
    assert operator.http_status("/readiness") == 200  # suspended agents do not count

    kube.patch_gla(ns, "pausable", {"spec": {"suspend": False}})

    wait_for("Connected again", lambda: _connected(kube, ns, "pausable"), timeout=20)
    assert metric_value(operator.metrics(), "agentk_connected", worker) == 1.0


def test_delete_drains_the_worker(kube: Kube, kas: KasProcess, operator: OperatorProcess) -> None:
    ns, agent = operator.namespace, kas.agents[4]
    kube.apply(secret(ns, "token", agent.token), gitlab_agent(ns, "doomed", kas.agent_url, "token"))
    body = wait_for("Connected", lambda: _connected(kube, ns, "doomed"), timeout=20)
    assert not body["metadata"].get("finalizers")  # nothing holds a deletion for the operator
    assert kas.proxy_get(agent.id, "/version")[0] == 200

    kubectl_ok(kube.kubectl("delete", "gla", "doomed", "-n", ns, "--timeout=30s"))

    assert kube.gla(ns, "doomed") is None
    worker = {"agent": f"{ns}/doomed"}
    wait_for(
        "metrics forgotten", lambda: metric_value(operator.metrics(), "agentk_connected", worker) is None
    )
    # The DELETED event drains the worker: kas loses the agent's tunnels.
    wait_for("no tunnel left", lambda: kas.proxy_get(agent.id, "/version")[0] != 200, timeout=20)


def test_a_finalizer_of_an_earlier_version_comes_off(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    """Earlier versions of the operator put `agentk.dev/worker-cleanup` on every GitLabAgent: after an
    upgrade the operator takes it off, or deleting the resource (or its namespace) would hang."""
    ns, agent = operator.namespace, kas.agents[51]
    old = gitlab_agent(ns, "upgraded", kas.agent_url, "token-upgraded")
    old["metadata"]["finalizers"] = ["agentk.dev/worker-cleanup"]
    kube.apply(secret(ns, "token-upgraded", agent.token), old)

    wait_for("Connected", lambda: _connected(kube, ns, "upgraded"), timeout=20)
    wait_for("finalizer off", lambda: _without_finalizers(kube, ns, "upgraded"))
    kubectl_ok(kube.kubectl("delete", "gla", "upgraded", "-n", ns, "--timeout=30s"))
    assert kube.gla(ns, "upgraded") is None


def test_restart_resumes_every_agent(kube: Kube, kas: KasProcess, operator: OperatorProcess) -> None:
    ns = operator.namespace
    names = ["one", "two", "three"]
    for i, name in enumerate(names):
        agent = kas.agents[5 + i]
        kube.apply(
            secret(ns, f"{name}-token", agent.token), gitlab_agent(ns, name, kas.agent_url, f"{name}-token")
        )
    before: dict[str, dict[str, Any]] = {}
    for name in names:
        before[name] = wait_for(name, partial(_connected, kube, ns, name), timeout=20)
    # connectedSince has a resolution of one second (metav1.Time): a reconnect within the same second as
    # the first connect would carry the same value and look like no reconnect at all.
    time.sleep(1.1)

    assert operator.stop() == 0  # SIGTERM: drained and exited cleanly
    operator.start()

    for name in names:
        after = wait_for(
            f"{name} reconnected",
            partial(_reconnected, kube, ns, name, before[name]),
            timeout=30,
        )
        assert after["status"]["agentId"] == kas.agents[5 + names.index(name)].id
    wait_for("readiness", lambda: operator.http_status("/readiness") == 200, timeout=10)


def test_missing_secret_then_created(kube: Kube, kas: KasProcess, operator: OperatorProcess) -> None:
    ns, agent = operator.namespace, kas.agents[8]
    kube.apply(gitlab_agent(ns, "early", kas.agent_url, "not-yet"))

    body = wait_for(
        "TokenAvailable False",
        lambda: (
            (b := kube.gla(ns, "early"))
            and (condition(b, "TokenAvailable") or {}).get("status") == "False"
            and b
        ),
    )
    token_condition = condition(body, "TokenAvailable") or {}
    assert token_condition["reason"] == "SecretNotFound"
    assert "not-yet" in token_condition["message"]
    assert phase(body) == "Failed"
    assert body["status"]["lastError"]["hint"]
    wait_for("readiness with a given-up agent", lambda: operator.http_status("/readiness") == 200, timeout=10)

    kube.apply(secret(ns, "not-yet", agent.token))

    wait_for("Connected once the Secret exists", lambda: _connected(kube, ns, "early"), timeout=30)
    assert (condition(kube.gla(ns, "early"), "TokenAvailable") or {}).get("status") == "True"


def test_invalid_resource_never_crashes_the_operator(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    ns, agent = operator.namespace, kas.agents[9]
    # Valid for the apiserver, but the key is missing from the Secret.
    kube.apply(
        secret(ns, "token", agent.token, key="other"),
        gitlab_agent(ns, "wrong-key", kas.agent_url, "token"),
    )
    body = wait_for(
        "KeyNotFound",
        lambda: (
            (b := kube.gla(ns, "wrong-key"))
            and (condition(b, "TokenAvailable") or {}).get("reason") == "KeyNotFound"
            and b
        ),
    )
    assert phase(body) == "Failed"
    # Fixing the Secret (already watched: it carries the label) recovers at once.
    kube.apply(secret(ns, "token", agent.token))
    wait_for("Connected", lambda: _connected(kube, ns, "wrong-key"), timeout=20)
    assert operator.proc is not None
    assert operator.proc.poll() is None


def _watched(kube: Kube, namespace: str, name: str) -> bool:
    code, body = kube.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    assert code == 200, body
    return ((body.get("metadata") or {}).get("labels") or {}).get("agentk.dev/watched") == "true"


def test_watch_label_follows_the_references(kube: Kube, kas: KasProcess, operator: OperatorProcess) -> None:
    """A Secret keeps the watch label while some GitLabAgent refers to it, and loses it after the last."""
    ns, token = operator.namespace, kas.agents[4].token
    kube.apply(secret(ns, "label-1", token), secret(ns, "label-2", token))
    kube.apply(
        gitlab_agent(ns, "labels", kas.agent_url, "label-1"),
        gitlab_agent(ns, "labels-peer", kas.agent_url, "label-2"),
    )
    wait_for("both watched", lambda: _watched(kube, ns, "label-1") and _watched(kube, ns, "label-2"))

    kube.patch_gla(ns, "labels", {"spec": {"tokenSecretRef": {"name": "label-2"}}})
    wait_for("label-1 unwatched", lambda: not _watched(kube, ns, "label-1"))

    kubectl_ok(kube.kubectl("delete", "gla", "labels", "-n", ns, "--timeout=30s"))
    assert _watched(kube, ns, "label-2"), "labels-peer still refers to it"

    kubectl_ok(kube.kubectl("delete", "gla", "labels-peer", "-n", ns, "--timeout=30s"))
    wait_for("label-2 unwatched", lambda: not _watched(kube, ns, "label-2"))


def test_labels_left_while_the_operator_was_stopped_go_at_start(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    """What changed while no operator ran leaves labels behind; the next start takes them off."""
    ns, token = operator.namespace, kas.agents[5].token
    kube.apply(
        secret(ns, "sweep-old", token), secret(ns, "sweep-new", token), secret(ns, "sweep-orphan", token)
    )
    kube.apply(gitlab_agent(ns, "sweep", kas.agent_url, "sweep-old"))
    wait_for("sweep-old watched", lambda: _watched(kube, ns, "sweep-old"))

    operator.stop()
    kube.patch_gla(ns, "sweep", {"spec": {"tokenSecretRef": {"name": "sweep-new"}}})
    status, body = kube.request(
        "PATCH",
        f"/api/v1/namespaces/{ns}/secrets/sweep-orphan",
        {"metadata": {"labels": {"agentk.dev/watched": "true"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, body
    operator.start()

    wait_for("sweep-new watched", lambda: _watched(kube, ns, "sweep-new"))
    wait_for("sweep-old unwatched", lambda: not _watched(kube, ns, "sweep-old"))
    wait_for("sweep-orphan unwatched", lambda: not _watched(kube, ns, "sweep-orphan"))
    assert "removed the watch label" in operator.log()


def test_tunnel_traffic_does_not_turn_into_status_writes(
    kube: Kube, kas: KasProcess, operator: OperatorProcess
) -> None:
    """Every tunnelled request moves the idle/active counts the status shows; a steady stream of CI
    requests must not become a steady stream of status patches (and MODIFIED events for every watcher)."""
    ns, agent = operator.namespace, kas.agents[50]
    kube.apply(secret(ns, "busy-token", agent.token), gitlab_agent(ns, "busy", kas.agent_url, "busy-token"))
    wait_for("Connected", lambda: _connected(kube, ns, "busy"), timeout=20)
    patches = partial(_status_patches, operator)
    wait_for("status settled", lambda: _steady(patches), timeout=10)
    before, sent, deadline = patches(), 0, time.monotonic() + 3.0
    while time.monotonic() < deadline and sent < 500:
        code, body = kas.proxy_get(agent.id, "/version")
        assert code == 200, body
        sent += 1
    after = patches()
    assert sent >= 20
    assert after - before <= 1, f"{after - before} status patches for {sent} tunnelled requests"


def _status_patches(operator: OperatorProcess) -> float:
    # The series exists once the operator wrote any status (Connected was written): None means the name
    # or labels drifted, and `0 - 0 <= 1` would pass without counting anything.
    value = metric_value(operator.metrics(), "agentk_operator_status_patches_total", {"result": "2xx"})
    assert value is not None, "agentk_operator_status_patches_total{result=2xx} is not exported"
    return value


def _steady(read: Callable[[], float]) -> bool:
    first = read()
    time.sleep(0.5)
    return read() == first
