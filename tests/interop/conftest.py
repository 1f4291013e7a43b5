"""Interop fixtures: GitLab's own kas and agentk (scripts/gitlab-peers), our GitLab Rails stand-in, Redis.

The binaries are built by `scripts/gitlab-peers` (a cold build takes minutes, so tests never build).
Without them the interop tests skip with that command as the reason; with REQUIRE_GITLAB_PEERS=1 (CI)
they fail instead, like REQUIRE_K8S=1 does for the apiserver.
"""

from __future__ import annotations

import secrets
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import agent_namespace, kube, operator, operator_credentials
from tests.support.gitlab_api import Agent, GitLabApi
from tests.support.gitlab_kas import (
    GitLabKas,
    GitLabPeers,
    GitLabPeersNotFoundError,
    KasSecrets,
    find_gitlab_peers,
    make_kas_secrets,
)
from tests.support.redis_server import RedisServer
from tests.support.require import GITLAB_PEERS, missing

# The operator scenarios run the operator exactly as tests/e2e does (its ServiceAccount, manifests/).
__all__ = ["agent_namespace", "kube", "operator", "operator_credentials"]
_HERE = Path(__file__).parent
AGENT = Agent(id=1, name="interop-agent", token="glagent-interop-" + "a" * 40)
"""The agent our runtime (or the operator) connects as."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def gitlab_peers() -> GitLabPeers:
    """GitLab's kas and agentk binaries; skip (fail with REQUIRE_GITLAB_PEERS=1) when not built."""
    try:
        return find_gitlab_peers()
    except GitLabPeersNotFoundError as err:
        reason = str(err)
    return missing(reason, GITLAB_PEERS)


@pytest.fixture(scope="session")
def kas_secrets(tmp_path_factory: pytest.TempPathFactory) -> KasSecrets:
    return make_kas_secrets(tmp_path_factory.mktemp("gitlab-kas-secrets"))


@pytest.fixture(scope="session")
def gitlab_api(gitlab_peers: GitLabPeers, kas_secrets: KasSecrets) -> Iterator[GitLabApi]:
    """The GitLab Rails stand-in every GitLab kas of the session calls; AGENT is registered."""
    api = GitLabApi(kas_secrets.gitlab_secret)
    api.add_agent(AGENT)
    api.start()
    try:
        yield api
    finally:
        api.stop()


class KasFactory:
    """Starts GitLab kas replicas for one test; all of them stopped at its end."""

    def __init__(
        self, peers: GitLabPeers, api: GitLabApi, secrets_: KasSecrets, redis: RedisServer, work: Path
    ) -> None:
        self.peers, self.api, self.secrets, self.redis, self.work = peers, api, secrets_, redis, work
        self.started: list[GitLabKas] = []
        # One prefix per test: replicas of a test share routing state, tests do not see each other's.
        self.key_prefix = f"interop-{secrets.token_hex(4)}"

    def __call__(self, *, binary: Path | None = None, **options: Any) -> GitLabKas:
        kas = GitLabKas(
            binary or self.peers.kas,
            self.work / f"kas-{len(self.started)}",
            gitlab_url=self.api.url,
            secrets=self.secrets,
            redis_port=self.redis.port,
            key_prefix=self.key_prefix,
            **options,
        )
        self.started.append(kas)
        kas.start()
        return kas

    def stop_all(self) -> None:
        for kas in self.started:
            kas.stop()


@pytest.fixture
def start_gitlab_kas(
    gitlab_peers: GitLabPeers,
    gitlab_api: GitLabApi,
    kas_secrets: KasSecrets,
    redis_server: RedisServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[KasFactory]:
    factory = KasFactory(gitlab_peers, gitlab_api, kas_secrets, redis_server, tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
        for kas in factory.started:
            if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
                print(f"--- {kas.log_path} ---\n{kas.log_tail(80)}")


@pytest.fixture(scope="session")
def gitlab_kas(
    gitlab_peers: GitLabPeers,
    gitlab_api: GitLabApi,
    kas_secrets: KasSecrets,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GitLabKas]:
    """One GitLab kas shared by the tests that do not stop or reconfigure it."""
    factory = KasFactory(
        gitlab_peers, gitlab_api, kas_secrets, redis_server, tmp_path_factory.mktemp("gitlab-kas")
    )
    kas = factory()
    try:
        yield kas
    finally:
        factory.stop_all()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]  # read by start_gitlab_kas on failure
    return report
