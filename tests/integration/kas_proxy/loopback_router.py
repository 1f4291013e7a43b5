"""A TunnelRouter for tests that plays agent + tunnel: it serves MakeRequest calls itself.

Each call decodes the proxy's grpctool.HttpRequest frames, performs the HTTP request against a real
server (the kube-apiserver fixture, as the cluster admin, applying HeaderExtra impersonation the way
agentk does), and answers with grpctool.HttpResponse frames. Upgrade requests go over a raw loopback
TCP connection to `upgrade_target`, whose bytes are piped both ways as upgradeData.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.rpc import status_pb2

from agent_proto.flavor import WireFlavor, wire_names
from agent_proto.gitlab.agent.grpctool import grpctool_pb2 as grpctool
from agent_proto.gitlab.agent.prototool import prototool_pb2 as prototool
from agent_proto.ordering import OrderingValidator
from kas.tunnel_call import CallError, CallEvent, CallHeader, CallMessage, CallTrailer, NoTunnelError

CHUNK = 32 * 1024
_UNAVAILABLE = 14
# Not forwarded by the stand-in agent: its own HTTP client frames the body and the connection.
_DROP = {"Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Host"}


@dataclass
class OpenedCall:
    """What the proxy asked for, recorded for assertions."""

    agent_id: int
    method: str
    metadata: Mapping[str, Sequence[str]]
    header: grpctool.HttpRequest.Header | None = None
    request_frames: list[str] = field(default_factory=list)
    sent_headers: dict[str, list[str]] = field(default_factory=dict)
    call: LoopbackCall | None = None


class LoopbackCall:
    """The TunnelCall the proxy sees; frames travel through two in-memory queues."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.events: asyncio.Queue[CallEvent | None] = asyncio.Queue()
        self.cancelled = False
        self.half_closed = False
        self._ended = False

    async def send(self, message: bytes) -> None:
        if self.cancelled or self.half_closed:
            raise RuntimeError("send after close_send/cancel")
        await self.requests.put(message)

    async def close_send(self) -> None:
        self.half_closed = True
        await self.requests.put(None)

    async def receive(self) -> CallEvent | None:
        if self._ended:
            return None
        event = await self.events.get()
        if event is None:
            self._ended = True
        return event

    async def cancel(self) -> None:
        self.cancelled = True
        await self.requests.put(None)


class LoopbackRouter:
    """TunnelRouter for agents in `agent_ids`; each call is served by a named task this router owns."""

    def __init__(
        self,
        base_url: str,
        *,
        ca_file: str | None,
        token: str,
        agent_ids: Sequence[int],
        flavor: WireFlavor = WireFlavor.GITLAB,
        upgrade_target: tuple[str, int] | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._token = token
        self._agent_ids = set(agent_ids)
        self._names = wire_names(flavor)
        self._upgrade_target = upgrade_target
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls: list[OpenedCall] = []

    async def __aenter__(self) -> LoopbackRouter:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def open_call(
        self,
        agent_id: int,
        method: str,
        metadata: Mapping[str, Sequence[str]],
        timeout: float,  # noqa: ASYNC109 (TunnelRouter's signature; the stand-in answers at once)
    ) -> LoopbackCall:
        if agent_id not in self._agent_ids:
            raise NoTunnelError(f"agent {agent_id} has no tunnel")
        record = OpenedCall(agent_id, method, metadata)
        self.calls.append(record)
        call = LoopbackCall()
        record.call = call
        task = asyncio.create_task(self._serve(call, record), name=f"loopback-agent-call-{len(self.calls)}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return call

    # -- the stand-in agent -----------------------------------------------------------------------------

    async def _serve(self, call: LoopbackCall, record: OpenedCall) -> None:
        order = OrderingValidator(grpctool.HttpRequest, "message")

        async def next_frame() -> grpctool.HttpRequest | None:
            raw = await call.requests.get()
            if raw is None:
                return None
            message = grpctool.HttpRequest.FromString(raw)
            record.request_frames.append(order.accept(message))
            return message

        first = await next_frame()
        if first is None or call.cancelled:
            return
        header = first.header
        record.header = header
        try:
            if "Upgrade" in header.request.header:
                await self._serve_upgrade(call, header, next_frame)
            else:
                await self._serve_http(call, record, header, next_frame)
        except Exception as err:  # noqa: BLE001 (the stand-in agent reports every failure as agentk does)
            await call.events.put(CallHeader({}))
            await call.events.put(CallTrailer({}))
            status = status_pb2.Status(code=_UNAVAILABLE, message=f"gRPC -> HTTP: {err}")
            await call.events.put(CallError(status))
            await call.events.put(None)

    def _outgoing_headers(self, header: grpctool.HttpRequest.Header) -> dict[str, list[str]]:
        out = {k: list(v.value) for k, v in header.request.header.items() if k not in _DROP}
        out.setdefault("Via", []).append("gRPC/1.0 loopback-agent/v0.0.0/test")
        if header.HasField("extra"):
            imp = self._names.unpack_header_extra(header.extra)
            if not imp.is_empty():
                out["Impersonate-User"] = [imp.username]
                if imp.groups:
                    out["Impersonate-Group"] = list(imp.groups)
                if imp.uid:
                    out["Impersonate-Uid"] = [imp.uid]
                for key, values in imp.extra.items():
                    out[f"Impersonate-Extra-{urllib.parse.quote(key, safe='')}"] = list(values)
        out["Authorization"] = [f"Bearer {self._token}"]
        return out

    async def _serve_http(self, call: LoopbackCall, record: OpenedCall, header: Any, next_frame: Any) -> None:
        assert self._session is not None
        request = header.request
        query = [(k, v) for k, values in request.query.items() for v in values.value]
        url = self._base_url + urllib.parse.quote(request.url_path)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = self._outgoing_headers(header)
        record.sent_headers = headers
        flat = [(k, v) for k, values in headers.items() for v in values]

        async def body() -> AsyncIterator[bytes]:
            while (frame := await next_frame()) is not None and frame.HasField("data"):
                yield frame.data.data

        has_body = header.content_length != 0
        async with self._session.request(
            request.method, url, headers=flat, data=body() if has_body else None, ssl=self._ssl or False
        ) as response:
            if not has_body:
                while await next_frame() is not None:  # trailer, then the half-close
                    pass
            await call.events.put(CallHeader({}))
            await self._send(
                call, header=_response_header(response.status, response.reason, response.headers)
            )
            async for chunk in response.content.iter_any():
                for start in range(0, len(chunk), CHUNK):
                    await self._send(call, data=grpctool.HttpResponse.Data(data=chunk[start : start + CHUNK]))
        await self._send(call, trailer=grpctool.HttpResponse.Trailer())
        await call.events.put(CallTrailer({}))
        await call.events.put(None)

    async def _serve_upgrade(self, call: LoopbackCall, header: Any, next_frame: Any) -> None:
        if self._upgrade_target is None:
            raise OSError("no upgrade target configured")
        host, port = self._upgrade_target
        reader, writer = await asyncio.open_connection(host, port)
        try:
            request = header.request
            target = urllib.parse.quote(request.url_path)
            lines = [f"{request.method} {target} HTTP/1.1", f"Host: {host}:{port}"]
            lines += [f"{k}: {v}" for k, values in request.header.items() for v in values.value]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            while (frame := await next_frame()) is not None and not frame.HasField("trailer"):
                writer.write(frame.data.data)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _, code, reason = [*head[0].split(" ", 2), ""][:3]
            fields = [line.split(":", 1) for line in head[1:] if ":" in line]
            await call.events.put(CallHeader({}))
            await self._send(
                call, header=_response_header(int(code), reason, [(k, v.strip()) for k, v in fields])
            )
            if code != "101":  # refused: an ordinary response with a Content-Length body
                length = next((int(v) for k, v in fields if k.lower() == "content-length"), 0)
                await self._send(call, data=grpctool.HttpResponse.Data(data=await reader.readexactly(length)))
                await self._send(call, trailer=grpctool.HttpResponse.Trailer())
                await call.events.put(CallTrailer({}))
                await call.events.put(None)
                return
            await self._send(call, trailer=grpctool.HttpResponse.Trailer())
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._pipe_in(next_frame, writer), name="loopback-agent-upgrade-in")
                while chunk := await reader.read(CHUNK):
                    await self._send(call, upgradeData=grpctool.HttpResponse.UpgradeData(data=chunk))
            await call.events.put(CallTrailer({}))
            await call.events.put(None)
        finally:
            writer.close()

    @staticmethod
    async def _pipe_in(next_frame: Any, writer: asyncio.StreamWriter) -> None:
        while (frame := await next_frame()) is not None:
            writer.write(frame.upgradeData.data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    @staticmethod
    async def _send(call: LoopbackCall, **frame: Any) -> None:
        await call.events.put(CallMessage(grpctool.HttpResponse(**frame).SerializeToString()))


def _response_header(code: int, reason: str | None, headers: Any) -> grpctool.HttpResponse.Header:
    merged: dict[str, list[str]] = {}
    for key, value in headers.items() if hasattr(headers, "items") else headers:
        merged.setdefault(key, []).append(value)
    merged.setdefault("Via", []).append("1.1 loopback-agent/v0.0.0/test")
    return grpctool.HttpResponse.Header(
        response=prototool.HttpResponse(
            status_code=code,
            status=f"{code} {reason or ''}".strip(),
            header={k: prototool.Values(value=v) for k, v in merged.items()},
        )
    )
