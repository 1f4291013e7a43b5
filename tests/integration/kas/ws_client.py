"""A minimal gRPC-over-WebSocket bridge for tests: a loopback port whose connections become ws-tunnel
WebSockets to kas (the agent side of PROTOCOL.md §3.2), built on agent_proto.wstunnel."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from agent_proto import wstunnel


async def handshake(
    host: str,
    port: int,
    *,
    subprotocol: str | None = wstunnel.SUBPROTOCOL,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, wstunnel.HttpHead]:
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context)
    key = wstunnel.new_key()
    request = wstunnel.build_upgrade_request(target="/any/path", host=f"{host}:{port}", key=key)
    if subprotocol != wstunnel.SUBPROTOCOL:
        request = request.replace(
            b"Sec-WebSocket-Protocol: ws-tunnel", f"Sec-WebSocket-Protocol: {subprotocol or 'other'}".encode()
        )
    writer.write(request)
    buf = bytearray()
    while (head := wstunnel.read_head(buf)) is None:
        chunk = await reader.read(4096)
        if not chunk:
            raise ConnectionError("kas closed during the handshake")
        buf += chunk
    reader.feed_data(bytes(buf)) if buf else None
    return reader, writer, head


async def _pump_up(local: asyncio.StreamReader, ws: asyncio.StreamWriter) -> None:
    while data := await local.read(65536):
        ws.write(wstunnel.encode_binary(data, mask=True))
        await ws.drain()


async def _pump_down(ws: asyncio.StreamReader, local: asyncio.StreamWriter) -> None:
    decoder = wstunnel.FrameDecoder(expect_masked=False)
    while data := await ws.read(65536):
        for event in decoder.feed(data):
            if isinstance(event, wstunnel.Data):
                local.write(event.payload)
            elif isinstance(event, wstunnel.Close):
                return
        await local.drain()


@asynccontextmanager
async def ws_bridge(host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """Yields `127.0.0.1:<port>`: point a plaintext gRPC channel at it."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter) -> None:
        ws_r, ws_w, head = await handshake(host, port, ssl_context=ssl_context)
        assert head.status == 101
        up = asyncio.create_task(_pump_up(local_r, ws_w), name="ws-up")
        down = asyncio.create_task(_pump_down(ws_r, local_w), name="ws-down")
        tasks.update((up, down))
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        for t in (up, down):
            t.cancel()
        local_w.close()
        ws_w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        with suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
