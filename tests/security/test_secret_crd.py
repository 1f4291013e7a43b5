"""Finding 13: secrets do not belong in a GitLabAgent's spec (everyone who may read the resource reads
them, and kopf copies the spec into an annotation). The real apiserver refuses credentials in
`proxy.url` and a header with both or neither of value/valueFrom, with a message that says what to do."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.operator_api.conftest import Kubectl, gitlabagent_crd, kubectl
from tests.support.k8s_cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

__all__ = ["gitlabagent_crd", "kubectl"]  # fixtures used by name below

BASE: dict[str, Any] = {"kasAddress": "wss://kas.example.com", "tokenSecretRef": {"name": "t"}}


def _apply(kubectl: Kubectl, namespace: str, name: str, spec: dict[str, Any]) -> str:
    manifest = {
        "apiVersion": "agentk.dev/v1alpha1",
        "kind": "GitLabAgent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {**BASE, **spec},
    }
    done = kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    assert done.returncode != 0, f"accepted: {manifest}"
    return done.stderr


@pytest.fixture
def crd_namespace(k8s_cluster: LocalCluster, gitlabagent_crd: str, namespace: str) -> str:
    del k8s_cluster, gitlabagent_crd
    return namespace


@pytest.mark.parametrize(
    "url", ["http://user:pass@proxy.internal:3128", "https://token@proxy.internal", "http://:pw@proxy:1"]
)
def test_credentials_in_the_proxy_url_are_refused_pointing_to_the_secret_ref(
    kubectl: Kubectl, crd_namespace: str, url: str
) -> None:
    stderr = _apply(kubectl, crd_namespace, "proxy-creds", {"proxy": {"url": url}})

    assert "spec.proxy.url" in stderr
    assert "must not contain credentials" in stderr
    assert "proxy.credentialsSecretRef" in stderr


@pytest.mark.parametrize(
    "header",
    [
        {"name": "X-Key", "value": "a", "valueFrom": {"secretKeyRef": {"name": "gw", "key": "k"}}},
        {"name": "X-Key"},
    ],
    ids=["both", "neither"],
)
def test_a_header_needs_exactly_one_of_value_and_value_from(
    kubectl: Kubectl, crd_namespace: str, header: dict[str, Any]
) -> None:
    stderr = _apply(kubectl, crd_namespace, "header", {"kasHeaders": [header]})

    assert "spec.kasHeaders[0]" in stderr
    assert "exactly one of value or valueFrom must be set" in stderr
