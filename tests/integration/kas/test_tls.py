"""TLS on the agent listener: ALPN h2 goes to gRPC (grpcs://), http/1.1 to the WebSocket upgrade (wss://)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import grpc
import pytest

from kas.k8s_proxy.certs import self_signed_serving_certificate
from kas.testing import running_kas
from tests.integration.kas.agentk import register
from tests.integration.kas.conftest import AGENT
from tests.integration.kas.ws_client import handshake, ws_bridge


async def test_grpcs_and_wss_on_one_tls_port(tmp_path: Path) -> None:
    ca, cert, key = self_signed_serving_certificate().write(tmp_path / "pki")
    async with running_kas(tmp_path / "kas", [AGENT], tls=(cert, key)) as kas:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        async with grpc.aio.secure_channel(kas.agent_address, credentials) as channel:
            await register(channel, AGENT.token, pod_id=1)
        client_tls = ssl.create_default_context(cafile=str(ca))
        client_tls.set_alpn_protocols(["http/1.1"])
        async with (
            ws_bridge(kas.agent_host, kas.agent_port, ssl_context=client_tls) as bridged,
            grpc.aio.insecure_channel(bridged) as channel,
        ):
            await register(channel, AGENT.token, pod_id=2)
        infos = await kas.tracker.connected(AGENT.id)
        assert sorted(i.connection_id for i in infos) == [1, 2]
        await asyncio.sleep(0)


async def test_grpcs_without_websocket_is_served_by_grpc_directly(tmp_path: Path) -> None:
    ca, cert, key = self_signed_serving_certificate().write(tmp_path / "pki")
    async with running_kas(tmp_path / "kas", [AGENT], tls=(cert, key), websocket=False) as kas:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        async with grpc.aio.secure_channel(kas.agent_address, credentials) as channel:
            await register(channel, AGENT.token, pod_id=1)
        assert [i.connection_id for i in await kas.tracker.connected(AGENT.id)] == [1]
        # no HTTP/1.1 side any more: a WebSocket upgrade gets no answer, the connection just ends
        client_tls = ssl.create_default_context(cafile=str(ca))
        client_tls.set_alpn_protocols(["http/1.1"])
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await asyncio.wait_for(handshake(kas.agent_host, kas.agent_port, ssl_context=client_tls), 5)
