"""Push events between GitLab's kas and ours (PROTOCOL.md §17.7): the payload on `kas_events` is GitLab's.

`send_git_push_event` reaches GitLab's kas API listener as Rails does (its JWT check accepts it), GitLab's
kas publishes on the shared Redis, and our kas, subscribed to `kas_events`, hands the event to an
agent's ReconcileProjects stream: so our replicas can run next to GitLab's on one Redis.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import grpc
import pytest

from kas.testing import TestAgent, running_kas, send_git_push_event
from tests.integration.kas.test_flux import next_project, reconcile_projects, wait_subscribed
from tests.support.gitlab_kas import GitLabKas, KasSecrets
from tests.support.redis_server import RedisServer


async def test_a_push_to_gitlab_kas_reaches_a_stream_on_our_kas(
    gitlab_kas: GitLabKas, kas_secrets: KasSecrets, redis_server: RedisServer, tmp_path: Path
) -> None:
    # A path of its own: every test of the session that pushes to GitLab's kas publishes on kas_events.
    path = f"interop/app-{secrets.token_hex(4)}"
    agent = TestAgent(
        id=77, name="push-agent", project_path="interop/agents", token="push-" + "p" * 40, projects=(path,)
    )
    async with (
        running_kas(
            tmp_path / "ours", [agent], redis_url=redis_server.url, events_channel="kas_events"
        ) as ours,
        grpc.aio.insecure_channel(ours.agent_address) as channel,
    ):
        call = reconcile_projects(channel, agent.token, path)
        await wait_subscribed(ours, streams=1)
        gitlab_api = f"127.0.0.1:{gitlab_kas.api_port}"
        await send_git_push_event(gitlab_api, kas_secrets.gitlab_secret, 1234, path)
        assert await next_project(call) == path
        call.cancel()


async def test_gitlab_kas_refuses_a_push_signed_with_another_secret(gitlab_kas: GitLabKas) -> None:
    wrong = base64.b64encode(secrets.token_bytes(32))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await send_git_push_event(f"127.0.0.1:{gitlab_kas.api_port}", wrong, 1, "interop/app")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
