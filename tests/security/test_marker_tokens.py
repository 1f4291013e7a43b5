"""Secrets never leak (issue 13 §6): every agent token and CI job token of this run carries a marker
that appears nowhere else; after a run through the happy path and the failure paths where tokens leak,
nothing the operator or kas shows may contain a marker.

The operator runs as deployed (a process under manifests/' ServiceAccount and RBAC) with DEBUG logging,
against the reference kas as a process with its Kubernetes API proxy. The paths: an agent that connects
and serves CI jobs; its token rotated (kas knows both for a while, then only the new one); kas SIGKILLed
and started again under traffic; a token kas does not know; a kas nobody listens on; an agent
configuration kas cannot parse; a Secret that did not opt in; a key the Secret lacks; a Secret of another
namespace named by a reference the CRD cannot express (`namespace` refused by strict validation, dropped
without it); CI requests with a wrong job token and to an agent that is not connected.

Scanned afterwards, for each marker and each token's random part and base64 prefix: the operator's log
(its workers are the runtime: one process), kas's log, both /metrics, kas's /api/connected_agents, every
GitLabAgent of the namespace (status included), every Event of the cluster (core and events.k8s.io), and
every answer kas's proxy gave the CI client (its error texts). The scan finds the tokens in the Secrets
themselves (it is not blind), and the logs are DEBUG logs that name every agent (they are not empty).
"""

from __future__ import annotations

import functools
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import (
    CONFIG_PROJECT,
    JOB_PROJECT,
    KasAgent,
    KasProcess,
    Kube,
    OperatorProcess,
    condition,
    gitlab_agent,
    phase,
    service_account,
    wait_for,
)
from tests.e2e.harness import secret as token_secret
from tests.reliability.figures import record
from tests.support.marker_scan import Markers
from tests.support.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

MARKERS = Markers()


@dataclass(frozen=True)
class Tokens:
    good: str = MARKERS.token("good")
    rotated: str = MARKERS.token("rotated")
    unknown: str = MARKERS.token("unknown")
    registered: str = MARKERS.token("registered")
    """What kas knows for the agent whose Secret holds `unknown`."""
    unreachable: str = MARKERS.token("unreachable")
    bad_config: str = MARKERS.token("bad_config")
    not_opted_in: str = MARKERS.token("not_opted_in")
    other_key: str = MARKERS.token("other_key")
    other_namespace: str = MARKERS.token("other_namespace")
    job: str = MARKERS.token("job")
    wrong_job: str = MARKERS.token("wrong_job")


TOKENS = Tokens()
GOOD, WRONG, UNREACHABLE, BAD_CONFIG, OTHER_NS = 3100, 3101, 3102, 3103, 3104


def _agents() -> list[KasAgent]:
    return [
        KasAgent(GOOD, "marker-good", (TOKENS.good,)),
        KasAgent(WRONG, "marker-wrong", (TOKENS.registered,)),
        KasAgent(UNREACHABLE, "marker-unreachable", (TOKENS.unreachable,)),
        KasAgent(BAD_CONFIG, "marker-badconfig", (TOKENS.bad_config,)),
        KasAgent(OTHER_NS, "marker-otherns", (TOKENS.other_namespace,)),
    ]


def _ci_job(token: str) -> dict[str, Any]:
    return {
        "token": token,
        "job_id": 5151,
        "pipeline_id": 77,
        "project": {"id": 11, "path": JOB_PROJECT},
        "user": {"id": 9, "username": "alice"},
    }


@pytest.fixture
def kas(tmp_path: Path) -> Iterator[KasProcess]:
    server = KasProcess(tmp_path / "kas", _agents(), access={"ci_jobs": [_ci_job(TOKENS.job)]})
    # An agent configuration kas cannot parse: a list where ci_access needs a mapping.
    bad = server.repos / CONFIG_PROJECT / ".gitlab" / "agents" / "marker-badconfig" / "config.yaml"
    bad.write_text("ci_access: [not, a, mapping\n")
    config_path = server.work_dir / "kas.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["log_level"] = "DEBUG"  # the most kas ever writes
    config_path.write_text(yaml.safe_dump(config))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def operator(
    deployed_kube: Kube, operator_credentials: Path, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    deployed_kube.apply(service_account(namespace, "agent"))
    (tmp_path / "operator").mkdir()
    proc = OperatorProcess(tmp_path / "operator", operator_credentials, namespace, "--log-level=DEBUG")
    proc.start()
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.log()[-3000:]


@dataclass
class CiClient:
    """CI requests through kas's proxy; keeps every answer (its text is scanned too)."""

    kas: KasProcess
    answers: list[tuple[int, str]] = field(default_factory=list)

    def get(self, agent_id: int, job_token: str, path: str = "/version") -> int:
        context = ssl.create_default_context(cafile=str(self.kas.ca_file))
        request = urllib.request.Request(f"https://127.0.0.1:{self.kas.proxy_port}{path}")
        request.add_header("Authorization", f"Bearer ci:{agent_id}:{job_token}")
        try:
            with urllib.request.urlopen(request, context=context, timeout=20) as response:  # noqa: S310
                status, raw = int(response.status), response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except OSError as err:  # nobody listens (kas down): the error text is scanned as well
            status, raw = 0, str(err).encode()
        self.answers.append((status, raw.decode(errors="replace")))
        return status


def _reason(body: Mapping[str, Any] | None) -> str | None:
    return (((body or {}).get("status") or {}).get("lastError") or {}).get("reason")


def _token_reason(body: Mapping[str, Any] | None) -> str | None:
    return (condition(body, "TokenAvailable") or {}).get("reason")


def _get_json(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        return bytes(response.read()).decode()


def _cross_namespace_reference(kube: Kube, ns: str, other: str) -> None:
    """A GitLabAgent naming a Secret of namespace `other`: strict validation refuses the field; without
    it the field is dropped, so the reference means `ns`'s Secret of that name (which does not exist)."""
    body = gitlab_agent(ns, "marker-otherns", "grpc://127.0.0.1:1", "elsewhere-token")
    body["spec"]["tokenSecretRef"]["namespace"] = other
    refused = kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    assert refused.returncode != 0
    assert 'unknown field "spec.tokenSecretRef.namespace"' in refused.stderr, refused.stderr
    path = f"/apis/agentk.dev/v1alpha1/namespaces/{ns}/gitlabagents?fieldValidation=Ignore"
    code, created = kube.request("POST", path, body)
    assert code == 201, created
    assert created["spec"]["tokenSecretRef"] == {"name": "elsewhere-token", "key": "token"}, created


def _reads(
    gla: Callable[[str], dict[str, Any] | None],
    name: str,
    read: Callable[[Mapping[str, Any] | None], str | None],
    expected: str,
) -> bool:
    return read(gla(name)) == expected


def _wait_for_failures(gla: Callable[[str], dict[str, Any] | None]) -> None:
    """Each failing agent reads its own reason (each needed its token, or refused to read it)."""
    expected_errors = {
        "marker-wrong": "Unauthenticated",
        "marker-unreachable": "KasUnreachable",
        "marker-badconfig": "ConfigurationRejected",
    }
    for name, reason in expected_errors.items():
        wait_for(f"{name}: {reason}", functools.partial(_reads, gla, name, _reason, reason), timeout=60)
    expected_token = {
        "marker-notoptedin": "SecretNotOptedIn",
        "marker-missingkey": "KeyNotFound",
        "marker-otherns": "SecretNotFound",
    }
    for name, reason in expected_token.items():
        wait_for(f"{name}: {reason}", functools.partial(_reads, gla, name, _token_reason, reason), timeout=60)


def test_no_token_in_logs_status_events_metrics_or_errors(
    deployed_kube: Kube,
    operator: OperatorProcess,
    kas: KasProcess,
    namespace: str,
    k8s_cluster: Any,
) -> None:
    kube, ns = deployed_kube, namespace
    other = f"{ns}-other"
    k8s_cluster.create_namespace(other)
    ci = CiClient(kas)
    closed = free_port()
    try:
        kube.apply(
            token_secret(ns, "good-token", TOKENS.good),
            token_secret(ns, "unknown-token", TOKENS.unknown),
            token_secret(ns, "unreachable-token", TOKENS.unreachable),
            token_secret(ns, "badconfig-token", TOKENS.bad_config),
            token_secret(ns, "two-keys", TOKENS.other_key, key="other"),
            {
                **token_secret(ns, "not-opted-in", TOKENS.not_opted_in),
                "metadata": {"name": "not-opted-in", "namespace": ns},
            },
            token_secret(other, "elsewhere-token", TOKENS.other_namespace),
            gitlab_agent(ns, "marker-good", kas.agent_url, "good-token"),
            gitlab_agent(ns, "marker-wrong", kas.agent_url, "unknown-token"),
            gitlab_agent(ns, "marker-unreachable", f"grpc://127.0.0.1:{closed}", "unreachable-token"),
            gitlab_agent(ns, "marker-badconfig", kas.agent_url, "badconfig-token"),
            gitlab_agent(ns, "marker-notoptedin", kas.agent_url, "not-opted-in"),
            gitlab_agent(ns, "marker-missingkey", kas.agent_url, "two-keys"),
        )
        _cross_namespace_reference(kube, ns, other)

        gla = functools.partial(kube.gla, ns)
        wait_for("marker-good Connected", lambda: phase(gla("marker-good")) == "Connected", timeout=60)
        wait_for("a CI request served", lambda: ci.get(GOOD, TOKENS.job) == 200)
        assert ci.get(GOOD, TOKENS.wrong_job) == 401
        assert ci.get(WRONG, TOKENS.job) == 502  # kas knows the agent, but it never connected
        _wait_for_failures(gla)

        # Rotation: kas accepts both tokens, the Secret changes, then kas forgets the old one.
        kas.write_agents({GOOD: [TOKENS.good, TOKENS.rotated]})
        kube.apply(token_secret(ns, "good-token", TOKENS.rotated))
        wait_for(
            "the TokenRotated event",
            lambda: "TokenRotated" in {e["reason"] for e in kube.events(ns, "marker-good")},
            timeout=60,
        )
        kas.write_agents({GOOD: [TOKENS.rotated]})
        wait_for("served after rotation", lambda: ci.get(GOOD, TOKENS.job) == 200, timeout=60)

        # kas crashes under traffic and comes back: every failure path runs once more.
        assert kas._proc is not None  # the harness stops kas only politely
        kas._proc.kill()
        kas._proc.wait(timeout=10)
        wait_for("marker-good left Connected", lambda: phase(gla("marker-good")) != "Connected", timeout=60)
        assert ci.get(GOOD, TOKENS.job) == 0  # nobody listens: no answer
        kas.start()
        wait_for("served after kas restarted", lambda: ci.get(GOOD, TOKENS.job) == 200, timeout=90)
        wait_for("marker-good Connected again", lambda: phase(gla("marker-good")) == "Connected", timeout=60)
        _wait_for_failures(gla)
        # The other namespace's token never reached kas: the agent it belongs to never registered.
        agents_url = f"http://127.0.0.1:{kas.observability_port}/api/connected_agents"
        assert json.loads(_get_json(f"{agents_url}?agent_id={OTHER_NS}"))["agents"] == []

        _, glas = kube.request("GET", f"/apis/agentk.dev/v1alpha1/namespaces/{ns}/gitlabagents")
        _, core_events = kube.request("GET", "/api/v1/events")
        _, new_events = kube.request("GET", "/apis/events.k8s.io/v1/events")
        sources = {
            "operator log": operator.log(),
            "kas log": kas.log_path.read_text(errors="replace"),
            "operator /metrics": operator.metrics(),
            "kas /metrics": _get_json(f"http://127.0.0.1:{kas.observability_port}/metrics"),
            "kas /api/connected_agents": _get_json(agents_url),
            "GitLabAgents": json.dumps(glas),
            "Events (core)": json.dumps(core_events),
            "Events (events.k8s.io)": json.dumps(new_events),
            "answers to CI clients": json.dumps(ci.answers),
        }
        statuses = {item["metadata"]["name"]: f"{phase(item)}/{_reason(item)}" for item in glas["items"]}
        _, secret_list = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets")
    finally:
        k8s_cluster.delete_namespace(other)

    # Not blind: the scan finds the tokens where they belong, and the logs are DEBUG logs of these agents.
    in_secrets = set(MARKERS.scan({"Secrets": json.dumps(secret_list)}).get("Secrets", []))
    assert {"rotated (base64)", "unknown (base64)", "not_opted_in (base64)"} <= in_secrets, in_secrets
    assert all(f"marker-{n}" in sources["operator log"] for n in ("good", "wrong", "unreachable"))
    assert '"level": "debug"' in sources["operator log"]
    assert '"level": "debug"' in sources["kas log"]
    hits = MARKERS.scan(sources)
    record(
        "marker tokens",
        tokens=len(MARKERS.tokens),
        scanned_chars={k: len(v) for k, v in sources.items()},
        statuses=statuses,
        ci_answers=sorted({status for status, _ in ci.answers}),
        hits=hits,
    )
    assert hits == {}, {source: hits[source] for source in hits}
