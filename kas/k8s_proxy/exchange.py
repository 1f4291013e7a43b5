"""One proxied exchange: an HTTP request in, a MakeRequest call through a tunnel, the response out (§7.2).

Two flows run at once: the request flow (header, body chunks, trailer, then half-close; for an upgrade,
client bytes after a 101) in a named task, and the response flow (header, body chunks flushed one by
one, trailer, then upgrade bytes) in the handler's own task. Failures before the response header become
Kubernetes Status errors (ProxyError 502); after it, the client connection is aborted, so a truncated
body can never pass for a complete one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, NoReturn

import grpc
from aiohttp import web
from multidict import CIMultiDict

from kas.k8s_proxy import frames, hijack
from kas.k8s_proxy.errors import ProxyError
from kas.k8s_proxy.frames import (
    ResponseBody,
    ResponseEnd,
    ResponseFrameError,
    ResponseHead,
    ResponseUpgradeData,
)
from kas.k8s_proxy.headers import merge_response_header
from kas.k8s_proxy.settings import ProxySettings
from kas.tunnel_call import CallError, CallEvent, CallMessage, TunnelCall

log = logging.getLogger(__name__)

_READ_FAILED: Final = "HTTP->gRPC: failed to read gRPC response"
# Go spells gRPC codes in camel case ("DeadlineExceeded") in the messages users see.
_CODE_NAMES: Final = {c.value[0]: "".join(p.capitalize() for p in c.name.split("_")) for c in grpc.StatusCode}


class _AbortedError(Exception):
    """The exchange failed after the response header was sent: the client connection must be cut."""


class _ClientGoneError(Exception):
    """Writing to the client failed: it went away, so the call is abandoned."""


class Exchange:
    """Relays one HTTP request/response (or upgraded connection) over one TunnelCall."""

    def __init__(
        self,
        request: web.BaseRequest,
        call: TunnelCall,
        settings: ProxySettings,
        preset_headers: CIMultiDict[str],
        *,
        header_frame: bytes,
        upgrade: bool,
        content_length: int,
    ) -> None:
        self._request = request
        self._call = call
        self._settings = settings
        self._preset = preset_headers
        self._header_frame = header_frame
        self._upgrade = upgrade
        self._content_length = content_length
        self._decoder = frames.ResponseDecoder()
        self._response: web.StreamResponse | None = None
        self._upgraded: asyncio.StreamReader | None = None
        self._upgrade_decided: asyncio.Future[asyncio.StreamReader | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._trailer_sent = asyncio.Event()
        self._body_done = False
        self._call_done = False

    async def run(self) -> web.StreamResponse:
        """The response for aiohttp (already prepared and written); raises ProxyError before the header."""
        try:
            # The header frame goes from this task: one task switch less before the agent can start.
            head_sent = await self._send_head()
            async with asyncio.TaskGroup() as tasks:
                sender = (
                    tasks.create_task(self._send_request(), name="k8s-proxy-request-stream")
                    if head_sent
                    else None
                )
                try:
                    outcome = await self._relay_guarded()
                finally:
                    if sender is not None:
                        sender.cancel()  # done already, or an upgrade's client side no one reads any more
        finally:
            if not self._call_done:
                await self._abandon_call()
        if isinstance(outcome, ProxyError):
            raise outcome
        return outcome

    async def _relay_guarded(self) -> web.StreamResponse | ProxyError:
        # errors are returned, not raised: the TaskGroup would wrap them in an ExceptionGroup
        try:
            return await self._relay_response()
        except ProxyError as err:
            return err
        except _AbortedError:
            self._abort_client()
            return self._sent_response()
        except _ClientGoneError:
            return self._sent_response()

    async def _abandon_call(self) -> None:
        try:
            await self._call.cancel()
        except Exception as err:  # noqa: BLE001 (the exchange is over either way)
            log.debug("cancelling the call failed: %s", type(err).__name__)

    # -- request flow (client -> agent) -----------------------------------------------------------------

    async def _send_head(self) -> bool:
        """The request's header frame; False if the call broke (the response flow reports how)."""
        try:
            await self._call.send(self._header_frame)
        except Exception as err:  # noqa: BLE001 (as in _send_request)
            log.debug("request stream to the agent stopped: %s", type(err).__name__)
            return False
        return True

    async def _send_request(self) -> None:
        """After the header: body chunks, the trailer, upgraded bytes, then the half-close."""
        call = self._call
        try:
            if self._content_length != 0:
                while chunk := await self._request.content.read(frames.CHUNK_SIZE):
                    await call.send(frames.data_frame(chunk))
            await call.send(frames.trailer_frame())
            self._trailer_sent.set()
            if self._upgrade:
                upgraded = await self._upgrade_decided
                if upgraded is None:
                    return  # refused upgrade: the response flow half-closes
                while chunk := await upgraded.read(frames.CHUNK_SIZE):
                    await call.send(frames.upgrade_data_frame(chunk))
            await call.close_send()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 (the response flow reports the call's failure; this only stops)
            log.debug("request stream to the agent stopped: %s", type(err).__name__)

    # -- response flow (agent -> client) ----------------------------------------------------------------

    async def _relay_response(self) -> web.StreamResponse:
        while (event := await self._receive()) is not None:
            if isinstance(event, CallError):
                self._fail(f"{_READ_FAILED}: {_describe(event)}")
            elif isinstance(event, CallMessage):
                try:
                    frame = self._decoder.decode(event.data)
                except ResponseFrameError as err:
                    self._fail(f"{_READ_FAILED}: {err}")
                await self._on_frame(frame)
        self._call_done = True
        if self._response is None:
            raise ProxyError.bad_gateway(f"{_READ_FAILED}: the call ended without a response header")
        if not self._body_done:
            raise _AbortedError
        if self._upgraded is None:
            await self._response.write_eof()
        return self._response

    async def _on_frame(self, frame: frames.ResponseFrame) -> None:
        if isinstance(frame, ResponseHead):
            await self._start_response(frame)
        elif self._response is None:  # the decoder's ordering check makes this unreachable
            self._fail(f"{_READ_FAILED}: response frame before the header")
        elif isinstance(frame, ResponseBody):
            await self._write(frame.data)
        elif isinstance(frame, ResponseEnd):
            self._body_done = True
            if self._upgraded is None:
                await self._response.write_eof()  # the client has everything now; the call still drains
        elif isinstance(frame, ResponseUpgradeData):
            if self._upgraded is None:
                self._fail(f"{_READ_FAILED}: upgrade data without a 101 response")
            async with asyncio.timeout(self._settings.upgrade_write_timeout):
                await self._write(frame.data)

    async def _start_response(self, head: ResponseHead) -> None:
        switching = head.status_code == 101
        if switching and not self._upgrade:
            self._fail(f"{_READ_FAILED}: 101 Switching Protocols to a request without Upgrade")
        if not 100 <= head.status_code <= 999:
            self._fail(f"{_READ_FAILED}: invalid status code {head.status_code}")
        headers = merge_response_header(self._preset, head.header, self._settings.via)
        reason = head.reason if head.reason.isprintable() else None
        response = web.StreamResponse(status=head.status_code, reason=reason or None, headers=headers)
        if switching:
            # before the 101 leaves: the client may send its first bytes as soon as it sees it
            self._upgraded = hijack.take_over_input(self._request)
            response.force_close()
        elif self._upgrade:
            # not upgraded after all: half-close now, before relaying the refusal
            self._upgrade_decided.set_result(None)
            await self._trailer_sent.wait()
            await self._half_close()
        await response.prepare(self._request)
        self._response = response
        if switching:
            self._upgrade_decided.set_result(self._upgraded)

    async def _half_close(self) -> None:
        try:
            await self._call.close_send()
        except Exception as err:  # noqa: BLE001 (a dead call shows up on receive(); nothing to add here)
            log.debug("half-closing the call failed: %s", type(err).__name__)

    async def _receive(self) -> CallEvent | None:
        try:
            return await self._call.receive()
        except Exception as err:  # noqa: BLE001 (a broken tunnel is a bad gateway, whatever the router raised)
            self._fail(f"{_READ_FAILED}: {type(err).__name__}")

    async def _write(self, data: bytes) -> None:
        assert self._response is not None
        try:
            await self._response.write(data)
        except ConnectionError:
            raise _ClientGoneError from None

    def _sent_response(self) -> web.StreamResponse:
        # _AbortedError and _ClientGoneError are raised only after the response header was sent
        assert self._response is not None
        return self._response

    def _fail(self, message: str) -> NoReturn:
        """Stop the exchange: a 502 Status before the response header, a cut connection after it."""
        if self._response is None:
            raise ProxyError.bad_gateway(message)
        log.warning("aborting a proxied response: %s", message)
        raise _AbortedError

    def _abort_client(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()


def _describe(event: CallError) -> str:
    status = event.status
    name = _CODE_NAMES.get(status.code, str(status.code))
    return f"rpc error: code = {name} desc = {status.message}"
