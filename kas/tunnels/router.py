"""kas.tunnel_call.TunnelRouter: this replica's tunnels first, then the replicas Redis names (§11.2).

The routing race: the local registry is asked at once; a remote replica is tried every `kas_interval`
(10 ms) or as soon as the previous one answered no_tunnel; Redis is re-read every `poll_period` for
replicas that newly hold the agent's tunnels. The first tunnel_ready wins, the rest are cancelled (which
makes gateways and the local registry put their tunnels back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.rpc import code_pb2

from agent_proto.gitlab.agent.kas import kas_pb2
from agent_proto.ordering import OrderingValidator, StreamOrderError
from kas import jwt
from kas.metrics import KasMetrics
from kas.secret import Secret
from kas.tunnel_call import NoTunnelError, TunnelCall
from kas.tunnels.registry import KasShuttingDownError, TunnelGoneError, TunnelRegistry
from kas.tunnels.remote_call import FailedCall, RemoteTunnelCall
from kas.tunnels.tunnel_index import RedisTunnelIndex

log = logging.getLogger(__name__)

ROUTING_AGENT_ID = "kas-hop-routing-agent-id"
NOT_FOUND_MESSAGE = "Agent connection not found. Is agent up to date and connected?"


def split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    if not service or not name:
        raise ValueError(f"not a full gRPC method name: {method!r}")
    return service, name


class _Peers:
    """Channels to other replicas' private APIs, and the JWT they expect."""

    def __init__(self, index: RedisTunnelIndex, secret: Secret) -> None:
        self.index = index
        self._secret = secret
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, url: str) -> grpc.aio.Channel:
        channel = self._channels.get(url)
        if channel is None:
            if url.startswith("grpcs://"):
                channel = grpc.aio.secure_channel(
                    url.removeprefix("grpcs://"), grpc.ssl_channel_credentials()
                )
            else:
                channel = grpc.aio.insecure_channel(url.removeprefix("grpc://"))
            self._channels[url] = channel
        return channel

    def metadata(self, agent_id: int, metadata: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
        pairs = [
            (k, v)
            for k, values in metadata.items()
            if k not in ("authorization", ROUTING_AGENT_ID)
            for v in values
        ]
        pairs.append(("authorization", f"Bearer {jwt.encode(self._secret)}"))
        pairs.append((ROUTING_AGENT_ID, str(agent_id)))
        return pairs

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(grace=None)


class KasRouter:
    """TunnelRouter for this kas."""

    def __init__(
        self,
        registry: TunnelRegistry,
        metrics: KasMetrics,
        *,
        index: RedisTunnelIndex | None = None,
        secret: Secret | None = None,
        poll_period: float = 0.05,
        kas_interval: float = 0.01,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._peers = _Peers(index, secret) if index is not None and secret is not None else None
        self._poll_period = poll_period
        self._kas_interval = kas_interval

    async def open_call(
        self,
        agent_id: int,
        method: str,
        metadata: Mapping[str, Sequence[str]],
        timeout: float,  # noqa: ASYNC109 - TunnelRouter.open_call signature
    ) -> TunnelCall:
        service, name = split_method(method)
        began = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                call = await self._route(agent_id, service, name, method, metadata)
        except TimeoutError:
            self._metrics.routing_timeouts.inc()
            self._metrics.routing_duration.labels(status="aborted").observe(time.monotonic() - began)
            raise NoTunnelError(NOT_FOUND_MESSAGE) from None
        except KasShuttingDownError:
            return FailedCall(code_pb2.UNAVAILABLE, "kas is shutting down")
        self._metrics.routing_duration.labels(status="success").observe(time.monotonic() - began)
        return call

    async def _route(
        self, agent_id: int, service: str, name: str, method: str, metadata: Mapping[str, Sequence[str]]
    ) -> TunnelCall:
        while True:
            tunnel = self._registry.try_find(agent_id, service, name)
            if tunnel is None:
                if self._peers is None:
                    tunnel = await self._registry.find(agent_id, service, name)
                else:
                    return await self._race(agent_id, service, name, method, metadata)
            try:
                return tunnel.start(method, metadata)
            except TunnelGoneError:
                continue  # the agent dropped it between registry and use; look again

    async def close(self) -> None:
        if self._peers is not None:
            await self._peers.close()

    # -- the multi-replica race --------------------------------------------------------------------

    async def _race(
        self, agent_id: int, service: str, name: str, method: str, metadata: Mapping[str, Sequence[str]]
    ) -> TunnelCall:
        assert self._peers is not None
        loop = asyncio.get_running_loop()
        winner: asyncio.Future[TunnelCall] = loop.create_future()
        next_kas = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        def spawn(label: str, coro: Any) -> None:
            task = loop.create_task(coro, name=f"route-{agent_id}-{label}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(lambda _: next_kas.set())

        spawn("local", self._local_attempt(winner, agent_id, service, name, method, metadata))
        tried: set[str] = set()
        candidates: list[str] = []
        next_poll = 0.0
        try:
            while not winner.done():
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self._poll_period
                    try:
                        found = await self._peers.index.kas_urls(agent_id)
                    except Exception as err:  # noqa: BLE001 - Redis trouble must not fail the local path
                        log.warning("cannot read the tunnel index: %s", err)
                        found = []
                    candidates.extend(u for u in found if u not in tried and u not in candidates)
                if candidates and not winner.done():
                    url = candidates.pop(0)
                    tried.add(url)
                    spawn(url, self._remote_attempt(winner, next_kas, url, agent_id, method, metadata))
                next_kas.clear()
                wait = self._kas_interval if candidates else max(0.0, next_poll - time.monotonic())
                if winner.done():
                    break
                waiter = loop.create_task(next_kas.wait(), name=f"route-{agent_id}-tick")
                try:
                    pending: set[asyncio.Future[Any]] = {winner, waiter}
                    await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            return winner.result()
        except BaseException:
            # Timed out or cancelled just as an attempt won: that call must not hold its tunnel.
            if winner.done() and not winner.cancelled() and winner.exception() is None:
                await winner.result().cancel()
            raise
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if not winner.done():
                winner.cancel()

    async def _local_attempt(
        self,
        winner: asyncio.Future[TunnelCall],
        agent_id: int,
        service: str,
        name: str,
        method: str,
        metadata: Mapping[str, Sequence[str]],
    ) -> None:
        while not winner.done():
            try:
                tunnel = await self._registry.find(agent_id, service, name)
            except KasShuttingDownError as err:
                if not winner.done():
                    winner.set_exception(err)
                return
            if winner.done():
                self._registry.put_back(tunnel)
                return
            try:
                winner.set_result(tunnel.start(method, metadata))
            except TunnelGoneError:
                continue

    async def _remote_attempt(
        self,
        winner: asyncio.Future[TunnelCall],
        next_kas: asyncio.Event,
        url: str,
        agent_id: int,
        method: str,
        metadata: Mapping[str, Sequence[str]],
    ) -> None:
        assert self._peers is not None
        backoff = 0.1
        while not winner.done():
            stream: Any = self._peers.channel(url).stream_stream(
                method, request_serializer=None, response_deserializer=kas_pb2.GatewayKasResponse.FromString
            )
            call = stream(metadata=self._peers.metadata(agent_id, metadata))
            validator = OrderingValidator(kas_pb2.GatewayKasResponse, "msg")
            handed_over = False
            try:
                while True:
                    msg: object = await call.read()
                    if not isinstance(msg, kas_pb2.GatewayKasResponse):
                        return  # grpc.aio.EOF: the gateway gave up
                    member = validator.accept(msg)
                    if member == "no_tunnel":
                        next_kas.set()
                        continue
                    if member == "tunnel_ready" and not winner.done():
                        winner.set_result(RemoteTunnelCall(call, validator))
                        handed_over = True
                    return
            except grpc.aio.AioRpcError as err:
                log.debug("kas %s: %s", url, err.code())
            except StreamOrderError as err:
                log.warning("kas %s broke the routing protocol: %s", url, err)
                return
            finally:
                if not handed_over:
                    call.cancel()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
