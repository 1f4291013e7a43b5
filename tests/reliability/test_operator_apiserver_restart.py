"""The operator's status writes resume after a kube-apiserver restart (issue 13 §3).

The operator runs as a process under its own ServiceAccount (tests/e2e/harness.py) against this test's
own LocalCluster; the apiserver restarts on the same port with etcd kept. Afterwards kas is SIGKILLed and
started again: the GitLabAgent's status must follow (Connected → not Connected → Connected), which only
happens if the operator's watches and status patches came back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import (
    KasProcess,
    Kube,
    OperatorProcess,
    gitlab_agent,
    install_manifests,
    make_agents,
    operator_kubeconfig,
    phase,
    secret,
    service_account,
    wait_for,
)
from tests.reliability.figures import record
from tests.support.k8s_cluster import ClusterStartError, LocalCluster

NAMESPACE = "operator-restart"


@pytest.fixture
def own_cluster(k8s_cluster: LocalCluster) -> Iterator[LocalCluster]:
    cluster = LocalCluster(k8s_cluster.assets, stop_grace=5.0)
    cluster.start()
    try:
        cluster.create_namespace(NAMESPACE)
        yield cluster
    finally:
        cluster.stop()


def _restart(cluster: LocalCluster) -> int:
    """Stop and start the apiserver; attempts needed (see test_apiserver_restart._start_again)."""
    cluster.stop_apiserver()
    time.sleep(2.0)
    for attempt in (1, 2):
        try:
            cluster.start_apiserver()
        except ClusterStartError:
            if attempt == 2:
                raise
        else:
            return attempt
    raise AssertionError("unreachable")


def _sigkill(kas: KasProcess) -> None:
    """SIGKILL: the worker reads the lost connection as KasUnreachable at once. (A graceful stop leaves
    the agent Connected: test_kas_graceful_stop.py.)"""
    proc = kas._proc  # the harness only stops kas politely
    assert proc is not None
    proc.kill()
    proc.wait(timeout=10)


def test_status_writes_resume_after_an_apiserver_restart(own_cluster: LocalCluster, tmp_path: Path) -> None:
    kube = Kube(own_cluster, own_cluster.admin_kubeconfig)
    install_manifests(kube)
    agent = make_agents(1)[0]
    kas = KasProcess(tmp_path / "kas", [agent])
    kas.start()
    (tmp_path / "operator").mkdir()
    operator = OperatorProcess(
        tmp_path / "operator", operator_kubeconfig(kube, tmp_path / "operator.kubeconfig"), NAMESPACE
    )
    try:
        kube.apply(
            secret(NAMESPACE, "agent-token", agent.token),
            service_account(NAMESPACE, "agent"),
            gitlab_agent(NAMESPACE, "restart", kas.agent_url, "agent-token"),
        )
        operator.start()
        wait_for("Connected", lambda: phase(kube.gla(NAMESPACE, "restart")) == "Connected", timeout=60)

        attempts = _restart(own_cluster)
        restarted = time.monotonic()
        _sigkill(kas)  # a change the operator must write into the status, through the restarted apiserver
        wait_for(
            "the status to leave Connected",
            lambda: phase(kube.gla(NAMESPACE, "restart")) not in (None, "Connected"),
            timeout=120,
        )
        left = time.monotonic() - restarted
        kas.start()
        wait_for("Connected again", lambda: phase(kube.gla(NAMESPACE, "restart")) == "Connected", timeout=120)
        back = time.monotonic() - restarted
        assert operator.proc is not None
        assert operator.proc.poll() is None, operator.log()[-3000:]
    finally:
        operator.stop()
        kas.stop()
    record(
        "operator status after an apiserver restart",
        apiserver_start_attempts=attempts,
        status_left_connected_after_s=left,
        status_connected_again_after_s=back,
    )
