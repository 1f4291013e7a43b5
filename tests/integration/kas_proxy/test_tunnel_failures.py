"""What the client sees when the tunnelled call fails: a 502 Status before the header, a cut connection after.

A scripted agent replays exactly the frames a test gives it (failures a real apiserver cannot produce on
demand); the proxy still runs for real on loopback HTTPS.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.rpc import status_pb2

from agent_proto.gitlab.agent.grpctool import grpctool_pb2 as grpctool
from agent_proto.gitlab.agent.prototool import prototool_pb2 as prototool
from kas.k8s_proxy import ServingCertificate
from kas.tunnel_call import CallError, CallEvent, CallHeader, CallMessage, CallTrailer
from tests.integration.kas_proxy.conftest import ACCESS, AGENT, AGENT_ACCESS_JOB, AGENT_CONFIG
from tests.integration.kas_proxy.harness import ProxyHarness, configuration, wait_until
from tests.integration.kas_proxy.loopback_router import LoopbackCall

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _head(code: int = 200, header: Mapping[str, Sequence[str]] | None = None) -> CallMessage:
    values = {k: prototool.Values(value=list(v)) for k, v in (header or {}).items()}
    response = prototool.HttpResponse(status_code=code, status=f"{code} OK", header=values)
    return CallMessage(
        grpctool.HttpResponse(header=grpctool.HttpResponse.Header(response=response)).SerializeToString()
    )


def _data(chunk: bytes) -> CallMessage:
    return CallMessage(grpctool.HttpResponse(data=grpctool.HttpResponse.Data(data=chunk)).SerializeToString())


_END = CallMessage(grpctool.HttpResponse(trailer=grpctool.HttpResponse.Trailer()).SerializeToString())


class ScriptedRouter:
    """Every call answers with `script` (then ends); what the proxy sent is kept in `calls`."""

    def __init__(self) -> None:
        self.script: list[CallEvent | None] = []
        self.hold_open = False
        """Do not end the call after the script: the agent is still streaming (a watch)."""
        self.calls: list[LoopbackCall] = []

    async def open_call(
        self,
        agent_id: int,
        method: str,
        metadata: Mapping[str, Sequence[str]],
        timeout: float,  # noqa: ASYNC109 (TunnelRouter's signature; the script answers at once)
    ) -> LoopbackCall:
        call = LoopbackCall()
        for event in self.script if self.hold_open else [*self.script, None]:
            call.events.put_nowait(event)
        self.calls.append(call)
        return call


@pytest.fixture
async def scripted(
    serving_cert: ServingCertificate, tmp_path: Path
) -> AsyncIterator[tuple[ProxyHarness[ScriptedRouter], ScriptedRouter]]:
    router = ScriptedRouter()
    harness = ProxyHarness(tmp_path, serving_cert, router, [AGENT], ACCESS)
    harness.configs[AGENT.id] = configuration(AGENT_CONFIG)
    await harness.proxy.start()
    try:
        yield harness, router
    finally:
        await harness.proxy.stop()


async def _get(
    harness: ProxyHarness[ScriptedRouter], headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    context = ssl.create_default_context(cafile=str(harness.ca_file))
    auth = {"Authorization": f"Bearer ci:{AGENT.id}:{AGENT_ACCESS_JOB}", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.get(harness.url + "api/v1/pods", headers=auth, ssl=context) as response,
    ):
        return response.status, response.headers, await response.read()


async def test_call_error_before_the_header_is_502(
    scripted: tuple[ProxyHarness[ScriptedRouter], ScriptedRouter],
) -> None:
    harness, router = scripted
    status = status_pb2.Status(code=14, message="gRPC -> HTTP: dial tcp: connection refused")
    router.script = [CallHeader({}), CallTrailer({}), CallError(status)]

    code, _, body = await _get(harness)

    assert code == 502
    assert (
        b"failed to read gRPC response: rpc error: code = Unavailable desc = gRPC -> HTTP: dial tcp" in body
    )


async def test_out_of_order_frames_are_502(
    scripted: tuple[ProxyHarness[ScriptedRouter], ScriptedRouter],
) -> None:
    harness, router = scripted
    router.script = [CallHeader({}), _data(b"body before header")]

    code, _, body = await _get(harness)

    assert code == 502
    assert b"transition from start to data (2) is not allowed" in body


async def test_call_ending_mid_body_cuts_the_connection(
    scripted: tuple[ProxyHarness[ScriptedRouter], ScriptedRouter],
) -> None:
    harness, router = scripted
    router.script = [
        CallHeader({}),
        _head(200, {"Content-Type": ["application/json"]}),
        _data(b'{"items": ['),
    ]

    with pytest.raises(aiohttp.ClientPayloadError):
        await _get(harness)
    assert router.calls[-1].cancelled is False  # the call had ended; nothing to abandon


async def test_response_headers_are_merged_as_gitlab_does(
    scripted: tuple[ProxyHarness[ScriptedRouter], ScriptedRouter],
) -> None:
    harness, router = scripted
    agent_header = {
        "Content-Type": ["application/json"],
        "Access-Control-Allow-Origin": ["*"],  # the cluster's CORS headers never reach the browser
        "Vary": ["Accept-Encoding"],
        "Via": ["1.1 gitlab-agent/v16.5.0/abc"],
        "Keep-Alive": ["timeout=5"],
    }
    router.script = [CallHeader({}), _head(200, agent_header), _data(b"{}"), _END, CallTrailer({})]

    code, headers, body = await _get(harness)

    assert (code, body) == (200, b"{}")
    assert "Access-Control-Allow-Origin" not in headers
    assert "Keep-Alive" not in headers
    assert headers.getall("Vary") == ["Accept-Encoding"]
    vias = headers.getall("Via")
    assert vias[0] == "1.1 gitlab-agent/v16.5.0/abc"
    assert vias[-1].startswith("gRPC/1.0 gitlab-kas/")


async def test_body_chunks_are_flushed_as_they_arrive(
    scripted: tuple[ProxyHarness[ScriptedRouter], ScriptedRouter],
) -> None:
    harness, router = scripted
    router.script = [CallHeader({}), _head(200), _data(b"first event\n")]
    router.hold_open = True  # like a watch: the agent has sent one event and is waiting for more
    context = ssl.create_default_context(cafile=str(harness.ca_file))
    auth = {"Authorization": f"Bearer ci:{AGENT.id}:{AGENT_ACCESS_JOB}"}

    async with (
        aiohttp.ClientSession() as session,
        session.get(harness.url + "api/v1/pods?watch=1", headers=auth, ssl=context) as response,
        asyncio.timeout(10),
    ):
        assert await response.content.readline() == b"first event\n"

    # the client hung up while the call was open: the proxy abandons it, releasing the tunnel
    call = router.calls[-1]
    await wait_until(lambda: call.cancelled)
