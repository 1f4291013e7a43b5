"""The shipped monitoring (manifests/monitoring/) with the real tools: kustomize builds it, promtool
checks the PrometheusRule and runs its unit tests (rules_test.yaml), and the dashboard is well formed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.conftest import require
from tests.support.prometheus import promtool

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "manifests" / "monitoring"


def rule_groups() -> dict[str, Any]:
    """The PrometheusRule's spec: a Prometheus rule file (`groups:`)."""
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    return dict(rule["spec"])


def write_rules(directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups()))
    return path


def dashboard() -> dict[str, Any]:
    return dict(json.loads((MONITORING / "dashboard.json").read_text()))


def test_promtool_checks_the_shipped_rules(tmp_path: Path) -> None:
    require("promtool")
    done = promtool("check", "rules", str(write_rules(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_of_the_rules(tmp_path: Path) -> None:
    require("promtool")
    write_rules(tmp_path)
    shutil.copy(Path(__file__).with_name("rules_test.yaml"), tmp_path / "rules_test.yaml")
    done = promtool("test", "rules", str(tmp_path / "rules_test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_and_has_a_runbook_entry() -> None:
    alerts = {r["alert"]: r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(Path(__file__).with_name("rules_test.yaml").read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == set(alerts)
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    for name, rule in alerts.items():
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), name
        assert annotations["runbook"] == f"docs/operations.md#{name.lower()}"
        assert f"#### {name}\n" in operations, f"no runbook entry for {name} in docs/operations.md"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_kustomize_builds_the_component() -> None:
    done = subprocess.run(
        ["kubectl", "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(done.stdout)}
    assert set(objects) == {
        ("ServiceMonitor", "gitlab-agent-operator"),
        ("PrometheusRule", "gitlab-agent-operator"),
        ("ConfigMap", "gitlab-agent-operator-dashboard"),
    }
    for obj in objects.values():
        assert obj["metadata"]["namespace"] == "gitlab-agent-operator"
    board = objects[("ConfigMap", "gitlab-agent-operator-dashboard")]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["gitlab-agent-operator.json"]) == dashboard()
    # The ServiceMonitor selects the metrics Service of manifests/ by its labels and port name.
    service = yaml.safe_load((REPO_ROOT / "manifests" / "service.yaml").read_text())
    monitor = objects[("ServiceMonitor", "gitlab-agent-operator")]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    job = service["metadata"]["labels"][monitor["jobLabel"]]
    assert f'up{{job="{job}"}}' in (MONITORING / "prometheusrule.yaml").read_text()


def test_kustomize_builds_the_operator_with_the_component(tmp_path: Path) -> None:
    """What the kustomization's comment tells users to write: manifests/ plus the component."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes only relative paths for directories
                "resources": [os.path.relpath(REPO_ROOT / "manifests", overlay)],
                "components": [os.path.relpath(MONITORING, overlay)],
            }
        )
    )
    done = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    kinds = [o["kind"] for o in yaml.safe_load_all(done.stdout)]
    assert {"Deployment", "Service", "ServiceMonitor", "PrometheusRule"} <= set(kinds)
