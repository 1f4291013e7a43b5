"""A real Prometheus (Debian's) scrapes the operator on loopback with the shipped rules and dashboard.

The operator runs as in tests/e2e (its own ServiceAccount, the reference kas). Prometheus scrapes and
evaluates every second under the job name the ServiceMonitor gives the target (its jobLabel), with
manifests/monitoring/prometheusrule.yaml unchanged: the token alert has no `for:`, so nothing needs
scaling. The test proves: the scrape passes `promtool check metrics`; every dashboard panel's
expression returns data; GitLab revoking the agent's token makes GitLabAgentTokenRejected fire, naming
the resource; the fixed Secret resolves it.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import KasProcess, Kube, OperatorProcess, gitlab_agent, phase, secret, wait_for
from tests.monitoring.conftest import require
from tests.monitoring.test_rules import dashboard, write_rules
from tests.support.prometheus import PrometheusServer, promtool

JOB = "gitlab-agent-operator"
"""The job name the ServiceMonitor gives the target (its jobLabel: the Service's app.kubernetes.io/name);
the rules use it."""
RATE_INTERVAL = "5m"
"""What the test puts for Grafana's $__rate_interval: wider than the test, so every rate has samples."""


@pytest.fixture
def prometheus(operator: OperatorProcess, tmp_path: Path) -> Iterator[PrometheusServer]:
    require("prometheus")
    rules = write_rules(tmp_path)
    server = PrometheusServer(tmp_path / "prometheus", JOB, [f"127.0.0.1:{operator.port}"], [rules])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def panel_queries() -> dict[str, str]:
    """Every panel's expression, with the dashboard's variables as Grafana fills them for `All`."""
    queries: dict[str, str] = {}
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            expr = expr.replace("$job", JOB).replace("$agent", ".+")
            assert "$" not in expr, expr
            queries[f"{panel['title']} ({target['refId']})"] = expr
    return queries


def _data(prometheus: PrometheusServer, expr: str) -> list[dict[str, Any]] | None:
    """The query's samples when there are some and none is NaN (0/0: a panel with nothing to show)."""
    result = prometheus.query(expr)
    values = [float(sample["value"][1]) for sample in result]
    return result if values and not any(math.isnan(v) for v in values) else None


def _firing(prometheus: PrometheusServer, name: str, agent: str) -> dict[str, Any] | None:
    for alert in prometheus.alerts():
        labels = alert["labels"]
        if labels.get("alertname") == name and labels.get("agent") == agent and alert["state"] == "firing":
            return dict(alert)
    return None


def _connected(kube: Kube, ns: str, name: str) -> bool:
    return phase(kube.gla(ns, name)) == "Connected"


def test_prometheus_scrapes_the_operator_and_the_token_alert_fires_and_resolves(
    kube: Kube, kas: KasProcess, operator: OperatorProcess, prometheus: PrometheusServer
) -> None:
    ns, agent = operator.namespace, kas.agents[59]
    kube.apply(
        secret(ns, "token", agent.token),
        gitlab_agent(ns, "live", kas.agent_url, "token"),
        gitlab_agent(ns, "orphan", kas.agent_url, "no-such-secret"),  # Failed, SecretNotFound
    )
    wait_for("live Connected", lambda: _connected(kube, ns, "live"), timeout=30)
    wait_for("the target up", prometheus.targets_up, timeout=30)
    for _ in range(3):  # after the first scrape, so rates, latency and bytes see the counters move
        code, _body = kas.proxy_get(agent.id, "/version")
        assert code == 200
        time.sleep(1.0)

    scraped = operator.metrics()
    checked = promtool("check", "metrics", stdin=scraped)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert agent.token not in scraped
    assert f'agent="{ns}/live"' in scraped

    queries = panel_queries()
    for title, expr in queries.items():
        wait_for(f"data for panel {title!r}: {expr}", functools.partial(_data, prometheus, expr), timeout=30)
    phases = {
        s["metric"]["phase"]: float(s["value"][1]) for s in prometheus.query(queries["Agents by phase (A)"])
    }
    assert phases == {"Connected": 1.0, "Failed": 1.0}
    assert _firing(prometheus, "GitLabAgentTokenRejected", f"{ns}/live") is None

    replacement = "rotated-token-" + "m" * 40
    try:
        kas.write_agents({agent.id: [replacement]})  # GitLab revokes the token the agent holds

        def rejected() -> dict[str, Any] | None:
            if _connected(kube, ns, "live"):
                kas.proxy_get(agent.id, "/version")  # spends a tunnel: its replacement meets kas
            return _firing(prometheus, "GitLabAgentTokenRejected", f"{ns}/live")

        # kas reloads its agents file within 0.2 s; a tunnel opened before that still holds: retry.
        alert = wait_for("GitLabAgentTokenRejected firing", rejected, timeout=60, interval=1.0)
        assert alert["labels"]["severity"] == "critical"
        assert f"{ns}/live" in alert["annotations"]["description"]
        assert _firing(prometheus, "GitLabAgentTokenRejected", f"{ns}/orphan") is None
        assert not re.search(r"agent-token-|rotated-token-", operator.metrics())

        kube.apply(secret(ns, "token", replacement))  # the fix: the Secret holds the new token
        wait_for("live Connected again", lambda: _connected(kube, ns, "live"), timeout=60)
        wait_for(
            "GitLabAgentTokenRejected resolved (neither firing nor pending)",
            lambda: (
                not [a for a in prometheus.alerts() if a["labels"]["alertname"] == "GitLabAgentTokenRejected"]
            ),
            timeout=30,
        )
    finally:
        kas.write_agents()
