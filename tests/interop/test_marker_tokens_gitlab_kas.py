"""Secrets never leak, with GitLab's own kas (issue 13 §6): the interop half of
tests/security/test_marker_tokens.py.

The operator (as deployed, DEBUG logging) runs GitLabAgents on GitLab's kas whose agent and CI job tokens
carry a run-unique marker (tests/support/marker_scan.py): an agent that connects over ws:// and serves a
CI job's kubectl; its token rotated; kas SIGKILLed and started again; a token GitLab does not know; a CI
request with a job token GitLab does not know. Afterwards nothing may contain a marker: the operator's
log, GitLab kas's (debug) log, both /metrics, every GitLabAgent of the namespace, every Event of the
cluster and everything kubectl printed.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Kube, OperatorProcess, gitlab_agent, phase, secret, wait_for
from tests.interop.conftest import KasFactory
from tests.interop.helpers import kubectl_sync
from tests.reliability.figures import record
from tests.support.gitlab_api import Agent, CiJob, GitLabApi
from tests.support.gitlab_kas import GitLabKas
from tests.support.marker_scan import Markers

pytestmark = [pytest.mark.timeout(180), pytest.mark.e2e]

MARKERS = Markers()
GOOD = Agent(id=4100, name="marker-good", token=MARKERS.token("good"))
ROTATED = Agent(id=GOOD.id, name=GOOD.name, token=MARKERS.token("rotated"))
WRONG = Agent(id=4101, name="marker-wrong", token=MARKERS.token("registered"))
UNKNOWN = MARKERS.token("unknown")
JOB = MARKERS.token("job")
WRONG_JOB = MARKERS.token("wrong_job")


@pytest.fixture
def debug_operator(
    kube: Kube, operator_credentials: Path, agent_namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    (tmp_path / "operator").mkdir()
    proc = OperatorProcess(tmp_path / "operator", operator_credentials, agent_namespace, "--log-level=DEBUG")
    proc.start()
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()[-3000:]


def _kubectl(kas: GitLabKas, bearer: str, path: Path, outputs: list[str]) -> bool:
    done = kubectl_sync(kas.kubeconfig(bearer, path), "get", "--raw", "/version", "--request-timeout=10s")
    outputs.append(done.stdout + done.stderr)
    return done.returncode == 0


def _reason(kube: Kube, ns: str, name: str) -> str | None:
    return (((kube.gla(ns, name) or {}).get("status") or {}).get("lastError") or {}).get("reason")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        return bytes(response.read()).decode()


def test_no_token_leaks_with_gitlab_kas(
    kube: Kube,
    gitlab_api: GitLabApi,
    start_gitlab_kas: KasFactory,
    debug_operator: OperatorProcess,
    agent_namespace: str,
    tmp_path: Path,
) -> None:
    ns = agent_namespace
    for agent in (GOOD, WRONG):
        gitlab_api.add_agent(agent)
    gitlab_api.add_job(CiJob(token=JOB, agents={GOOD.id: {"agent": {}}}, job_id=4242))
    kas = start_gitlab_kas()
    outputs: list[str] = []
    kubeconfig = tmp_path / "ci.kubeconfig"
    kube.apply(
        secret(ns, "good-token", GOOD.token),
        secret(ns, "unknown-token", UNKNOWN),
        gitlab_agent(ns, GOOD.name, kas.agent_url("ws"), "good-token"),
        gitlab_agent(ns, WRONG.name, kas.agent_url("grpc"), "unknown-token"),
    )
    wait_for("Connected", lambda: phase(kube.gla(ns, GOOD.name)) == "Connected", timeout=60)
    bearer = f"ci:{GOOD.id}:{JOB}"
    wait_for("a CI job served", lambda: _kubectl(kas, bearer, kubeconfig, outputs), timeout=60)
    assert not _kubectl(kas, f"ci:{GOOD.id}:{WRONG_JOB}", kubeconfig, outputs)
    wait_for("Unauthenticated", lambda: _reason(kube, ns, WRONG.name) == "Unauthenticated", timeout=60)

    gitlab_api.add_agent(ROTATED)  # GitLab knows both tokens of the agent for a while
    kube.apply(secret(ns, "good-token", ROTATED.token))
    wait_for(
        "the TokenRotated event",
        lambda: "TokenRotated" in {e["reason"] for e in kube.events(ns, GOOD.name)},
        timeout=60,
    )
    wait_for("served after rotation", lambda: _kubectl(kas, bearer, kubeconfig, outputs), timeout=60)

    kas.kill()
    wait_for("not Connected", lambda: phase(kube.gla(ns, GOOD.name)) != "Connected", timeout=60)
    kas.start()
    wait_for("served after kas restarted", lambda: _kubectl(kas, bearer, kubeconfig, outputs), timeout=90)
    # Connected again, not Degraded: this GitLab has no Gitaly, so kas sends no configuration after the
    # restart, and the GetConfiguration stream's "unreachable" of the kill is refuted by the tunnels.
    wait_for("Connected again", lambda: phase(kube.gla(ns, GOOD.name)) == "Connected", timeout=30)

    _, glas = kube.request("GET", f"/apis/agentk.dev/v1alpha1/namespaces/{ns}/gitlabagents")
    _, core_events = kube.request("GET", "/api/v1/events")
    _, new_events = kube.request("GET", "/apis/events.k8s.io/v1/events")
    sources = {
        "operator log": debug_operator.log(),
        "GitLab kas log": kas.log_path.read_text(errors="replace"),
        "operator /metrics": debug_operator.metrics(),
        "GitLab kas /metrics": _get(f"http://127.0.0.1:{kas.observability_port}/metrics"),
        "GitLabAgents": json.dumps(glas),
        "Events (core)": json.dumps(core_events),
        "Events (events.k8s.io)": json.dumps(new_events),
        "kubectl output": "\n".join(outputs),
    }
    _, secret_list = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets")
    in_secrets = set(MARKERS.scan({"Secrets": json.dumps(secret_list)}).get("Secrets", []))
    assert {"rotated (base64)", "unknown (base64)"} <= in_secrets, in_secrets  # the scan is not blind
    assert '"level": "debug"' in sources["operator log"]
    assert GOOD.name in sources["operator log"]
    hits = MARKERS.scan(sources)
    record(
        "marker tokens, GitLab kas",
        tokens=len(MARKERS.tokens),
        scanned_chars={k: len(v) for k, v in sources.items()},
        hits=hits,
    )
    assert hits == {}, hits
