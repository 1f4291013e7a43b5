"""Every way GitLab reaches the cluster through an agent, through the operator running as deployed.

CI jobs and a personal access token use the reference kas's Kubernetes API proxy with kubectl, exactly
as a GitLab CI job would. Each access mode shows its identity (`kubectl auth whoami`), may do what RBAC
grants that identity, and is refused what it does not grant. The agent's ServiceAccount is granted the
right to impersonate exactly the identity its mode needs (resourceNames), nothing wider.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    JOB_PROJECT,
    JOB_TOKEN,
    OPERATOR_NAMESPACE,
    OPERATOR_SERVICE_ACCOUNT,
    KasAgent,
    KasProcess,
    Kube,
    OperatorProcess,
    gitlab_agent,
    phase,
    secret,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

ENV_JOB_TOKEN = "e2e-env-job-token-" + "e" * 20
PAT = "e2e-personal-access-token-" + "p" * 20
PROJECT_ID, CONFIG_PROJECT_ID, GROUP_ID = 11, 7, 3
TEAM_EXTRA = "example.com/team"
"""An extra key kas never sends by itself: only an `impersonate` configuration names it."""


def _agent(agent_id: int, name: str) -> KasAgent:
    return KasAgent(agent_id, name, (f"{name}-token-" + "m" * 40,))


AGENTS = {
    "agent": _agent(3100, "modes-agent"),
    "ci_job": _agent(3101, "modes-ci-job"),
    "impersonate": _agent(3102, "modes-impersonate"),
    "user": _agent(3103, "modes-user"),
}
IMPERSONATE = {
    "username": "gitlab:deployer",
    "uid": "deployer-7",
    "groups": ["gitlab:deployers", "gitlab:release"],
    "extra": [{"key": TEAM_EXTRA, "val": ["payments"]}],
}
CONFIGS: dict[str, dict[str, Any]] = {
    "modes-agent": {"ci_access": {"projects": [{"id": JOB_PROJECT}]}},
    "modes-ci-job": {"ci_access": {"projects": [{"id": JOB_PROJECT, "access_as": {"ci_job": {}}}]}},
    "modes-impersonate": {
        "ci_access": {"projects": [{"id": JOB_PROJECT, "access_as": {"impersonate": IMPERSONATE}}]}
    },
    "modes-user": {"user_access": {"access_as": {"user": {}}, "projects": [{"id": JOB_PROJECT}]}},
}
ACCESS: dict[str, list[dict[str, Any]]] = {
    "ci_jobs": [
        {
            "token": ENV_JOB_TOKEN,
            "job_id": 4343,
            "pipeline_id": 78,
            "project": {"id": PROJECT_ID, "path": JOB_PROJECT},
            "groups": [{"id": GROUP_ID, "path": JOB_PROJECT.split("/")[0]}],
            "user": {"id": 9, "username": "alice"},
            "environment": {"name": "review/x", "slug": "review-x", "tier": "development"},
        }
    ],
    "users": [
        {
            "token": PAT,
            "user": {"id": 9, "username": "alice"},
            "projects": [{"id": PROJECT_ID, "path": JOB_PROJECT, "roles": ["developer"]}],
        }
    ],
}


@dataclass(frozen=True)
class Mode:
    """One access mode: how the client authenticates to kas, and whom the cluster must see."""

    agent: KasAgent
    bearer: str
    username: str
    """`{ns}` stands for the test's namespace."""
    groups: tuple[str, ...]
    extra: Mapping[str, list[str]] = field(default_factory=dict)
    uid: str = ""
    granted_to: tuple[str, str] = ("User", "")
    """The RBAC subject that is allowed to list ConfigMaps: (kind, name); name "" = the username."""

    def user(self, namespace: str) -> str:
        return self.username.format(ns=namespace)


def _ci_extra(agent: KasAgent, job_id: int, pipeline_id: int, **more: str) -> dict[str, list[str]]:
    values = {
        "id": str(agent.id),
        "config_project_id": str(CONFIG_PROJECT_ID),
        "project_id": str(PROJECT_ID),
        "ci_pipeline_id": str(pipeline_id),
        "ci_job_id": str(job_id),
        "username": "alice",
        **more,
    }
    return {f"agent.gitlab.com/{k}": [v] for k, v in values.items()}


MODES = {
    "agent": Mode(
        AGENTS["agent"],
        f"ci:{AGENTS['agent'].id}:{JOB_TOKEN}",
        "system:serviceaccount:{ns}:agent",
        ("system:serviceaccounts", "system:serviceaccounts:{ns}", "system:authenticated"),
        granted_to=("ServiceAccount", "agent"),
    ),
    "ci_job": Mode(
        AGENTS["ci_job"],
        f"ci:{AGENTS['ci_job'].id}:{JOB_TOKEN}",
        "gitlab:ci_job:4242",
        ("gitlab:ci_job", f"gitlab:project:{PROJECT_ID}"),
        _ci_extra(AGENTS["ci_job"], 4242, 77),
    ),
    "ci_job_environment": Mode(
        AGENTS["ci_job"],
        f"ci:{AGENTS['ci_job'].id}:{ENV_JOB_TOKEN}",
        "gitlab:ci_job:4343",
        (
            "gitlab:ci_job",
            f"gitlab:group:{GROUP_ID}",
            f"gitlab:group_env_tier:{GROUP_ID}:development",
            f"gitlab:project:{PROJECT_ID}",
            f"gitlab:project_env:{PROJECT_ID}:review-x",
            f"gitlab:project_env_tier:{PROJECT_ID}:development",
        ),
        _ci_extra(AGENTS["ci_job"], 4343, 78, environment_slug="review-x", environment_tier="development"),
        # what only a job with this environment gets: rights through the environment's tier group
        granted_to=("Group", f"gitlab:project_env_tier:{PROJECT_ID}:development"),
    ),
    "impersonate": Mode(
        AGENTS["impersonate"],
        f"ci:{AGENTS['impersonate'].id}:{JOB_TOKEN}",
        "gitlab:deployer",
        ("gitlab:deployers", "gitlab:release"),
        {TEAM_EXTRA: ["payments"]},
        uid="deployer-7",
    ),
    "user": Mode(
        AGENTS["user"],
        f"pat:{AGENTS['user'].id}:{PAT}",
        "gitlab:user:alice",
        ("gitlab:user", f"gitlab:project_role:{PROJECT_ID}:developer"),
        {
            "agent.gitlab.com/id": [str(AGENTS["user"].id)],
            "agent.gitlab.com/username": ["alice"],
            "agent.gitlab.com/access_type": ["personal_access_token"],
            "agent.gitlab.com/config_project_id": [str(CONFIG_PROJECT_ID)],
        },
    ),
}


@pytest.fixture(scope="module")
def modes_kas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KasProcess]:
    """A kas whose four agents are configured for the four access modes."""
    server = KasProcess(tmp_path_factory.mktemp("modes-kas"), list(AGENTS.values()), CONFIGS, ACCESS)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _rbac(kind: str, name: str, namespace: str | None = None, **body: Any) -> dict[str, Any]:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, **body}


def _impersonation_rules(mode: Mode, namespace: str) -> list[dict[str, Any]]:
    """Exactly the identity of `mode`, by name: what the agent's ServiceAccount must be allowed."""
    rules: list[dict[str, Any]] = [
        {
            "apiGroups": [""],
            "resources": ["users"],
            "resourceNames": [mode.user(namespace)],
            "verbs": ["impersonate"],
        },
        {
            "apiGroups": [""],
            "resources": ["groups"],
            "resourceNames": list(mode.groups),
            "verbs": ["impersonate"],
        },
    ]
    if mode.uid:
        rules.append(
            {
                "apiGroups": ["authentication.k8s.io"],
                "resources": ["uids"],
                "resourceNames": [mode.uid],
                "verbs": ["impersonate"],
            }
        )
    rules += [
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": [f"userextras/{key}"],
            "resourceNames": values,
            "verbs": ["impersonate"],
        }
        for key, values in mode.extra.items()
    ]
    return rules


def _cluster_grant(name: str, rules: list[dict[str, Any]], subject: dict[str, str]) -> list[dict[str, Any]]:
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    return [
        _rbac("ClusterRole", name, rules=rules),
        _rbac("ClusterRoleBinding", name, roleRef=role_ref, subjects=[subject]),
    ]


@pytest.fixture
def cluster_grants(kube: Kube) -> Iterator[list[str]]:
    """Names of ClusterRoles/ClusterRoleBindings the test created; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        kube.kubectl("delete", "clusterrolebinding,clusterrole", name, "--ignore-not-found")


def _kubectl_via_kas(kube: Kube, kubeconfig: Path, *args: str) -> tuple[int, str]:
    done = kube.kubectl(*args, kubeconfig=kubeconfig)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("mode_name", list(MODES))
def test_access_mode_through_the_operator(
    kube: Kube,
    modes_kas: KasProcess,
    operator: OperatorProcess,
    cluster_grants: list[str],
    tmp_path: Path,
    mode_name: str,
) -> None:
    ns, mode = operator.namespace, MODES[mode_name]
    agent_sa = {"kind": "ServiceAccount", "name": "agent", "namespace": ns}
    if mode_name != "agent":
        name = f"modes-{ns}"
        kube.apply(*_cluster_grant(name, _impersonation_rules(mode, ns), agent_sa))
        cluster_grants.append(name)
    if TEAM_EXTRA in mode.extra:
        # docs/operations.md: an extra key kas does not send needs the operator's role extended
        name = f"operator-extra-{ns}"
        rule = {"apiGroups": ["authentication.k8s.io"], "resources": [f"userextras/{TEAM_EXTRA}"]}
        operator_sa = {
            "kind": "ServiceAccount",
            "name": OPERATOR_SERVICE_ACCOUNT,
            "namespace": OPERATOR_NAMESPACE,
        }
        kube.apply(*_cluster_grant(name, [{**rule, "verbs": ["impersonate"]}], operator_sa))
        cluster_grants.append(name)
    kind, subject = mode.granted_to
    subject_ref = {"kind": kind, "name": subject or mode.user(ns)}
    if kind == "ServiceAccount":
        subject_ref["namespace"] = ns
    else:
        subject_ref["apiGroup"] = "rbac.authorization.k8s.io"
    kube.apply(
        _rbac(
            "Role",
            "read-configmaps",
            ns,
            rules=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        ),
        _rbac(
            "RoleBinding",
            "read-configmaps",
            ns,
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            subjects=[subject_ref],
        ),
        secret(ns, "token", mode.agent.token),
        gitlab_agent(ns, "modes", modes_kas.agent_url, "token"),
    )
    wait_for("Connected", lambda: phase(kube.gla(ns, "modes")) == "Connected", timeout=30)
    kubeconfig = modes_kas.proxy_kubeconfig(mode.bearer, tmp_path / "client.kubeconfig")

    last: list[tuple[int, str]] = []

    def whoami_answered() -> str | None:
        last[:] = [_kubectl_via_kas(kube, kubeconfig, "auth", "whoami", "-o", "json")]
        return last[0][1] if last[0][0] == 0 else None

    try:
        whoami = wait_for("kubectl auth whoami through kas", whoami_answered, timeout=30, interval=0.5)
    except AssertionError as err:
        raise AssertionError(f"{err}; kubectl said: {last}\n{operator.log()[-3000:]}") from None
    info = json.loads(whoami)["status"]["userInfo"]
    assert info["username"] == mode.user(ns)
    assert set(info.get("groups", [])) == {g.format(ns=ns) for g in mode.groups} | {"system:authenticated"}
    assert info.get("extra", {}) == dict(mode.extra)
    assert info.get("uid", "") == mode.uid

    code, listed = _kubectl_via_kas(kube, kubeconfig, "get", "configmaps", "-n", ns, "-o", "name")
    assert code == 0, listed
    code, denied = _kubectl_via_kas(kube, kubeconfig, "get", "secrets", "-n", ns)
    assert code != 0
    assert f'User "{mode.user(ns)}" cannot list resource "secrets"' in denied, denied
