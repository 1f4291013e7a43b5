"""kopf's session: capped at its watch streams plus room for short requests, authenticated by KubeAccess."""

from __future__ import annotations

from typing import Any, cast

import aiohttp
import kopf
import pytest
from kubernetes import client as k8s_client

from agent_operator.credentials import (
    KOPF_REQUEST_CONNECTIONS,
    kopf_connection_limit,
    kopf_session,
    kopf_watch_streams,
)
from agent_operator.settings import parse_settings
from agent_runtime.kube import KubeAccess


@pytest.mark.parametrize(
    ("flags", "streams"),
    [
        ([], 1),  # CRDs (the operator watches the GitLabAgents itself)
        (["--peering=p"], 3),  # + the GitLabAgents and peering objects, cluster-wide
        (["--namespace=a"], 2),  # CRDs + namespaces
        (["--namespace=a", "--namespace=b", "--peering=p"], 6),  # + per namespace: agents, peering
    ],
)
def test_the_cap_leaves_room_for_every_watch_stream(flags: list[str], streams: int) -> None:
    settings = parse_settings(flags, environ={})
    assert kopf_watch_streams(settings) == streams
    assert kopf_connection_limit(settings) == streams + KOPF_REQUEST_CONNECTIONS


class _RotatingToken:
    """A loader's configuration whose refresh hook hands out a new token each time it is asked."""

    def __init__(self) -> None:
        self.refreshed = 0
        self.configuration = cast(Any, k8s_client.Configuration())  # the loaders set attributes freely
        self.configuration.host = "https://127.0.0.1:1"
        self.configuration.api_key["BearerToken"] = "Bearer token-0"
        self.configuration.refresh_api_key_hook = self._rotate

    def _rotate(self, configuration: Any) -> None:
        self.refreshed += 1
        configuration.api_key["BearerToken"] = f"Bearer token-{self.refreshed}"


async def test_each_login_rereads_the_token_and_gets_a_fresh_capped_session() -> None:
    token = _RotatingToken()
    kube = KubeAccess(token.configuration)
    before = token.refreshed
    first = await kopf_session(kube, 7)
    second = await kopf_session(kube, 7)
    try:
        assert isinstance(first, kopf.AiohttpSession)
        assert first.server == kube.base_url
        assert first.aiohttp_session is not second.aiohttp_session, "kopf closes the old one on re-login"
        connector = first.aiohttp_session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector.limit == 7
        assert token.refreshed == before + 2, "each login re-reads the token"
        assert kube.auth_headers() == {"Authorization": f"Bearer token-{before + 2}"}
        assert "Authorization" not in first.aiohttp_session.headers, "added per request, never frozen"
    finally:
        await first.aiohttp_session.close()
        await second.aiohttp_session.close()
