"""The operator's own RBAC (manifests/rbac-*.yaml): reviewed, and enough for every identity kas sends.

`kubectl auth can-i --list` of the operator's ServiceAccount, minus what any ServiceAccount may do, must
equal the reviewed list in operator_can_i.txt: RBAC changes only together with that file, on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import (
    OPERATOR_NAMESPACE,
    OPERATOR_USERNAME,
    REPO_ROOT,
    Kube,
    service_account,
    service_account_kubeconfig,
)

pytestmark = pytest.mark.timeout(120)

REVIEWED = Path(__file__).with_name("operator_can_i.txt")
CLUSTER_SCOPE = "cluster-wide (any namespace)"
OPERATOR_SCOPE = f"namespace {OPERATOR_NAMESPACE}, in addition"

CI_JOB_EXTRAS = {
    "agent.gitlab.com/id": "2000",
    "agent.gitlab.com/config_project_id": "7",
    "agent.gitlab.com/project_id": "11",
    "agent.gitlab.com/ci_pipeline_id": "77",
    "agent.gitlab.com/ci_job_id": "4242",
    "agent.gitlab.com/username": "alice",
    "agent.gitlab.com/environment_slug": "review-x",
    "agent.gitlab.com/environment_tier": "development",
}
USER_EXTRAS = {
    "agent.gitlab.com/id": "2000",
    "agent.gitlab.com/username": "alice",
    "agent.gitlab.com/access_type": "personal_access_token",
    "agent.gitlab.com/config_project_id": "7",
}


def _rows(kube: Kube, namespace: str, *identity: str, kubeconfig: Path | None = None) -> set[str]:
    """The rows of `kubectl auth can-i --list`, columns joined with ' | ' (kubectl aligns with spaces)."""
    done = kube.kubectl(
        "auth", "can-i", "--list", "--no-headers", "-n", namespace, *identity, kubeconfig=kubeconfig
    )
    assert done.returncode == 0, done.stderr
    return {
        " | ".join(re.split(r"\s{2,}", line.strip())) for line in done.stdout.splitlines() if line.strip()
    }


def _render(sections: dict[str, set[str]]) -> str:
    out = []
    for title, rows in sections.items():
        out.append(f"[{title}]")
        out += sorted(rows)
        out.append("")
    return "\n".join(out)


def _reviewed() -> dict[str, set[str]]:
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in REVIEWED.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], set())
            continue
        assert current is not None, f"{REVIEWED.name}: a row before the first [section]"
        current.add(line.strip())
    return sections


def test_can_i_list_of_the_operator_matches_the_reviewed_list(
    kube: Kube, operator_credentials: Path, namespace: str
) -> None:
    # What RBAC gives every ServiceAccount (discovery, self reviews) differs between Kubernetes
    # versions and is not ours to review: a ServiceAccount with no bindings shows it.
    kube.apply(service_account(namespace, "nobody"))
    nobody = f"--as=system:serviceaccount:{namespace}:nobody"
    anywhere = _rows(kube, namespace, kubeconfig=operator_credentials) - _rows(kube, namespace, nobody)
    own_namespace = _rows(kube, OPERATOR_NAMESPACE, kubeconfig=operator_credentials)
    actual = {
        CLUSTER_SCOPE: anywhere,
        OPERATOR_SCOPE: own_namespace - anywhere - _rows(kube, OPERATOR_NAMESPACE, nobody),
    }

    assert actual == _reviewed(), (
        f"the operator's RBAC ({OPERATOR_USERNAME}) differs from {REVIEWED}; if the change is "
        f"intended, review it and replace the file's sections with:\n\n{_render(actual)}"
    )


def _whoami(kube: Kube, kubeconfig: Path, *identity: str) -> tuple[int, str]:
    done = kube.kubectl("auth", "whoami", "-o", "json", *identity, kubeconfig=kubeconfig)
    return done.returncode, done.stdout + done.stderr


def _as(user: str, groups: list[str], extras: dict[str, str]) -> list[str]:
    return [
        f"--as={user}",
        *(f"--as-group={g}" for g in groups),
        *(f"--as-user-extra={k}={v}" for k, v in extras.items()),
    ]


@pytest.mark.parametrize(
    ("user", "groups", "extras"),
    [
        ("gitlab:ci_job:4242", ["gitlab:ci_job", "gitlab:project:11"], CI_JOB_EXTRAS),
        ("gitlab:user:alice", ["gitlab:user", "gitlab:project_role:11:developer"], USER_EXTRAS),
    ],
    ids=["ci_job", "user"],
)
def test_the_operator_may_impersonate_every_extra_kas_sends(
    kube: Kube, operator_credentials: Path, user: str, groups: list[str], extras: dict[str, str]
) -> None:
    code, output = _whoami(kube, operator_credentials, *_as(user, groups, extras))

    assert code == 0, output
    assert f'"username": "{user}"' in output
    for key, value in extras.items():
        assert re.search(rf'"{re.escape(key)}": \[\s*"{re.escape(value)}"', output), (key, output)


def _review_as(kube: Kube, kubeconfig: Path, identity: dict[str, str]) -> tuple[int, Any]:
    """POST a SelfSubjectReview with the kubeconfig's token and these Impersonate-* headers."""
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    return kube.request(
        "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review, token=token, headers=identity
    )


def test_an_extra_kas_does_not_send_needs_the_role_extended(kube: Kube, operator_credentials: Path) -> None:
    identity = {"Impersonate-User": "gitlab:ci_job:1", "Impersonate-Group": "gitlab:ci_job"}

    allowed, _ = _review_as(kube, operator_credentials, identity)
    status, body = _review_as(
        kube, operator_credentials, {**identity, "Impersonate-Extra-example.com%2Fteam": "a"}
    )

    assert allowed == 201
    assert status == 403, body
    # Kubernetes 1.36+ names either the missing legacy rule or, when it tried constrained impersonation
    # first (it starts with the mode that last worked for the same request), that mode's verb.
    message = body["message"]
    assert (
        'cannot impersonate resource "userextras/example.com/team"' in message
        or "cannot impersonate-on:user-info:create" in message
    ), message


CONSTRAINED = REPO_ROOT / "manifests" / "optional" / "rbac-constrained-impersonation.yaml"


@pytest.fixture
def constrained_identity(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A ServiceAccount bound to manifests/optional/'s constrained-impersonation ClusterRole alone."""
    role = yaml.safe_load(CONSTRAINED.read_text())
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": f"constrained-{namespace}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"kind": "ServiceAccount", "name": "narrow", "namespace": namespace}],
    }
    kube.apply(role, service_account(namespace, "narrow"), binding)
    try:
        yield service_account_kubeconfig(kube, tmp_path / "narrow.kubeconfig", namespace, "narrow")
    finally:
        kube.kubectl("delete", "clusterrolebinding", f"constrained-{namespace}", "--ignore-not-found")


def _headers(user: str, group: str, extras: dict[str, str]) -> dict[str, str]:
    """Impersonate-* headers; urllib sends one value per header name, so one group here."""
    headers = {"Impersonate-User": user, "Impersonate-Group": group}
    headers |= {"Impersonate-Extra-" + key.replace("/", "%2F"): value for key, value in extras.items()}
    return headers


def test_constrained_impersonation_rules_admit_gitlab_identities_only(
    kube: Kube, constrained_identity: Path
) -> None:
    ci_job = _headers("gitlab:ci_job:4242", "gitlab:ci_job", CI_JOB_EXTRAS)
    user = _headers("gitlab:user:alice", "gitlab:user", USER_EXTRAS)

    for identity in (ci_job, user):
        status, body = _review_as(kube, constrained_identity, identity)
        assert status == 201, body
        assert body["status"]["userInfo"]["username"] == identity["Impersonate-User"]
        assert body["status"]["userInfo"]["extra"]["agent.gitlab.com/id"] == ["2000"]

    refused = {
        "system:masters": {**ci_job, "Impersonate-Group": "system:masters"},
        "a ServiceAccount": {"Impersonate-User": "system:serviceaccount:kube-system:default"},
        "another extra": {**ci_job, "Impersonate-Extra-example.com%2Fteam": "a"},
    }
    for what, identity in refused.items():
        status, body = _review_as(kube, constrained_identity, identity)
        assert status == 403, (what, body)
