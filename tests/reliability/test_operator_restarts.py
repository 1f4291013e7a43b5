"""The operator restarted (SIGTERM), killed (SIGKILL) and run as two replicas, all while requests flow
(issue 13 §9).

The operator runs as deployed (tests/e2e/harness.py: a process under manifests/' ServiceAccount and RBAC),
five GitLabAgents against the reference kas as a process, and a steady client sends requests through
kas's proxy to every agent. Afterwards every agent must end with exactly one worker and a correct status,
and requests may have been lost only while no replica ran the agents:

- exactly one worker: kas's established agent connections equal the number of agents (one channel per
  worker) while every agent is served (so each has at least one), exactly one live replica reports the
  agent connected (`agentk_connected`), and kas holds a Register entry for every agent from a live pod;
- correct status: Connected, the agent id kas gave, observedGeneration = generation, connectedSince
  written after the restart (by the new worker);
- requests: no failure ended before the stop; none started after the agent served again.
"""

from __future__ import annotations

import datetime
import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import (
    KasAgent,
    KasProcess,
    Kube,
    OperatorProcess,
    gitlab_agent,
    install_manifests,
    make_agents,
    metric_value,
    operator_kubeconfig,
    secret,
    service_account,
    wait_for,
)
from tests.e2e.test_peering import KOPF_PEERING_CRD, _namespaced_peering_rights
from tests.reliability.figures import record
from tests.reliability.fleet import (
    CONNECTIONS_PER_WORKER,
    SteadyClient,
    connected_since,
    kas_agent_connections,
    pod_name,
    registrations,
    sigkill,
)
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)

AGENTS = 5
SETTLE_S = 2.0
"""The end state must hold this long (a second worker would show up as a second connection)."""


@dataclass(frozen=True)
class Stage:
    kube: Kube
    kas: KasProcess
    credentials: Path
    namespace: str
    agents: tuple[KasAgent, ...]

    def name(self, agent: KasAgent) -> str:
        return f"r-{agent.id}"


@pytest.fixture(scope="module")
def module_kube(k8s_cluster: LocalCluster, admin_kubeconfig: Path) -> Kube:
    kube = Kube(k8s_cluster, admin_kubeconfig)
    install_manifests(kube)
    return kube


@pytest.fixture(scope="module")
def fleet_kas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KasProcess]:
    kas = KasProcess(tmp_path_factory.mktemp("restart-kas"), make_agents(AGENTS))
    kas.start()
    try:
        yield kas
    finally:
        kas.stop()


@pytest.fixture
def stage(module_kube: Kube, fleet_kas: KasProcess, namespace: str, tmp_path: Path) -> Stage:
    """The namespace with its ServiceAccount, token Secrets and GitLabAgents (no operator yet)."""
    kube, kas = module_kube, fleet_kas
    credentials = operator_kubeconfig(kube, tmp_path / "operator.kubeconfig")
    stage = Stage(kube, kas, credentials, namespace, tuple(kas.agents))
    objects = [service_account(namespace, "agent")]
    for agent in stage.agents:
        objects.append(secret(namespace, f"{stage.name(agent)}-token", agent.token))
        objects.append(
            gitlab_agent(namespace, stage.name(agent), kas.agent_url, f"{stage.name(agent)}-token")
        )
    kube.apply(*objects)
    return stage


def _operator(stage: Stage, tmp_path: Path, label: str, *args: str) -> OperatorProcess:
    work = tmp_path / label
    work.mkdir()
    return OperatorProcess(work, stage.credentials, stage.namespace, *args)


def _all_served(stage: Stage, client: SteadyClient, since: float, timeout: float = 60.0) -> dict[int, float]:
    return client.wait_recovered(since, timeout)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _assert_one_worker_each(
    stage: Stage, live: list[OperatorProcess], restarted_at: datetime.datetime
) -> int:
    """The end state (see the module docstring); returns the extra Register entries of live pods."""
    count = len(stage.agents) * CONNECTIONS_PER_WORKER
    seen: list[int] = []

    def steady() -> bool:
        """`count` connections at every look for SETTLE_S: the end state, not a worker's replacement
        in passing (which dials the new connection before the old one closes)."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            seen.append(kas_agent_connections(stage.kas))
            if seen[-1] != count:
                return False
            time.sleep(0.2)
        return True

    try:
        wait_for(f"{count} agent connections at kas for {SETTLE_S} s", steady, timeout=30)
    except AssertionError as err:
        raise AssertionError(f"{err}; connections seen: {seen[-40:]}") from None
    texts = [proc.metrics() for proc in live]
    for agent in stage.agents:
        worker = f"{stage.namespace}/{stage.name(agent)}"
        running = [
            i for i, text in enumerate(texts) if metric_value(text, "agentk_connected", {"agent": worker})
        ]
        assert len(running) == 1, (worker, running)
        since = wait_for(
            f"{worker} Connected",
            functools.partial(connected_since, stage.kube, stage.namespace, stage.name(agent)),
        )
        assert datetime.datetime.fromisoformat(since) >= restarted_at, (worker, since, restarted_at)
        body = stage.kube.gla(stage.namespace, stage.name(agent))
        assert body is not None
        assert body["status"]["agentId"] == agent.id
        assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    entries = registrations(stage.kas, [pod_name(proc) for proc in live])
    assert set(entries) == {a.id for a in stage.agents}, entries
    return sum(len(ids) - 1 for ids in entries.values())


def _losses(client: SteadyClient, stopped: float, recovered: dict[int, float]) -> dict[str, object]:
    """Failed requests before the stop, while no replica ran the agents, and after they served again."""
    failed = [o for o in client.snapshot() if o.status != 200]
    statuses = sorted({o.status for o in failed})
    before = [o for o in failed if o.ended < stopped]
    after = [o for o in failed if o.started > recovered[o.agent_id]]
    return {
        "requests": len(client.snapshot()),
        "failed_before_stop": len(before),
        "failed_while_down": len(failed) - len(before) - len(after),
        "failed_after_recovery": len(after),
        "failure_statuses": statuses,
    }


def _load_then(stage: Stage, client: SteadyClient) -> None:
    """Every agent served, then a second of load before the fault."""
    client.start()
    _all_served(stage, client, 0.0)
    time.sleep(1.0)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_restart_mid_load(stage: Stage, tmp_path: Path, signal_name: str) -> None:
    # The label names the pod (POD_NAME): distinct per test, as kas keeps Register entries for minutes.
    operator = _operator(stage, tmp_path, f"operator-{signal_name.lower()}")
    client = SteadyClient(stage.kas, stage.agents)
    try:
        operator.start()
        _load_then(stage, client)
        restarted_at = _utc_now()
        stopped = time.monotonic()
        if signal_name == "SIGTERM":
            assert operator.stop() == 0, operator.log()[-3000:]
        else:
            sigkill(operator)
        down_s = time.monotonic() - stopped
        operator.start()
        recovered = _all_served(stage, client, time.monotonic())
        extra = _assert_one_worker_each(stage, [operator], restarted_at)
        time.sleep(1.0)  # load after recovery, counted below
    finally:
        client.stop()
        code = operator.stop()
    assert code == 0, operator.log()[-3000:]
    losses = _losses(client, stopped, recovered)
    record(
        f"operator {signal_name} mid-load",
        agents=len(stage.agents),
        stopped_s=down_s,
        recovered_after_s=max(recovered.values()) - stopped,
        extra_registrations=extra,
        **losses,
    )
    assert losses["failed_before_stop"] == 0, losses
    assert losses["failed_after_recovery"] == 0, losses


def test_two_replicas_at_once(stage: Stage, tmp_path: Path) -> None:
    """Both replicas start at the same moment (kopf peering, explicit priorities); exactly one ends up
    running the agents, and then no request is lost; the active one stops (SIGTERM) and the standby
    takes over."""
    stage.kube.apply(KOPF_PEERING_CRD, *_namespaced_peering_rights(stage.namespace))
    waited = stage.kube.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/kopfpeerings.kopf.dev"
    )
    assert waited.returncode == 0, waited.stderr
    high = _operator(stage, tmp_path, "high", "--peering=reliability", "--peering-priority=200")
    low = _operator(stage, tmp_path, "low", "--peering=reliability", "--peering-priority=100")
    client = SteadyClient(stage.kas, stage.agents)
    try:
        started_at = _utc_now()
        starters = [
            threading.Thread(target=proc.start, name=f"start-{proc.work_dir.name}") for proc in (high, low)
        ]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join(timeout=60)
        assert high.proc is not None, high.log()[-2000:]
        assert low.proc is not None, low.log()[-2000:]
        # The replica that came up first may run the agents until it sees the other one and pauses;
        # the load starts once that settled (exactly one worker each), and must then lose nothing.
        extra_both = _assert_one_worker_each(stage, [high, low], started_at)
        _load_then(stage, client)
        time.sleep(2.0)
        steady_failures = sum(1 for o in client.snapshot() if o.status != 200)

        handed_at = _utc_now()
        stopped = time.monotonic()
        high_code = high.stop()
        assert high_code == 0, high.log()[-3000:]
        recovered = _all_served(stage, client, time.monotonic(), timeout=90)
        extra_low = _assert_one_worker_each(stage, [low], handed_at)
        time.sleep(1.0)
    finally:
        client.stop()
        high.stop()  # still running only if the test failed before the handover
        low_code = low.stop()
    assert low_code == 0, low.log()[-3000:]
    losses = _losses(client, stopped, recovered)
    record(
        "two operator replicas",
        agents=len(stage.agents),
        failed_with_both_running=steady_failures,
        takeover_after_s=max(recovered.values()) - stopped,
        extra_registrations=extra_both + extra_low,
        **losses,
    )
    assert steady_failures == 0
    assert losses["failed_before_stop"] == 0, losses
    assert losses["failed_after_recovery"] == 0, losses
