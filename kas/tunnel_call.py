"""The seam between kas's front ends (the Kubernetes API proxy) and its tunnel routing.

A front end asks a `TunnelRouter` for a call on an agent; the router finds an idle reverse tunnel of that
agent (on this replica or, through Redis and the private API, on another) and relays frames. The call is
gRPC-shaped: raw request messages go in, header/message/trailer/error events come out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from google.rpc import status_pb2


@dataclass(frozen=True)
class CallHeader:
    """Response header metadata of the tunnelled call."""

    meta: Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class CallMessage:
    """One serialized response message (no gRPC length prefix)."""

    data: bytes


@dataclass(frozen=True)
class CallTrailer:
    """Response trailer metadata of the tunnelled call."""

    meta: Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class CallError:
    """The tunnelled call's final non-OK status."""

    status: status_pb2.Status


CallEvent = CallHeader | CallMessage | CallTrailer | CallError


def call_event(member: str, frame: Any) -> CallEvent | None:
    """The event for a frame whose `member` is header, message, trailer or error; None for any other.

    The agent's ConnectRequest and a gateway kas's GatewayKasResponse carry these four the same way.
    """
    if member == "header":
        return CallHeader(_meta(frame.header.meta))
    if member == "message":
        return CallMessage(frame.message.data)
    if member == "trailer":
        return CallTrailer(_meta(frame.trailer.meta))
    if member == "error":
        return CallError(frame.error.status)
    return None


def _meta(values: Any) -> dict[str, list[str]]:
    return {key: list(v.value) for key, v in values.items()}


class NoTunnelError(Exception):
    """No tunnel of the agent became available in time (GitLab: 20 s, DEADLINE_EXCEEDED)."""


class TunnelCall(Protocol):
    """One call through one reverse tunnel. Used by a single task; not reused after it ends."""

    async def send(self, message: bytes) -> None:
        """Send one serialized request message to the agent."""

    async def close_send(self) -> None:
        """Half-close: the caller has no more request messages."""

    async def receive(self) -> CallEvent | None:
        """Next event from the agent; None once the call has ended (after trailer/error or a drop)."""

    async def cancel(self) -> None:
        """Abandon the call (client went away); releases the tunnel."""


class TunnelRouter(Protocol):
    """Finds a tunnel for an agent and opens a call on it."""

    async def open_call(
        self,
        agent_id: int,
        method: str,
        metadata: Mapping[str, Sequence[str]],
        timeout: float,  # noqa: ASYNC109 - the routing give-up time (GitLab: 20 s) is part of the contract
    ) -> TunnelCall:
        """Open `method` (full path, e.g. /gitlab.agent.kubernetes_api.rpc.KubernetesApi/MakeRequest).

        Raises NoTunnelError when no tunnel of the agent is found within `timeout` seconds.
        """
