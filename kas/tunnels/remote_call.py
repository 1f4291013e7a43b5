"""A tunnelled call relayed through another kas replica's private API (the routing side of §11.2)."""

from __future__ import annotations

import asyncio

import grpc
from google.rpc import code_pb2

from agent_proto.gitlab.agent.kas import kas_pb2
from agent_proto.ordering import OrderingValidator, StreamOrderError
from kas.tunnel_call import CallError, CallEvent, call_event
from kas.tunnels.registry import status

GatewayCall = grpc.aio.StreamStreamCall[bytes, kas_pb2.GatewayKasResponse]
_START = kas_pb2.StartStreaming().SerializeToString()


class RemoteTunnelCall:
    """TunnelCall over a gateway kas that has already answered tunnel_ready."""

    def __init__(self, call: GatewayCall, validator: OrderingValidator) -> None:
        self._call = call
        self._validator = validator  # has seen tunnel_ready
        self._started = False
        self._ended = False
        # send()/close_send() and receive() run in different tasks; gRPC allows one write in flight
        # per call (a second one fails the call with INTERNAL "Internal error from Core").
        self._write_lock = asyncio.Lock()

    async def _start(self) -> None:
        async with self._write_lock:
            await self._start_locked()

    async def _start_locked(self) -> None:
        if not self._started:
            self._started = True
            await self._call.write(_START)

    async def send(self, message: bytes) -> None:
        try:
            async with self._write_lock:
                await self._start_locked()
                await self._call.write(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError):
            pass  # the call is over; receive() reports how it ended

    async def close_send(self) -> None:
        try:
            async with self._write_lock:
                await self._start_locked()
                await self._call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, RuntimeError):
            pass

    async def receive(self) -> CallEvent | None:
        if self._ended:
            return None
        try:
            await self._start()
            read: object = await self._call.read()
        except grpc.aio.AioRpcError as err:
            return self._end(CallError(status(err.code().value[0], f"gateway kas: {err.details()}")))
        except (grpc.aio.UsageError, RuntimeError) as err:
            return self._end(CallError(status(code_pb2.UNAVAILABLE, f"gateway kas: {err}")))
        try:
            if not isinstance(read, kas_pb2.GatewayKasResponse):
                self._validator.end()  # grpc.aio.EOF
                self._ended = True
                return None
            msg = read
            member = self._validator.accept(msg)
        except StreamOrderError as err:
            self._call.cancel()
            return self._end(CallError(status(code_pb2.INTERNAL, f"gateway kas broke the protocol: {err}")))
        event = call_event(member, msg)
        if event is not None:
            return event
        self._call.cancel()
        return self._end(CallError(status(code_pb2.INTERNAL, f"gateway kas sent {member} mid-call")))

    def _end(self, event: CallEvent) -> CallEvent:
        self._ended = True
        return event

    async def cancel(self) -> None:
        self._ended = True
        self._call.cancel()


class FailedCall:
    """A call that never reached an agent: one error, then the end (e.g. kas is shutting down)."""

    def __init__(self, code: int, message: str) -> None:
        self._event: CallEvent | None = CallError(status(code, message))

    async def send(self, message: bytes) -> None:
        return None

    async def close_send(self) -> None:
        return None

    async def receive(self) -> CallEvent | None:
        event, self._event = self._event, None
        return event

    async def cancel(self) -> None:
        self._event = None
