"""status.conditions became an atomic list (it was a map keyed by type): upgrading the CRD over resources
whose managedFields still track every condition by type must keep status writes working.

The committed CRD's schema under a group of the test's own (so the session's GitLabAgent CRD is left
alone), first with the conditions as a map, as earlier versions installed it, then updated in place.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_operator.kube_api import MERGE_PATCH
from tests.support.k8s_cluster import LocalCluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
GROUP = "upgrade.agentk.test"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PER_CONDITION = 'k:{\\"type\\":'
"""How managedFields (as JSON text) name a condition of a list keyed by type."""


def _crd(list_type: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((ROOT / "crds" / "gitlabagents.agentk.dev.yaml").read_text())
    crd["metadata"] = {"name": f"gitlabagents.{GROUP}"}
    crd["spec"]["group"] = GROUP
    for version in crd["spec"]["versions"]:
        conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
        conditions["x-kubernetes-list-type"] = list_type
        if list_type == "map":
            conditions["x-kubernetes-list-map-keys"] = ["type"]
        else:
            conditions.pop("x-kubernetes-list-map-keys", None)
    return crd


def _condition(type_: str, message: str) -> dict[str, str]:
    return {
        "type": type_,
        "status": "True",
        "reason": "Connected",
        "message": message,
        "lastTransitionTime": "2026-12-06T12:00:00Z",
    }


def _served_list_type(cluster: LocalCluster) -> str:
    status, crd = cluster.request("GET", f"{CRD_PATH}/gitlabagents.{GROUP}")
    assert status == 200, crd
    version = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return str(version["properties"]["status"]["properties"]["conditions"]["x-kubernetes-list-type"])


def test_status_writes_survive_the_switch_from_map_to_atomic(
    k8s_cluster: LocalCluster, namespace: str
) -> None:
    status, info = k8s_cluster.request("POST", CRD_PATH, _crd("map"))
    assert status == 201, info
    try:
        version = _crd("map")["spec"]["versions"][0]["name"]
        base = f"/apis/{GROUP}/{version}/namespaces/{namespace}/gitlabagents"
        agent = {
            "apiVersion": f"{GROUP}/{version}",
            "kind": "GitLabAgent",
            "metadata": {"name": "agent"},
            "spec": {"kasAddress": "wss://127.0.0.1:1", "tokenSecretRef": {"name": "token"}},
        }
        deadline = time.monotonic() + 30
        while (created := k8s_cluster.request("POST", base, agent))[0] == 404:  # not served yet
            assert time.monotonic() < deadline, "the test CRD was never served"
            time.sleep(0.2)
        assert created[0] == 201, created[1]

        def write(conditions: list[dict[str, str]]) -> dict[str, Any]:
            code, body = k8s_cluster.request(
                "PATCH",
                f"{base}/agent/status?fieldManager=gitlab-agent-operator",
                {"status": {"phase": "Connected", "conditions": conditions}},
                headers={"Content-Type": MERGE_PATCH},
            )
            assert code == 200, body
            assert isinstance(body, dict)
            return body

        before = write([_condition("Ready", "one"), _condition("Connected", "two")])
        managed = json.dumps(before["metadata"]["managedFields"])
        assert PER_CONDITION in managed  # tracked one by one, as a map

        status, current = k8s_cluster.request("GET", f"{CRD_PATH}/gitlabagents.{GROUP}")
        assert status == 200, current
        updated = _crd("atomic")
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        status, info = k8s_cluster.request("PUT", f"{CRD_PATH}/gitlabagents.{GROUP}", updated)
        assert status == 200, info
        assert _served_list_type(k8s_cluster) == "atomic"

        deadline = time.monotonic() + 30
        while True:  # the API server may apply the old schema for a moment after the update
            after = write([_condition("Ready", "three")])
            if PER_CONDITION not in json.dumps(after["metadata"]["managedFields"]):
                break
            assert time.monotonic() < deadline, "managedFields still track conditions one by one"
            time.sleep(0.2)
        assert [c["message"] for c in after["status"]["conditions"]] == ["three"]
    finally:
        k8s_cluster.request("DELETE", f"{CRD_PATH}/gitlabagents.{GROUP}")
