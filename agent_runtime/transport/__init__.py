"""The connection from one worker to kas: address parsing, the grpc channel, and the WebSocket bridge."""

from agent_runtime.transport.address import KasAddress, KasAddressError, Scheme, parse_kas_address
from agent_runtime.transport.channel import ChannelSettings, KasConnection, open_kas_connection
from agent_runtime.transport.config_error import TransportConfigError
from agent_runtime.transport.dialer import DialTimeouts
from agent_runtime.transport.errors import classify_rpc_error
from agent_runtime.transport.limits import fds_needed, raise_nofile_limit

__all__ = [
    "ChannelSettings",
    "DialTimeouts",
    "KasAddress",
    "KasAddressError",
    "KasConnection",
    "Scheme",
    "TransportConfigError",
    "classify_rpc_error",
    "fds_needed",
    "open_kas_connection",
    "parse_kas_address",
    "raise_nofile_limit",
]
