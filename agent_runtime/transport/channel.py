"""One worker's connection to kas, set up like agentk's channel (PROTOCOL.md §3.5).

Every TCP connection to kas, reconnects included, passes the operator's destination policy after DNS.
By default every call goes over the runtime's own HTTP/2 client (`transport/h2`), whose connections the
dialer makes (`dialer.py`: the policy, the proxy, TLS verified for grpcs, the WebSocket for ws/wss): one
connection to kas per agent, as agentk has.

With `GAO_KAS_TRANSPORT=grpc` the calls go over a grpc.aio channel instead. grpc:// and grpcs:// without
a proxy: grpc dials the addresses the policy checked itself (`direct.py`),
and the bridge is never started (no socket, no directory) unless kas's name does not resolve at first.
Everything else goes through the worker's private `WsBridge` (a Unix socket), which dials for grpc:
ws:// and wss:// bridged as WebSocket; grpc/grpcs behind a proxy as a raw pipe (grpc doing its own
verified TLS inside it). grpcs with insecure-skip-verify is a raw TLS pipe: grpcio has no way to turn
certificate verification off, so the bridge does the TLS (without verification, ALPN h2) and the channel
speaks plaintext HTTP/2 to it. That path (`grpc_channel.py`, `grpc_aio.py`) is imported only when chosen,
and hands the modules calls with the runtime's own errors (agent_runtime.rpc_status), as the own client
does: a process on the default transport never loads grpc.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from agent_runtime.grpc_calls import KasChannel
from agent_runtime.policy import DestinationPolicy
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, TlsSettings, WorkerError, WorkerSpec
from agent_runtime.transport.address import KasAddress, parse_kas_address
from agent_runtime.transport.config_error import TransportConfigError
from agent_runtime.transport.destination import Destination, DestinationGuard
from agent_runtime.transport.dialer import DialPlan, DialTimeouts
from agent_runtime.transport.direct import DirectRoute
from agent_runtime.transport.errors import (
    CHANNEL_LOST_MESSAGE,
    UNREACHABLE_MESSAGE,
    classify_rpc_error,
    connect_error,
)
from agent_runtime.transport.h2 import DialObserver, H2Channel, H2Target, LinkSettings
from agent_runtime.transport.headers import handshake_headers, metadata_headers
from agent_runtime.transport.kas_version import from_metadata
from agent_runtime.transport.proxy import Proxy, proxy_for
from agent_runtime.transport.tls import client_context
from agent_runtime.transport.ws_bridge import WsBridge

if TYPE_CHECKING:
    import grpc.aio

    from agent_runtime.rpc_status import RpcError
    from agent_runtime.transport.grpc_aio import GrpcChannel

MAX_RECEIVE_MESSAGE: Final = 256 * 1024
"""Largest message accepted from kas; grpc ends a call that gets a larger one with RESOURCE_EXHAUSTED
(that call only). kas streams bodies in 32 KiB chunks and configurations are ≤ 128 KiB by default
(PROTOCOL.md §3.5, §9); the largest legitimate message is a request's header frame, which kubectl keeps
to about 1 KiB. Every open tunnel may hold one message while reading, so this bounds what a hostile kas
can make an agent hold (reverse_tunnel/budget.py): 10 MiB let three requests take a worker to 667 MiB."""


@dataclass(frozen=True)
class ChannelSettings:
    """Channel tuning; the defaults are agentk's."""

    keepalive_time_ms: int = 55_000
    """Ping kas after this much idle time (agentk: 55 s; kas refuses pings < 20 s apart)."""
    keepalive_timeout_ms: int = 20_000
    """Declare the connection dead when a ping is not acknowledged within this time (grpc-go's default
    ack timeout). Set as both grpc.http2.ping_timeout_ms and grpc.keepalive_timeout_ms: measured with
    grpcio 1.85, the ping timeout is the one enforced (without it a silent kas is noticed only after
    60 s, idle or mid-call); the keepalive timeout is kept for grpc cores that read that one."""
    max_receive_message_length: int = MAX_RECEIVE_MESSAGE
    """Largest message accepted from kas."""
    dial: DialTimeouts = field(default_factory=DialTimeouts)
    """The bridge's dial/TLS/response-header timeouts."""
    transport: KasTransport = "h2"
    """What carries the calls to kas: "h2", the runtime's own HTTP/2 client on the event loop
    (`transport/h2`: one connection per agent, a fraction of grpc.aio's CPU and memory), or "grpc", a
    grpc.aio channel (and, for ws/wss and proxies, the bridge). The environment variable
    GAO_KAS_TRANSPORT overrides it for the whole process."""


KasTransport = Literal["h2", "grpc"]
KAS_TRANSPORT_ENV: Final = "GAO_KAS_TRANSPORT"


class KasConnection:
    """The channel plus what the transport learned; `call_metadata()` goes on every RPC."""

    def __init__(
        self,
        channel: H2Channel | GrpcChannel,
        address: KasAddress,
        token: Secret,
        metadata: tuple[tuple[str, str], ...],
        bridge: WsBridge,
        route: DirectRoute | None = None,
        build: Callable[[str], GrpcChannel] | None = None,
    ) -> None:
        self._channel = channel
        self.address = address
        """The parsed kas address."""
        self._token = token
        self._metadata = metadata
        self._bridge = bridge
        self._route = route
        self._build = build
        self._rpc_error: WorkerError | None = None
        self._kas_version: str | None = None
        self._version_listeners: list[Callable[[str], None]] = []
        self._lost_listeners: list[Callable[[], None]] = []
        bridge.on_kas_version = self._kas_version_learned
        if isinstance(channel, H2Channel):
            channel.observer = DialObserver(dialed=bridge.note_dialed, failed=self._dial_failed)

    @property
    def channel(self) -> KasChannel:
        """Where calls to kas are made: the own HTTP/2 channel, or grpc.aio's behind its adapter (the same
        surface and errors)."""
        return self._channel

    @property
    def grpc_channel(self) -> grpc.aio.Channel | None:
        """The grpc.aio channel, with GAO_KAS_TRANSPORT=grpc; replaced when `reroute()` finds kas at other
        addresses."""
        return None if isinstance(self._channel, H2Channel) else self._channel.raw

    def _dial_failed(self, error: WorkerError) -> None:
        self._bridge.record(error)
        for listener in self._lost_listeners:
            listener()

    def on_kas_lost(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever a connection to kas cannot be made (own HTTP/2 channel only: the
        worker watches grpc.aio's channel state itself)."""
        self._lost_listeners.append(listener)

    @property
    def kas_version(self) -> str | None:
        """kas's version: from the WebSocket `Server` header, or as noted from response metadata."""
        if self._bridge.kas_version:
            return self._bridge.kas_version
        return self._kas_version

    def note_kas_version(self, version: str) -> None:
        """Remember a kas version learned elsewhere (e.g. gRPC response metadata)."""
        if version != self._kas_version:
            self._kas_version = version
            self._kas_version_learned(version)

    def note_response_metadata(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Learn kas's version from a call's response metadata, when kas sends it."""
        version = from_metadata(metadata)
        if version:
            self.note_kas_version(version)

    def on_kas_version(self, listener: Callable[[str], None]) -> None:
        """Call `listener(version)` whenever kas announces a (new) version."""
        self._version_listeners.append(listener)

    def _kas_version_learned(self, version: str) -> None:
        for listener in self._version_listeners:
            listener(version)

    def last_error(self) -> WorkerError | None:
        """The latest transport-level failure (policy, handshake, TLS, unreachable), None once healthy."""
        if self._bridge.last_error is not None and not self.direct:
            return self._bridge.last_error
        return self._rpc_error

    @property
    def direct(self) -> bool:
        """grpc dials kas's checked addresses itself (no relay) right now."""
        return self._route is not None and self._route.direct

    def refine(self, error: WorkerError) -> WorkerError:
        """`error` (read from an RPC) replaced by the transport's more specific diagnosis, if it has one."""
        specific = self.last_error()
        if specific is not None:
            return specific
        generic = error.message in (UNREACHABLE_MESSAGE, CHANNEL_LOST_MESSAGE)
        if self.direct and error.reason is ErrorReason.KAS_UNREACHABLE and generic:
            # grpc could not connect to the checked addresses: say it as the relay did (no grpc text;
            # TLS failures have readings of their own, and kas's own UNAVAILABLE answers keep theirs).
            return connect_error(ConnectionError(), self.address.host_port)
        return error

    def record_rpc_error(self, err: RpcError) -> WorkerError | None:
        """Classify a failed RPC; transport-level failures become `last_error()`. Returns the reading."""
        error = classify_rpc_error(err)
        if error is not None:
            self._rpc_error = self.refine(error) if self.direct else error
        return self.last_error() if error is not None else None

    def record_rpc_success(self) -> None:
        """An RPC reached kas: forget the transport error learned from RPCs."""
        self._rpc_error = None

    async def reroute(self) -> grpc.aio.Channel | None:
        """Resolve kas again (direct grpc only); if its checked addresses changed, switch `grpc_channel` to
        a new channel for them and return the old one, which the caller closes once its calls moved."""
        old = self.grpc_channel
        if self._route is None or self._build is None or old is None:
            return None
        target = await self._route.next_target()
        if target is None:
            return None
        self._channel = self._build(target)
        return old

    def set_token(self, token: Secret) -> None:
        """Use `token` for calls started from now on (rotation without reconnecting)."""
        self._token = token

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for one RPC: `authorization: Bearer <token>`, plus kas headers for grpc/grpcs."""
        return (("authorization", f"Bearer {self._token.reveal()}"), *self._metadata)

    @property
    def open_connections(self) -> int:
        """Connections to kas open now (the bridge's, or the own HTTP/2 channel's, draining ones too)."""
        if isinstance(self._channel, H2Channel):
            return self._channel.connections
        return self._bridge.open_connections

    @property
    def bridge(self) -> WsBridge:
        """The private bridge (grpc.aio only; with the own HTTP/2 channel it only keeps the record of
        dials: the last error, the kas version, the handshakes)."""
        return self._bridge

    async def close(self, grace: float) -> None:
        """Let calls finish for up to `grace` seconds, then close the channel and the bridge."""
        try:
            await self._channel.close(grace)
        finally:
            await self._bridge.close(grace)

    def __repr__(self) -> str:
        return f"KasConnection({self.address})"


async def open_kas_connection(
    spec: WorkerSpec,
    *,
    user_agent: str,
    policy: DestinationPolicy,
    settings: ChannelSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> KasConnection:
    """Build the channel for `spec` under `policy`.

    Raises TransportConfigError (see `.as_worker_error()`) for bad settings, DestinationRefusedError (a
    subclass) for what the policy forbids without DNS. The channel connects lazily; failures to reach kas,
    and addresses the policy refuses after DNS, show up in RPCs and in `last_error()`.
    """
    settings = settings or ChannelSettings()
    env = os.environ if environ is None else environ
    address = parse_kas_address(spec.kas_address)
    guard = DestinationGuard(policy)
    guard.check_connection(address, insecure_skip_verify=spec.tls.insecure_skip_verify)
    proxy = proxy_for(address, spec.proxy, env)
    if proxy is not None and spec.proxy is not None:
        guard.check_static(Destination(proxy.host, proxy.port, "proxy"))
    plan = _dial_plan(spec, address, proxy, guard, user_agent, settings)
    bridge = WsBridge(plan, name=spec.id)
    metadata = () if address.websocket else metadata_headers(spec.kas_headers)
    if _transport(settings, env) == "h2":
        h2 = _h2_channel(spec, address, plan, user_agent, settings)
        return KasConnection(h2, address, spec.token, metadata, bridge)
    # Imported here only: grpc costs every process about 8.6 MiB, and the default transport needs none of it.
    from agent_runtime.transport.grpc_channel import open_grpc_connection

    return await open_grpc_connection(
        spec,
        address,
        guard=guard,
        proxy=proxy,
        bridge=bridge,
        metadata=metadata,
        user_agent=user_agent,
        settings=settings,
    )


def _transport(settings: ChannelSettings, env: Mapping[str, str]) -> KasTransport:
    chosen = env.get(KAS_TRANSPORT_ENV, settings.transport)
    if chosen not in ("h2", "grpc"):
        raise TransportConfigError(f"{KAS_TRANSPORT_ENV} must be h2 or grpc, not {chosen[:20]!r}")
    return "h2" if chosen == "h2" else "grpc"


def _h2_channel(
    spec: WorkerSpec, address: KasAddress, plan: DialPlan, user_agent: str, settings: ChannelSettings
) -> H2Channel:
    """The own HTTP/2 channel: dials as the bridge would, doing grpcs's TLS itself (verified)."""
    alpn = ("http/1.1",) if address.websocket else ("h2",)
    tls = client_context(spec.tls, alpn=alpn) if address.tls else None
    target = H2Target(
        plan=dataclasses.replace(plan, tls=tls),
        scheme="https" if address.tls else "http",
        authority=address.host_header,
        user_agent=user_agent,
        max_message=settings.max_receive_message_length,
        link=LinkSettings(
            keepalive_s=settings.keepalive_time_ms / 1000, ping_timeout_s=settings.keepalive_timeout_ms / 1000
        ),
    )
    return H2Channel(target, name=spec.id)


def _dial_plan(
    spec: WorkerSpec,
    address: KasAddress,
    proxy: Proxy | None,
    guard: DestinationGuard,
    user_agent: str,
    settings: ChannelSettings,
) -> DialPlan:
    """How the bridge reaches kas (TLS only where grpc cannot do it inside the pipe)."""
    bridge_tls = address.websocket or spec.tls.insecure_skip_verify
    alpn = ("http/1.1",) if address.websocket else ("h2",)
    return DialPlan(
        address=address,
        websocket=address.websocket,
        tls=client_context(spec.tls, alpn=alpn) if address.tls and bridge_tls else None,
        server_hostname=spec.tls.server_name,
        guard=guard,
        proxy=proxy,
        proxy_trusted=spec.proxy is None,
        proxy_tls=_proxy_context(spec) if proxy is not None and proxy.tls else None,
        user_agent=user_agent,
        headers=handshake_headers(spec.kas_headers) if address.websocket else (),
        timeouts=settings.dial,
    )


def _proxy_context(spec: WorkerSpec) -> ssl.SSLContext:
    """TLS towards an https:// proxy: always verified; the extra CA may have signed the proxy too."""
    return client_context(TlsSettings(ca_pem=spec.tls.ca_pem), alpn=("http/1.1",))
