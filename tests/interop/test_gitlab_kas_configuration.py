"""GitLab's kas serving agent configuration from a real Git repository (a GitLab project in a box).

kas reads `.gitlab/agents/<name>/config.yaml` through the Gitaly stand-in (tests/support/gitaly.py) at the
head of the project's default branch, and re-reads it at once when "Rails" reports a push
(tests/support/gitlab_project.py). Checked here: our runtime gets the configuration (agent id, commit)
and each pushed change within a moment (not kas's 5 minute poll); GitLab's agentk gets it the same way
(its log level follows the file); a file kas cannot parse leaves the agent with ConfigurationRejected and
the standard hint; the operator's worker gets it too (ConfigurationReceived, the AGENT ID column).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent_operator.api import ConditionStatus, ConditionType
from agent_operator.status_mapping import AgentFacts, compute_status
from agent_runtime.errors import hint_for
from agent_runtime.runtime import Runtime
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, ServiceAccountRef, WorkerSnapshot, WorkerSpec
from tests.e2e.harness import (
    Kube,
    OperatorProcess,
    condition,
    gitlab_agent,
    phase,
    secret,
    service_account_kubeconfig,
    wait_for,
)
from tests.interop.helpers import AGENT_SA, drop_cluster_grant, prepare_namespace, started_runtime
from tests.interop.test_agentk_reference_kas import agentk_namespace
from tests.support.gitlab_api import Agent, GitLabApi
from tests.support.gitlab_kas import GitLabAgentk, GitLabKas, GitLabPeers
from tests.support.gitlab_project import GitLabProject, agent_config_path
from tests.support.k8s_cluster import LocalCluster

__all__ = ["agentk_namespace"]  # the fixture, shared with the reference-kas agentk test
pytestmark = pytest.mark.timeout(240)

CONFIGURED = Agent(
    id=12,
    name="configured-agent",
    token="glagent-configured-" + "c" * 40,
    project_id=12,
    project_path="interop/configured-agent",
)
"""An agent of its own (own token: kas caches agent_info per token for 5 minutes, and the agent of the
other interop tests has no repository)."""
CONFIG_PATH = agent_config_path(CONFIGURED.name)
FIRST_CONFIG = "ci_access:\n  projects:\n    - id: interop/jobs\n"
MAX_CONFIG_SIZE = 128 * 1024
"""kas's default agent.configuration.max_configuration_file_size: what it sends as TreeEntry.max_size."""
FEATURES = {"gitaly-feature-interop-standin": "true"}
PUSHES = 3
PROMPT_S = 30.0
"""A pushed change must arrive well before kas's own poll (agent.configuration.poll_period, 5 minutes):
only the push event can have delivered it. The figure itself is bench/gitlab_push_config.py's."""


@pytest.fixture(scope="module")
def project(
    gitlab_api: GitLabApi, gitlab_kas: GitLabKas, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitLabProject]:
    """The agent's configuration project, its first configuration committed, pushes reported to kas."""
    with GitLabProject(
        tmp_path_factory.mktemp("configured-project"),
        project_id=CONFIGURED.project_id,
        full_path=CONFIGURED.project_path,
        gitaly_token=secrets.token_hex(16),
        gitaly_features=FEATURES,
    ) as project:
        project.push({CONFIG_PATH: FIRST_CONFIG}, "the agent's configuration")
        project.register(gitlab_api, CONFIGURED)
        project.notify(f"127.0.0.1:{gitlab_kas.api_port}", gitlab_kas.secrets.gitlab_secret)
        yield project


@pytest.fixture(scope="module")
async def runtime(
    project: GitLabProject, gitlab_kas: GitLabKas, k8s_cluster: LocalCluster, operator_credentials: Path
) -> AsyncIterator[tuple[Runtime, WorkerSpec]]:
    namespace = f"interop-config-{secrets.token_hex(3)}"
    k8s_cluster.create_namespace(namespace)
    grant = prepare_namespace(k8s_cluster, namespace)
    spec = WorkerSpec(
        id="interop/configured",
        kas_address=gitlab_kas.ws_url,
        token=Secret(CONFIGURED.token),
        identity=ServiceAccountRef(namespace, AGENT_SA),
    )
    try:
        async with started_runtime(operator_credentials) as runtime:
            runtime.apply(spec)
            yield runtime, spec
    finally:
        drop_cluster_grant(k8s_cluster, grant)
        k8s_cluster.delete_namespace(namespace)


async def _snapshot_with(
    runtime: Runtime, worker_id: str, what: str, ok: Callable[[WorkerSnapshot], bool], within: float
) -> WorkerSnapshot:
    last: WorkerSnapshot | None = None
    try:
        async with asyncio.timeout(within):
            while True:
                last = runtime.snapshot(worker_id)
                if last is not None and ok(last):
                    return last
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:.0f}s waiting for {what} (last: {last!r})") from None


def _at(commit: str) -> Callable[[WorkerSnapshot], bool]:
    return lambda snapshot: snapshot.config_commit == commit


async def test_gitlab_kas_sends_the_configuration_from_the_repository(
    runtime: tuple[Runtime, WorkerSpec], project: GitLabProject, gitlab_api: GitLabApi
) -> None:
    rt, spec = runtime
    head = project.head()
    snap = await _snapshot_with(rt, spec.id, "the first configuration", _at(head), within=60)
    assert snap.agent_id == CONFIGURED.id
    assert snap.configuration_received
    # kas found the branch head in the ref advertisement and read the file at that commit, with the
    # token and features agent_info gave it (the stand-in refuses calls without the token)
    polls = project.gitaly.calls("InfoRefsUploadPack")
    assert polls
    assert {c.relative_path for c in polls} == {project.relative_path}
    reads = [c for c in project.gitaly.calls("TreeEntry") if c.revision == head]
    assert reads, project.gitaly.calls("TreeEntry")
    assert reads[0].path == CONFIG_PATH
    assert reads[0].max_size == MAX_CONFIG_SIZE
    assert reads[0].code == "OK"
    assert all(c.metadata.get(k) == v for c in polls + reads for k, v in FEATURES.items())
    # and told "Rails" what it read (this is how GitLab learns ci_access)
    assert gitlab_api.calls("/agent_configuration")


async def test_each_pushed_change_reaches_the_runtime_at_once(
    runtime: tuple[Runtime, WorkerSpec], project: GitLabProject
) -> None:
    rt, spec = runtime
    await _snapshot_with(rt, spec.id, "the first configuration", lambda s: s.configuration_received, 60)
    took = []
    for i in range(PUSHES):
        config = FIRST_CONFIG + f"observability:\n  logging:\n    level: {('debug', 'info')[i % 2]}\n"
        began = time.monotonic()
        commit = await asyncio.to_thread(project.push, {CONFIG_PATH: config}, f"change {i}")
        await _snapshot_with(rt, spec.id, f"commit {commit}", _at(commit), PROMPT_S)
        took.append(time.monotonic() - began)
    print(f"push -> configuration in our runtime: {', '.join(f'{t * 1000:.0f} ms' for t in took)}")
    assert project.gitaly.calls("TreeEntry")[-1].revision == project.head()


def test_gitlab_agentk_gets_the_configuration_and_its_log_level_follows_the_file(
    gitlab_peers: GitLabPeers,
    gitlab_kas: GitLabKas,
    project: GitLabProject,
    k8s_cluster: LocalCluster,
    admin_kubeconfig: Path,
    agentk_namespace: str,
    tmp_path: Path,
) -> None:
    ns = agentk_namespace
    project.push({CONFIG_PATH: FIRST_CONFIG + "observability:\n  logging:\n    level: info\n"}, "info")
    identity = service_account_kubeconfig(
        Kube(k8s_cluster, admin_kubeconfig), tmp_path / "agentk.kubeconfig", ns, "agentk", duration="1h"
    )
    agentk = GitLabAgentk(
        gitlab_peers.agentk,
        tmp_path / "agentk",
        kas_address=gitlab_kas.grpc_url,
        token=CONFIGURED.token,
        kubeconfig=identity,
        namespace=ns,
        pod_name="agentk-configured",
    )
    agentk.start()
    try:
        # the agent id only comes with a configuration: agentk's leader election names its Lease after it
        wait_for(
            "agentk's configuration (its agent id)", lambda: f'"agent_id":{CONFIGURED.id}' in agentk.log(), 30
        )
        assert '"level":"debug"' not in agentk.log()
        debug = FIRST_CONFIG + "observability:\n  logging:\n    level: debug\n"
        project.push({CONFIG_PATH: debug}, "debug logging")
        # agentk logs each configuration it applies at debug, before applying it: the one after the
        # switch to debug shows up, with its commit
        commit = project.push({CONFIG_PATH: debug + "# once more\n"}, "once more")
        wait_for(
            "agentk's debug line for the configuration after the switch",
            lambda: any('"level":"debug"' in line and commit in line for line in agentk.log().splitlines()),
            timeout=PROMPT_S,
        )
        assert agentk.alive()
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- agentk log ---\n{agentk.log()[-4000:]}") from None
    finally:
        agentk.stop()


def _configured(kube: Kube, namespace: str, commit: str) -> dict[str, Any] | None:
    """The GitLabAgent once ConfigurationReceived=True names `commit`."""
    body = kube.gla(namespace, "configured")
    received = condition(body, "ConfigurationReceived")
    ok = received is not None and received["status"] == "True" and commit in received["message"]
    return body if ok else None


@pytest.mark.e2e
def test_the_operators_worker_gets_the_configuration_and_shows_the_agent_id(
    kube: Kube,
    gitlab_kas: GitLabKas,
    project: GitLabProject,
    operator: OperatorProcess,
    agent_namespace: str,
) -> None:
    ns = agent_namespace
    kube.apply(
        secret(ns, "token", CONFIGURED.token),
        gitlab_agent(ns, "configured", gitlab_kas.agent_url("grpc"), "token"),
    )
    try:
        body = wait_for("the first configuration", lambda: _configured(kube, ns, project.head()), timeout=60)
        assert body["status"]["agentId"] == CONFIGURED.id
        assert phase(body) == "Connected"
        commit = project.push({CONFIG_PATH: FIRST_CONFIG + "# seen by the operator\n"}, "for the operator")
        wait_for("the pushed configuration", lambda: _configured(kube, ns, commit), timeout=PROMPT_S)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{kube.gla(ns, 'configured')}\n{operator.log()[-3000:]}") from None
    table = kube.kubectl("get", "gitlabagents", "-n", ns)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    column = header.index("AGENT ID")
    assert row.startswith("configured")
    assert row[column:].split()[0] == str(CONFIGURED.id), table.stdout


async def test_a_configuration_file_kas_cannot_parse_is_rejected_with_the_hint(
    runtime: tuple[Runtime, WorkerSpec], project: GitLabProject
) -> None:
    """Last in the module: after a rejection the worker backs off (10 s and more) before asking again."""
    rt, spec = runtime
    await _snapshot_with(rt, spec.id, "a configuration", lambda s: s.configuration_received, 60)
    bad = "observability:\n  logging:\n    levle: debug\n"
    try:
        await asyncio.to_thread(project.push, {CONFIG_PATH: bad}, "a typo")
        snap = await _snapshot_with(
            rt,
            spec.id,
            "ConfigurationRejected",
            lambda s: s.last_error is not None and s.last_error.reason is ErrorReason.CONFIGURATION_REJECTED,
            PROMPT_S,
        )
    finally:
        await asyncio.to_thread(project.push, {CONFIG_PATH: FIRST_CONFIG}, "fixed")
    assert snap.last_error is not None
    assert "levle" in snap.last_error.message, snap.last_error
    facts = AgentFacts(
        generation=1, kas_address=spec.kas_address, service_account="ns/agent", service_account_found=True
    )
    status = compute_status(facts, snap, None, datetime.now(UTC))
    received = status.condition(ConditionType.CONFIGURATION_RECEIVED)
    assert received is not None
    assert (received.status, received.reason) == (ConditionStatus.FALSE, "ConfigurationRejected")
    assert received.message.endswith(hint_for(ErrorReason.CONFIGURATION_REJECTED)), received.message
    assert "Config:" in received.message
    assert "levle" in received.message
    connected = status.condition(ConditionType.CONNECTED)
    assert connected is not None
    assert connected.status is ConditionStatus.TRUE, connected
