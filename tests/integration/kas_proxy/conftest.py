"""Fixtures: the proxy on loopback HTTPS, in front of a stand-in agent that serves the real apiserver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kas.agents import AgentInfo
from kas.k8s_proxy import ServingCertificate, self_signed_serving_certificate
from tests.integration.kas_proxy.harness import ProxyHarness, configuration
from tests.integration.kas_proxy.loopback_router import LoopbackRouter
from tests.support.k8s_cluster import ADMIN_TOKEN, LocalCluster

AGENT = AgentInfo(id=42, name="team-agent", project_path="group1/agents", project_id=7)
OFFLINE_AGENT = AgentInfo(id=43, name="offline-agent", project_path="group1/agents", project_id=7)

AGENT_ACCESS_JOB = "job-token-agent-access"  # group1/app, ci_access as the agent
CI_JOB_JOB = "job-token-ci-job"  # group2/svc in production, ci_access as the job itself
FOREIGN_JOB = "job-token-foreign"  # a project no ci_access entry names
CI_JOB_ID = 1074
USER_PAT = "glpat-user-token"  # alice, Developer of group1/app, user_access as the user

ACCESS: dict[str, Any] = {
    "agents": [
        {"id": 42, "name": "team-agent", "project_path": "group1/agents"}
    ],  # kas.agents' part: ignored
    "ci_jobs": [
        {
            "token": AGENT_ACCESS_JOB,
            "job_id": 1000,
            "pipeline_id": 500,
            "project": {"id": 11, "path": "group1/app"},
            "groups": [{"id": 3, "path": "group1"}],
            "user": {"id": 9, "username": "alice"},
        },
        {
            "token": CI_JOB_JOB,
            "job_id": CI_JOB_ID,
            "pipeline_id": 501,
            "project": {"id": 21, "path": "group2/svc"},
            "groups": [{"id": 5, "path": "group2"}],
            "user": {"id": 9, "username": "alice"},
            "environment": {"name": "production", "slug": "production", "tier": "production"},
        },
        {
            "token": FOREIGN_JOB,
            "job_id": 1001,
            "pipeline_id": 502,
            "project": {"id": 31, "path": "other/project"},
            "user": {"id": 10, "username": "bob"},
        },
    ],
    "users": [
        {
            "token": USER_PAT,
            "user": {"id": 9, "username": "alice"},
            "projects": [{"id": 11, "path": "group1/app", "roles": ["developer"]}],
        }
    ],
}

AGENT_CONFIG: dict[str, Any] = {
    "ci_access": {
        "projects": [{"id": "group1/app", "default_namespace": "default"}],
        "groups": [{"id": "group2", "access_as": {"ci_job": {}}}],
    },
    "user_access": {"access_as": {"user": {}}, "projects": [{"id": "group1/app"}]},
}


@pytest.fixture(scope="session")
def serving_cert() -> ServingCertificate:
    return self_signed_serving_certificate()


@pytest.fixture
def upgrade_target() -> tuple[str, int] | None:
    """Overridden by tests that need an upgrade endpoint (host, port)."""
    return None


@pytest.fixture
async def proxy(
    k8s_cluster: LocalCluster, serving_cert: ServingCertificate, tmp_path: Path, upgrade_target: Any
) -> AsyncIterator[ProxyHarness[LoopbackRouter]]:
    async with LoopbackRouter(
        k8s_cluster.url,
        ca_file=str(k8s_cluster.ca_file),
        token=ADMIN_TOKEN,
        agent_ids=[AGENT.id],
        upgrade_target=upgrade_target,
    ) as router:
        harness = ProxyHarness(tmp_path, serving_cert, router, [AGENT, OFFLINE_AGENT], ACCESS)
        harness.configs[AGENT.id] = configuration(AGENT_CONFIG)
        await harness.proxy.start()
        try:
            yield harness
        finally:
            await harness.proxy.stop()
