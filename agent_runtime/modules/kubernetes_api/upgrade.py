"""HTTP Upgrade (exec, attach, port-forward) on a dedicated HTTP/1.1 connection (§7.2, §7.3).

aiohttp does not hand over the raw connection after 101, so this is a small HTTP/1.1 client: write the
request, read the status line and headers, then either relay the (non-101) body or pump bytes both ways
as upgradeData frames until the API server closes the connection. With the kubeconfig's `proxy-url` (an
http:// proxy), the connection is a CONNECT tunnel through it, as for every other API request.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import yarl

from agent_proto.http_headers import canonical_header_key
from agent_runtime.constants import CHUNK_SIZE, GRPC_TO_HTTP_ERROR_PREFIX
from agent_runtime.kube import KubeAccess
from agent_runtime.local_rpc import RpcStatusError
from agent_runtime.modules.kubernetes_api import frames
from agent_runtime.modules.kubernetes_api.outgoing import OutgoingRequest, response_via
from agent_runtime.rpc_status import StatusCode

_HEAD_LIMIT = 64 * 1024
"""Largest response head accepted."""
_CONNECT_TIMEOUT_S = 10.0


def _unavailable(e: BaseException) -> RpcStatusError:
    return RpcStatusError(StatusCode.UNAVAILABLE, f"{GRPC_TO_HTTP_ERROR_PREFIX}{e or type(e).__name__}")


async def exchange(
    call: frames.ResponseWriter, request_frames: frames.RequestFrames, kube: KubeAccess, req: OutgoingRequest
) -> None:
    """Serve one upgrade request."""
    base = yarl.URL(kube.base_url)
    try:
        async with asyncio.timeout(_CONNECT_TIMEOUT_S):
            reader, writer = await _connect(kube, base)
    except (OSError, TimeoutError) as e:
        raise _unavailable(e) from e
    try:
        await _write_head(writer, req, base)
        await _write_body(writer, request_frames, req.content_length)
        status_code, reason, version, header = await _read_head(reader)
        header.setdefault("Via", []).append(response_via(*version))
        await call.header(status_code, f"{status_code} {reason}".rstrip(), header)
        if status_code != 101:
            await _relay_body(call, reader, header)
            await call.trailer()
            return
        await call.trailer()
        await _pump(call, request_frames, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await writer.wait_closed()


async def _connect(kube: KubeAccess, base: yarl.URL) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the API server: direct, or through the kubeconfig's HTTP proxy (CONNECT)."""
    tls = base.scheme == "https"
    host = base.host or "localhost"
    port = base.port or (443 if tls else 80)
    server_hostname = (kube.server_hostname or host) if tls else None
    if kube.proxy is None:
        context = kube.ssl_context if tls else None
        return await asyncio.open_connection(
            host, port, ssl=context, server_hostname=server_hostname, limit=_HEAD_LIMIT
        )
    proxy = yarl.URL(kube.proxy)
    if proxy.scheme != "http" or proxy.host is None:
        raise OSError(f"upgrades go through http:// proxies only, not {proxy.scheme}://")
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port or 80, limit=_HEAD_LIMIT)
    try:
        name = base.raw_host or host
        await _tunnel_through(reader, writer, proxy, f"[{name}]:{port}" if ":" in name else f"{name}:{port}")
        if tls:
            await writer.start_tls(kube.ssl_context, server_hostname=server_hostname)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _tunnel_through(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: yarl.URL, authority: str
) -> None:
    """Ask the proxy for a tunnel to `authority`; OSError unless it answers 2xx."""
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.user is not None:
        credentials = aiohttp.BasicAuth(proxy.user, proxy.password or "")
        lines.append(f"Proxy-Authorization: {credentials.encode()}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        raise OSError("the proxy closed the connection or sent no valid answer to CONNECT") from e
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].startswith("2"):
        raise OSError(f"the proxy refused the tunnel: {status_line}")


async def _write_head(writer: asyncio.StreamWriter, req: OutgoingRequest, base: yarl.URL) -> None:
    lines = [f"{req.method} {req.path_and_query} HTTP/1.1", f"Host: {base.raw_authority}"]
    lines += [f"{k}: {v}" for k, v in req.headers]
    if req.content_length is not None and req.content_length > 0:
        lines.append(f"Content-Length: {req.content_length}")
    elif req.content_length == -1:
        lines.append("Transfer-Encoding: chunked")
    # Hygiene (hygiene.py) made the method and every header name a token and every value free of
    # control characters, so nothing kas sent can end a line here.
    head = "\r\n".join(lines) + "\r\n\r\n"
    writer.write(head.encode("latin-1", errors="replace"))
    try:
        await writer.drain()
    except OSError as e:
        raise _unavailable(e) from e


async def _write_body(
    writer: asyncio.StreamWriter, request_frames: frames.RequestFrames, length: int | None
) -> None:
    """For upgrade requests the body ends at `trailer` (§7.3)."""
    chunked = length == -1
    while True:
        frame = await request_frames.next()
        which = frame.WhichOneof("message") if frame is not None else None
        if which == "trailer" or frame is None:
            break
        if which == "data":
            if length == 0:
                raise RpcStatusError(StatusCode.INTERNAL, "unexpected HttpRequest_Data message received")
            data = frame.data.data
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
            await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, tuple[int, int], dict[str, list[str]]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as e:
        raise _unavailable(e) from e
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    try:
        major, minor = (int(x) for x in parts[0].removeprefix("HTTP/").split("."))
        code = int(parts[1])
    except (ValueError, IndexError) as e:
        raise _unavailable(ValueError(f"malformed status line {status_line[:80]!r}")) from e
    header: dict[str, list[str]] = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if sep:
            header.setdefault(canonical_header_key(name.strip()), []).append(value.strip())
    return code, parts[2] if len(parts) > 2 else "", (major, minor), header


async def _relay_body(
    call: frames.ResponseWriter, reader: asyncio.StreamReader, header: dict[str, list[str]]
) -> None:
    if "chunked" in ",".join(header.get("Transfer-Encoding", [])).lower():
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            remaining = size
            while remaining:
                chunk = await reader.readexactly(min(remaining, CHUNK_SIZE))
                remaining -= len(chunk)
                await call.data(chunk)
            await reader.readline()
    lengths = header.get("Content-Length")
    remaining = int(lengths[0]) if lengths else -1
    while remaining != 0:
        chunk = await reader.read(CHUNK_SIZE if remaining < 0 else min(remaining, CHUNK_SIZE))
        if not chunk:
            return
        remaining -= len(chunk) if remaining > 0 else 0
        await call.data(chunk)


async def _pump(
    call: frames.ResponseWriter,
    request_frames: frames.RequestFrames,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Both directions until the API server closes; the client's EOF half-closes our write side."""

    async def up() -> None:
        while (frame := await request_frames.next()) is not None:
            if frame.WhichOneof("message") == "upgradeData":
                writer.write(frame.upgradeData.data)
                await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    upward = asyncio.create_task(up(), name="upgrade-client-to-server")
    try:
        while chunk := await reader.read(CHUNK_SIZE):
            await call.upgrade_data(chunk)
            if upward.done() and upward.exception() is not None:
                break
    except OSError as e:
        raise RpcStatusError(StatusCode.UNAVAILABLE, f"upgraded connection: {e}") from e
    finally:
        if upward.done() and not upward.cancelled() and (exc := upward.exception()) is not None:
            raise exc
        upward.cancel()
        await asyncio.gather(upward, return_exceptions=True)
