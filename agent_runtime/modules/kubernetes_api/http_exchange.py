"""Ordinary requests: streamed through the agent's own aiohttp session, never buffered whole (§7.3).

The request body comes from `data` frames and ends at the end of the request stream; the response body
goes back in ≤ 32 KiB `data` frames as it arrives (watches stay open).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import yarl
from multidict import CIMultiDict

from agent_proto.http_headers import canonical_header_key
from agent_runtime.constants import CHUNK_SIZE, GRPC_TO_HTTP_ERROR_PREFIX
from agent_runtime.kube import KubeAccess
from agent_runtime.local_rpc import RpcStatusError
from agent_runtime.modules.kubernetes_api import frames
from agent_runtime.modules.kubernetes_api.outgoing import OutgoingRequest, response_via
from agent_runtime.rpc_status import StatusCode

_SKIP_AUTO = ("Accept-Encoding", "User-Agent", "Content-Type", "Accept")
"""aiohttp must not add headers the client did not send (an added Accept-Encoding would gzip replies)."""
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10.0)
"""No limit on the exchange (watches stay open), 10 s to connect."""


def _unexpected(what: str) -> RpcStatusError:
    return RpcStatusError(StatusCode.INTERNAL, f"unexpected HttpRequest_{what} message received")


class _Body:
    """The request body from `data` frames; `error` is set if the stream broke the rules."""

    def __init__(self, request_frames: frames.RequestFrames, allow_data: bool) -> None:
        self._frames = request_frames
        self._allow_data = allow_data
        self.error: RpcStatusError | None = None

    async def _next_data(self) -> bytes | None:
        while True:
            frame = await self._frames.next()
            if frame is None:
                return None
            which = frame.WhichOneof("message")
            if which == "data":
                if not self._allow_data:
                    raise _unexpected("Data")
                return frame.data.data
            if which == "upgradeData":
                raise _unexpected("UpgradeData")
            # trailer: the body ends at the end of the stream, not here (§7.3)

    async def chunks(self) -> AsyncIterator[bytes]:
        """For aiohttp: yields chunks; a rule violation ends the body and is kept in `error`."""
        try:
            while (chunk := await self._next_data()) is not None:
                if chunk:
                    yield chunk
        except RpcStatusError as e:
            self.error = e

    async def drain(self) -> None:
        """No body expected: read (and check) the rest of the request stream."""
        while await self._next_data() is not None:
            pass


async def exchange(
    call: frames.ResponseWriter,
    request_frames: frames.RequestFrames,
    kube: KubeAccess,
    session: aiohttp.ClientSession,
    req: OutgoingRequest,
) -> None:
    """Serve one non-upgrade request through `session` (the agent's own pool, never a shared one)."""
    no_body = req.content_length == 0
    body = _Body(request_frames, allow_data=not no_body)
    headers: CIMultiDict[str] = CIMultiDict(req.headers)
    if req.content_length is not None and req.content_length > 0:
        headers["Content-Length"] = str(req.content_length)
    if no_body:
        try:
            async with asyncio.TaskGroup() as tg:
                drain = tg.create_task(body.drain(), name="make-request-drain")
                # In this task, not a child: the request leaves without a task switch. A stream that
                # breaks the rules fails `drain`, and the group cancels this relay.
                await _relay(call, session, _url(kube, req), req, headers, None, drain)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
    else:
        await _relay(call, session, _url(kube, req), req, headers, body.chunks(), None)
        if body.error is not None:
            raise body.error


async def _relay(
    call: frames.ResponseWriter,
    session: aiohttp.ClientSession,
    url: yarl.URL,
    req: OutgoingRequest,
    headers: CIMultiDict[str],
    data: AsyncIterator[bytes] | None,
    drain: asyncio.Task[None] | None,
) -> None:
    try:
        response_cm = session.request(
            req.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO,
            timeout=_TIMEOUT,
        )
        response = await response_cm.__aenter__()
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise RpcStatusError(StatusCode.UNAVAILABLE, f"{GRPC_TO_HTTP_ERROR_PREFIX}{_describe(e)}") from e
    try:
        header: dict[str, list[str]] = {}
        for key, value in response.headers.items():
            header.setdefault(canonical_header_key(key), []).append(value)
        version = response.version or aiohttp.HttpVersion11
        header.setdefault("Via", []).append(response_via(version.major, version.minor))
        status = f"{response.status} {response.reason or ''}".rstrip()
        await call.header(response.status, status, header)
        try:
            while chunk := await response.content.read(CHUNK_SIZE):
                await call.data(chunk)
        except (aiohttp.ClientError, OSError) as e:
            raise RpcStatusError(StatusCode.UNAVAILABLE, f"reading the response body: {_describe(e)}") from e
        if drain is not None:
            await drain  # request stream fully checked before we declare success
        await call.trailer()
    finally:
        await response_cm.__aexit__(None, None, None)


def _url(kube: KubeAccess, req: OutgoingRequest) -> yarl.URL:
    # The origin comes from the parsed base URL, and hygiene made sure the path starts with "/": kas
    # cannot turn the path into a port or a host (`:6444/x`, `@other/x`).
    return yarl.URL(str(yarl.URL(kube.base_url).origin()) + req.path_and_query, encoded=True)


def _describe(e: BaseException) -> str:
    return str(e) or type(e).__name__


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to surface from a TaskGroup: a RpcStatusError if there is one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            leaves.append(e)
    for e in leaves:
        if isinstance(e, RpcStatusError):
            return e
    return leaves[0]
