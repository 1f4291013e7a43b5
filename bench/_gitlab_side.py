"""GitLab's side of a benchmark: one apiserver, Redis, the GitLab Rails stand-in and GitLab's own kas.

Binaries from scripts/gitlab-peers (tests/support/gitlab_kas.py); agents and CI jobs are registered in
the stand-in (tests/support/gitlab_api.py) as a test sets them.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import _bootstrap  # noqa: F401 - repository root on sys.path
from _stack import Endpoint, local_cluster

from tests.support.gitlab_api import AccessAs, Agent, CiJob, GitLabApi
from tests.support.gitlab_kas import GitLabKas, GitLabPeers, KasSecrets, find_gitlab_peers, make_kas_secrets
from tests.support.k8s_cluster import LocalCluster
from tests.support.redis_server import RedisServer, find_redis_server

JOB_TOKEN = "bench-vs-agentk-job-" + "j" * 30


@dataclass
class GitLabSide:
    """The running stack, and the agents and CI job registered in the stand-in so far."""

    cluster: LocalCluster
    api: GitLabApi
    kas: GitLabKas
    work_dir: Path
    kas_ssl: ssl.SSLContext
    next_agent_id: int = 100
    ci_agents: dict[int, AccessAs] = field(default_factory=dict)

    def new_agent(self, name: str) -> Agent:
        agent = Agent(
            id=self.next_agent_id, name=name, token=f"glagent-bench-{self.next_agent_id}-" + "t" * 30
        )
        self.next_agent_id += 1
        self.api.add_agent(agent)
        return agent

    def allow_ci(self, agents: Sequence[Agent]) -> None:
        """The one CI job may use these agents too, without access_as (kas treats that as `agent`)."""
        self.ci_agents.update({a.id: {} for a in agents})
        self.api.add_job(CiJob(token=JOB_TOKEN, agents=dict(self.ci_agents)))

    def endpoint(self, agent: Agent) -> Endpoint:
        headers = {"Authorization": f"Bearer ci:{agent.id}:{JOB_TOKEN}"}
        return Endpoint(f"agent {agent.id}", self.kas.proxy_url, self.kas_ssl, headers)


def bench_kas(
    peers: GitLabPeers,
    work_dir: Path,
    api: GitLabApi,
    secrets_: KasSecrets,
    redis_port: int,
    *,
    external_url: str | None = None,
) -> GitLabKas:
    """GitLab's kas (not started yet) in `work_dir/kas`, on the stand-in `api` and a Redis key prefix of
    its own; `external_url`: GitLab's external URL, where the Flux module's GitRepositories point."""
    return GitLabKas(
        peers.kas,
        work_dir / "kas",
        gitlab_url=api.url,
        secrets=secrets_,
        redis_port=redis_port,
        key_prefix=f"bench-{secrets.token_hex(3)}",
        external_url=external_url,
    )


@asynccontextmanager
async def gitlab_side(work_dir: Path) -> AsyncIterator[GitLabSide]:
    peers = find_gitlab_peers()
    print(f"GitLab peers: {peers.directory} ({peers.version})")
    async with local_cluster() as cluster:
        redis = RedisServer(find_redis_server())
        await asyncio.to_thread(redis.start)
        secrets_ = make_kas_secrets(work_dir / "secrets")
        api = GitLabApi(secrets_.gitlab_secret)
        api.start()
        kas = bench_kas(peers, work_dir, api, secrets_, redis.port)
        try:
            await asyncio.to_thread(kas.start)
            yield GitLabSide(cluster, api, kas, work_dir, ssl.create_default_context(cafile=str(secrets_.ca)))
        finally:
            await asyncio.to_thread(kas.stop)
            api.stop()
            await asyncio.to_thread(redis.stop)
