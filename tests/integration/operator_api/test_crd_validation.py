"""The real kube-apiserver enforces the generated schema: bad specs are refused, naming the field."""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

import pytest

from agent_operator.api import GitLabAgentSpec
from tests.integration.operator_api.conftest import Kubectl
from tests.support.k8s_cluster import LocalCluster
from tests.unit.operator_api.cases import INVALID, VALID, Invalid

pytestmark = pytest.mark.timeout(120)


def _collection(namespace: str) -> str:
    return f"/apis/agentk.dev/v1alpha1/namespaces/{urllib.parse.quote(namespace)}/gitlabagents"


def _agent(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "agentk.dev/v1alpha1",
        "kind": "GitLabAgent",
        "metadata": {"name": name},
        "spec": spec,
    }


def _create(cluster: LocalCluster, namespace: str, name: str, spec: dict[str, Any]) -> tuple[int, Any]:
    # Strict field validation is what kubectl asks for by default; the raw API would otherwise
    # silently prune unknown fields (and say so only in a warning header).
    return cluster.request("POST", _collection(namespace) + "?fieldValidation=Strict", _agent(name, spec))


@pytest.fixture(scope="module")
def agents_namespace(k8s_cluster: LocalCluster, gitlabagent_crd: str) -> Any:
    name = "operator-api-validation"
    k8s_cluster.create_namespace(name)
    yield name
    k8s_cluster.delete_namespace(name)


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_spec_is_refused_naming_the_field(
    k8s_cluster: LocalCluster, agents_namespace: str, case: Invalid
) -> None:
    status, answer = _create(k8s_cluster, agents_namespace, f"bad-{case.id.lower()}", case.spec())
    assert status in (400, 422), f"accepted: {json.dumps(case.spec())}"
    message = answer["message"]
    causes = [cause.get("field", "") for cause in answer.get("details", {}).get("causes", [])]
    # The path itself, not a longer field that merely starts with it (spec.kasHeaders vs spec.kasHeadersX).
    names_field = re.compile(re.escape(case.field) + r"""(?=[":.\[\s]|$)""")
    assert case.field in causes or names_field.search(message), f"error does not name {case.field}: {message}"


@pytest.mark.parametrize(("name", "spec"), VALID, ids=[name for name, _ in VALID])
def test_valid_spec_is_stored_with_defaults(
    k8s_cluster: LocalCluster, agents_namespace: str, name: str, spec: dict[str, Any]
) -> None:
    status, answer = _create(k8s_cluster, agents_namespace, f"good-{name}", spec)
    assert status == 201, answer
    stored = answer["spec"]
    # The apiserver applied the schema's defaults: the stored object shows the effective settings,
    # exactly the ones the model fills in.
    assert GitLabAgentSpec.model_validate(stored) == GitLabAgentSpec.model_validate(spec)
    expected = GitLabAgentSpec.model_validate(spec).model_dump(mode="json", by_alias=True, exclude_none=True)
    expected = {k: v for k, v in expected.items() if v != [] or k in spec}
    assert stored == expected


def test_kubectl_apply_refuses_unknown_fields(kubectl: Kubectl, agents_namespace: str) -> None:
    manifest = _agent(
        "typo", {"kasAddress": "wss://kas.gitlab.com", "tokenSecretRef": {"name": "t"}, "kasAdress": "x"}
    )
    applied = kubectl("apply", "-n", agents_namespace, "-f", "-", stdin=json.dumps(manifest))
    assert applied.returncode != 0
    assert 'unknown field "spec.kasAdress"' in applied.stderr


def test_kubectl_apply_reports_the_cel_message(kubectl: Kubectl, agents_namespace: str) -> None:
    spec = {
        "kasAddress": "wss://kas.gitlab.com",
        "tokenSecretRef": {"name": "t"},
        "tunnels": {"minIdle": 9, "max": 3},
    }
    applied = kubectl("apply", "-n", agents_namespace, "-f", "-", stdin=json.dumps(_agent("pool", spec)))
    assert applied.returncode != 0
    assert "spec.tunnels.minIdle" in applied.stderr
    assert "minIdle must not be greater than max" in applied.stderr
