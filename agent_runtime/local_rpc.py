"""The agent's "internal server": local handlers for calls kas sends through a reverse tunnel.

agentk replays tunnelled calls against an in-process gRPC server (PROTOCOL.md §1, §6.3.3). We skip the
in-memory gRPC hop (§15): the reverse_tunnel module looks the method up in a HandlerTable and gives the
handler a LocalCall that reads request messages from, and writes response frames to, the tunnel stream.
Modules register handlers through the composition root, so reverse_tunnel and kubernetes_api never
import each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent_runtime.rpc_status import StatusCode


class RpcStatusError(Exception):
    """A handler ends its call with a non-OK gRPC status (sent as the tunnel's `error` frame)."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class CallEndedError(Exception):
    """The tunnelled call is over on kas's side (its caller went away, kas stopped): nothing more can
    be sent, and there is nobody to tell. Raised by LocalCall.send/send_header; not a handler's fault."""


class LocalCall(Protocol):
    """One tunnelled call as its handler sees it."""

    @property
    def method(self) -> str:
        """Full method path, e.g. /gitlab.agent.kubernetes_api.rpc.KubernetesApi/MakeRequest."""
        ...

    @property
    def metadata(self) -> Mapping[str, Sequence[str]]:
        """Request metadata from kas's RequestInfo (opaque; pseudo-headers already dropped)."""
        ...

    async def recv(self) -> bytes | None:
        """The next raw request message; None once kas half-closed (close_send or end of stream)."""
        ...

    async def send_header(self, meta: Mapping[str, Sequence[str]]) -> None:
        """Send response header metadata (at most once; send() sends an empty one if needed).
        CallEndedError when the call is over."""
        ...

    async def send(self, message: bytes) -> None:
        """Send one raw response message; CallEndedError when the call is over."""
        ...


LocalHandler = Callable[[LocalCall], Awaitable[None]]
"""Serves one call: returns for OK, raises RpcStatusError for another status."""


@dataclass(frozen=True)
class LocalService:
    """One service the agent offers through its tunnels."""

    name: str
    """Full service name as advertised in the AgentDescriptor (flavour-specific)."""
    methods: Mapping[str, LocalHandler]
    """Bare method name → handler."""


@dataclass(frozen=True)
class HandlerTable:
    """All local services; the reverse tunnel advertises exactly these."""

    services: tuple[LocalService, ...] = field(default=())
    """The services, in advertisement order."""

    def lookup(self, method_path: str) -> LocalHandler | None:
        """The handler for `/<service>/<method>`, or None."""
        service_name, _, method = method_path.removeprefix("/").rpartition("/")
        for service in self.services:
            if service.name == service_name:
                return service.methods.get(method)
        return None
