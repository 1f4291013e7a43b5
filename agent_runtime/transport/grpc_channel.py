"""The grpc.aio channel of a worker, with GAO_KAS_TRANSPORT=grpc: built, opened and watched.

Only that path imports this module (`channel.open_kas_connection`, the worker's channel watch): grpc costs
a process about 8.6 MiB, which the default transport (transport/h2) does without.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Final

import grpc
import grpc.aio

from agent_runtime.spec import WorkerSpec
from agent_runtime.transport.address import KasAddress, Scheme
from agent_runtime.transport.channel import ChannelSettings, KasConnection
from agent_runtime.transport.destination import DestinationGuard
from agent_runtime.transport.direct import DirectRoute
from agent_runtime.transport.grpc_aio import GrpcChannel
from agent_runtime.transport.proxy import Proxy
from agent_runtime.transport.tls import grpc_root_certificates
from agent_runtime.transport.ws_bridge import WsBridge

Options = list[tuple[str, str | int]]

SWAP_GRACE_S: Final = 5.0
"""How long a replaced channel may keep the calls the modules have not moved yet (they reopen at once on
the reconnect signal; a call still there at the end would be cancelled under its module)."""
FAILING_RECHECK_S: Final = 5.0
"""While the channel fails, how often to look whether kas resolves to other addresses: grpc's channel
stays in TRANSIENT_FAILURE across its own retries, so waiting for a state change alone would never ask."""


def _base_options(user_agent: str, settings: ChannelSettings) -> Options:
    return [
        ("grpc.primary_user_agent", user_agent),
        ("grpc.use_local_subchannel_pool", 1),  # this agent's own HTTP/2 connection, never shared
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.http2.ping_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # idle agents must keep pinging (load balancers)
        ("grpc.max_receive_message_length", settings.max_receive_message_length),
        # No bandwidth probing: on a fast link it grows every stream's receive window to megabytes, which
        # grpc buffers even while nobody reads, so a hostile kas could park ~25 MiB per tunnel in the
        # process past the byte budget (reverse_tunnel/budget.py). Without it each stream lets kas run
        # 64 KiB ahead; responses (our writes) follow kas's window, not ours.
        ("grpc.http2.bdp_probe", 0),
    ]


def channel_options(user_agent: str, settings: ChannelSettings, address: KasAddress) -> Options:
    """The worker's channel options (agentk's, PROTOCOL.md §3.5)."""
    # No channel-wide compression: grpc.aio lets no call override a channel default, and the tunnel must
    # stay uncompressed (agent_runtime.grpc_calls.TUNNEL_GZIP); each call asks for gzip itself.
    return [
        *_base_options(user_agent, settings),
        ("grpc.enable_http_proxy", 0),  # the bridge applies the proxy settings, after the policy check
        ("grpc.default_authority", address.host_header),  # also when dialing an IP: kas may route on it
    ]


def build_channel(spec: WorkerSpec, address: KasAddress, options: Options, target: str) -> GrpcChannel:
    """A channel to `target` (kas's checked IPs or the relay's socket) with the worker's options."""
    if address.scheme is Scheme.GRPCS and not spec.tls.insecure_skip_verify:
        credentials = grpc.ssl_channel_credentials(root_certificates=grpc_root_certificates(spec.tls))
        # Verify the certificate against kas's name (and send it as SNI), whatever IP the target dials.
        name = ("grpc.ssl_target_name_override", spec.tls.server_name or address.host)
        return GrpcChannel(grpc.aio.secure_channel(target, credentials, options=[*options, name]))
    return GrpcChannel(grpc.aio.insecure_channel(target, options=options))


async def open_grpc_connection(
    spec: WorkerSpec,
    address: KasAddress,
    *,
    guard: DestinationGuard,
    proxy: Proxy | None,
    bridge: WsBridge,
    metadata: tuple[tuple[str, str], ...],
    user_agent: str,
    settings: ChannelSettings,
) -> KasConnection:
    """The worker's connection over grpc.aio: direct to kas's checked addresses for grpc/grpcs without a
    proxy (once the name resolves), else through `bridge`, which this starts (and closes on failure)."""
    try:
        build = functools.partial(
            build_channel, spec, address, channel_options(user_agent, settings, address)
        )
        route = None
        if not address.websocket and proxy is None and not spec.tls.insecure_skip_verify:
            route = DirectRoute(address, guard, within=settings.dial.dial)
            await route.next_target()  # stays on the relay when the name does not resolve to permitted IPs
        if route is not None and route.target is not None:
            channel = build(route.target)  # the bridge is never needed: not even its socket is made
        else:
            await bridge.start()
            channel = build(bridge.grpc_target)
    except BaseException:
        await bridge.close(0)
        raise
    return KasConnection(channel, address, spec.token, metadata, bridge, route, build)


async def watch_channel(
    connection: KasConnection, *, lost: Callable[[], None], moved: Callable[[], None]
) -> None:
    """Report a lost kas the calls cannot: every call waits for the channel (wait_for_ready), and a kas
    that stops gracefully ends its streams with OK, so without this the worker stayed Connected with
    no tunnel and no error. Each failed (re)connection calls `lost()`; the next stream that kas accepts
    marks the tunnels healthy again.

    Direct grpc (no relay) also re-resolves here: a failing channel whose kas name now resolves to other
    checked addresses is replaced (`KasConnection.reroute`), `moved()` tells the modules to reopen their
    calls (the calls of a failing channel only wait), and the old channel is closed after they moved. The
    smallest design that keeps the relay's "resolve for every connection": grpc keeps retrying the checked
    addresses with its own backoff in between."""
    channel = connection.grpc_channel
    if channel is None:
        return
    state = channel.get_state(try_to_connect=False)
    while True:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            lost()
            old = await connection.reroute()
            if old is not None:
                moved()
                try:
                    await old.close(SWAP_GRACE_S)
                except asyncio.CancelledError:  # the worker stops: close it now, not by the GC
                    await old.close(None)
                    raise
                channel = connection.grpc_channel or channel
                state = channel.get_state(try_to_connect=True)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FAILING_RECHECK_S):
                    await channel.wait_for_state_change(state)
        else:
            await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=False)
