"""Git push events: from the API listener to every kas replica, then to this replica's subscribers.

The replica that receives `Notifications/GitPushEvent` publishes the event on a Redis pub/sub channel
(`redis.events_channel`, GitLab's `kas_events`); every replica subscribes to it and hands each event to
its local subscribers: the open ReconcileProjects streams (kas.flux) and the configuration store (an
early re-read of the agent's configuration project, kas.agent_configuration) (PROTOCOL.md §17.1, §17.7).

The payload is GitLab's: a serialized google.protobuf.Any holding `gitlab.agent.event.GitPushEvent`,
so our replicas and GitLab's can share a channel. Without Redis (one replica) events go straight to the
local subscribers. Delivery is at most once, as in GitLab: events published while a replica is not
subscribed are lost for its agents, subscribers must not block, and a subscriber that cannot keep up
drops (Flux's `GitRepository.spec.interval` stays the safety net).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from redis.exceptions import RedisError

from agent_proto.gitlab.agent.event import event_pb2

log = logging.getLogger(__name__)

MAX_FULL_PATH: Final = 1024
"""Longest project path accepted anywhere (GitLab limits each of up to 20 namespace levels to 255)."""
SUBSCRIBE_TIMEOUT: Final = 5.0
RESUBSCRIBE_BACKOFF: Final = (0.1, 10.0)
"""First and largest delay before subscribing again after an error (doubling per failure, jitter 1.0)."""

Subscriber = Callable[[event_pb2.GitPushEvent], None]
"""Called on the event loop for every event; must not block (put the event in a bounded buffer)."""


class InvalidEventError(ValueError):
    """A payload on the channel, or a request, that is not a valid git push event."""


def check_event(event: event_pb2.GitPushEvent) -> None:
    """GitLab's rules: a project with id > 0 and a non-empty full path (ours: bounded too)."""
    if not event.HasField("project"):
        raise InvalidEventError("event.project is required")
    project = event.project
    if project.id <= 0:
        raise InvalidEventError("event.project.id must be > 0")
    if not project.full_path:
        raise InvalidEventError("event.project.full_path must not be empty")
    if len(project.full_path) > MAX_FULL_PATH:
        raise InvalidEventError(f"event.project.full_path is longer than {MAX_FULL_PATH} characters")


def encode_event(event: event_pb2.GitPushEvent) -> bytes:
    packed = any_pb2.Any()
    packed.Pack(event)  # type_url type.googleapis.com/gitlab.agent.event.GitPushEvent
    return packed.SerializeToString()


def decode_event(payload: bytes) -> event_pb2.GitPushEvent:
    packed = any_pb2.Any()
    event = event_pb2.GitPushEvent()
    try:
        packed.ParseFromString(payload)
        if not packed.Unpack(event):
            raise InvalidEventError(f"unexpected event type {packed.type_url[:200]!r}")
    except DecodeError as err:
        raise InvalidEventError("payload is not a protobuf Any holding a GitPushEvent") from err
    check_event(event)
    return event


class GitPushBus:
    """Publish/subscribe for git push events, across replicas when `redis` is given.

    `start()` returns once this replica is subscribed (an event published after it is not missed),
    `run()` then reads the channel until cancelled, subscribing again with backoff after an error.
    `on_invalid` is called for every payload that is not a valid event (a metric).
    """

    def __init__(
        self,
        redis: aioredis.Redis | None = None,
        channel: str = "kas_events",
        on_invalid: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_invalid = on_invalid
        self._subscribers: set[Subscriber] = set()
        self._pubsub: Any = None
        self.subscribed = redis is None
        """False while a Redis subscription is not in place (readiness reports it)."""

    def __len__(self) -> int:
        """Local subscribers now."""
        return len(self._subscribers)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a local subscriber; returns the function that removes it."""
        self._subscribers.add(subscriber)
        return lambda: self._subscribers.discard(subscriber)

    async def publish(self, event: event_pb2.GitPushEvent) -> None:
        """To every replica (Redis errors propagate: the caller answers UNAVAILABLE)."""
        if self._redis is None:
            self.deliver(event)
            return
        await self._redis.publish(self._channel, encode_event(event))

    def deliver(self, event: event_pb2.GitPushEvent) -> None:
        """Hand an event to every local subscriber; one that fails does not keep it from the others."""
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("git push event subscriber failed")

    async def start(self) -> None:
        """Subscribe now if Redis answers; otherwise `run()` keeps trying (readiness says so meanwhile)."""
        if self._redis is None:
            return
        try:
            await self._subscribe()
        except (RedisError, OSError) as err:
            log.warning("git push events: cannot subscribe yet, retrying in the background: %s", err)
            await self._drop_pubsub()

    async def _subscribe(self) -> None:
        assert self._redis is not None
        pubsub = self._redis.pubsub()
        self._pubsub = pubsub
        await pubsub.subscribe(self._channel)
        # SUBSCRIBE's confirmation: from here on, every PUBLISH reaches this replica.
        confirmation = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT)
        if confirmation is None or confirmation.get("type") != "subscribe":
            raise RedisError(f"no confirmation of SUBSCRIBE {self._channel} within {SUBSCRIBE_TIMEOUT}s")
        self.subscribed = True

    async def run(self) -> None:
        """Read the channel until cancelled (nothing to do without Redis)."""
        if self._redis is None:
            return
        failures = 0
        while True:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                failures = 0
                await self._read()
            except (RedisError, OSError) as err:
                failures += 1
                delay = min(RESUBSCRIBE_BACKOFF[0] * 2 ** (failures - 1), RESUBSCRIBE_BACKOFF[1])
                delay *= 1.0 + random.random()  # noqa: S311 - jitter, not cryptography
                log.warning(
                    "git push events: Redis subscription failed, subscribing again in %.1fs: %s", delay, err
                )
                await self._drop_pubsub()
                await asyncio.sleep(delay)

    async def _read(self) -> None:
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is None or message.get("type") != "message":
                continue
            try:
                event = decode_event(message["data"])
            except InvalidEventError as err:
                log.warning("dropping a payload on %s that is not a git push event: %s", self._channel, err)
                if self._on_invalid is not None:
                    self._on_invalid()
                continue
            self.deliver(event)

    async def _drop_pubsub(self) -> None:
        self.subscribed = False
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError) as err:
                log.debug("closing a broken subscription failed: %s", err)

    async def close(self) -> None:
        await self._drop_pubsub()
