"""HTTP Upgrade through the proxy (exec/attach/port-forward shape): 101, then raw bytes both ways."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest

from tests.integration.kas_proxy.conftest import AGENT, AGENT_ACCESS_JOB
from tests.integration.kas_proxy.harness import ProxyHarness, wait_until
from tests.integration.kas_proxy.loopback_router import LoopbackRouter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

_REFUSE_PATH = "/api/v1/namespaces/default/pods/refused/exec"


async def _echo_after_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A loopback server: 101 for an Upgrade request, then every byte echoed back until EOF."""
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *fields = head.split("\r\n")
        upgrade = next((f.split(":", 1)[1].strip() for f in fields if f.lower().startswith("upgrade:")), "")
        if _REFUSE_PATH in request_line:
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nno way"
            )
            await writer.drain()
            return
        writer.write(
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\n\r\n".encode()
        )
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def upgrade_target() -> AsyncIterator[tuple[str, int]]:
    server = await asyncio.start_server(_echo_after_upgrade, "127.0.0.1", 0)
    try:
        yield "127.0.0.1", server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _open(
    proxy: ProxyHarness[LoopbackRouter], path: str, upgrade: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cafile=str(proxy.ca_file))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.proxy.port, ssl=context)
    writer.write(
        (
            f"POST /k8s-proxy{path}?command=sh&stdin=true HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{proxy.proxy.port}\r\n"
            f"Authorization: Bearer ci:{AGENT.id}:{AGENT_ACCESS_JOB}\r\n"
            f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n"
            "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("protocol", ["SPDY/3.1", "websocket"])
async def test_upgraded_connection_pipes_bytes_both_ways(
    proxy: ProxyHarness[LoopbackRouter], protocol: str
) -> None:
    reader, writer = await _open(proxy, "/api/v1/namespaces/default/pods/p/exec", protocol)
    try:
        async with asyncio.timeout(10):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
            assert f"Upgrade: {protocol}\r\n" in head
            for payload in (b"hello", b"x" * 100_000, b"\x00\xff binary"):
                writer.write(payload)
                await writer.drain()
                assert await reader.readexactly(len(payload)) == payload
    finally:
        writer.close()

    call = proxy.router.calls[-1]
    assert call.header is not None
    assert call.header.request.header["Upgrade"].value == [protocol]
    assert call.header.request.header["Connection"].value == ["upgrade"]
    assert call.request_frames[:2] == ["header", "trailer"]
    assert call.request_frames.count("upgradeData") >= 3  # the 100 kB payload went in ≤ 32 KiB frames
    # the client hung up: the proxy abandons or half-closes the call, it never lingers
    assert call.call is not None
    loopback = call.call
    await wait_until(lambda: loopback.cancelled or loopback.half_closed)


async def test_refused_upgrade_is_an_ordinary_response(proxy: ProxyHarness[LoopbackRouter]) -> None:
    reader, writer = await _open(proxy, _REFUSE_PATH, "SPDY/3.1")
    try:
        async with asyncio.timeout(10):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            body = await reader.readexactly(6)
    finally:
        writer.close()

    assert head.startswith("HTTP/1.1 403 Forbidden\r\n")
    assert body == b"no way"
    call = proxy.router.calls[-1]
    assert call.request_frames == ["header", "trailer"]
    assert call.call is not None
    assert call.call.half_closed
