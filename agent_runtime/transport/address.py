"""Parsing agentk's `--kas-address` (PROTOCOL.md §3.1): grpc://, grpcs://, ws:// and wss:// only."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final
from urllib.parse import SplitResult, urlsplit

from agent_runtime.transport.config_error import TransportConfigError

_OMNIBUS_PATH: Final = "/-/kubernetes-agent"
"""Where self-managed GitLab (Omnibus, chart) serves kas's agent endpoint; it needs the trailing slash."""
_SCHEMES: Final = "grpc://, grpcs://, ws:// or wss://"


class Scheme(enum.StrEnum):
    """The four accepted address schemes."""

    GRPC = "grpc"
    GRPCS = "grpcs"
    WS = "ws"
    WSS = "wss"


_DEFAULT_PORTS: Final = {Scheme.GRPC: 80, Scheme.GRPCS: 443, Scheme.WS: 80, Scheme.WSS: 443}


class KasAddressError(TransportConfigError):
    """The kas address cannot be used. Never contains credentials."""


@dataclass(frozen=True)
class KasAddress:
    """A validated kas address."""

    scheme: Scheme
    """One of the four schemes."""
    host: str
    """Host name or IP address, without IPv6 brackets."""
    port: int
    """TCP port; the scheme's default (80/443) when the URL has none."""
    target: str
    """WebSocket request target (path and query, at least "/"); "" for grpc/grpcs."""

    @property
    def websocket(self) -> bool:
        """gRPC travels inside a WebSocket (ws/wss)."""
        return self.scheme in (Scheme.WS, Scheme.WSS)

    @property
    def tls(self) -> bool:
        """The connection to kas is encrypted (grpcs/wss)."""
        return self.scheme in (Scheme.GRPCS, Scheme.WSS)

    @property
    def _bracketed_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def host_port(self) -> str:
        """`host:port`, IPv6 in brackets: what is dialed, and the CONNECT target through a proxy."""
        return f"{self._bracketed_host}:{self.port}"

    @property
    def host_header(self) -> str:
        """The HTTP Host header: the port only when it is not the scheme's default."""
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return self._bracketed_host
        return self.host_port

    @property
    def grpc_target(self) -> str:
        """The grpc target for grpc/grpcs (DNS resolution, all addresses)."""
        return f"dns:///{self.host_port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.target}"


def parse_kas_address(raw: str) -> KasAddress:
    """Validate `raw` like agentk does, with errors that say how to fix the address."""
    text = raw.strip()
    if not text:
        raise KasAddressError("the kas address is empty", f"use a {_SCHEMES} URL, e.g. wss://kas.gitlab.com")
    if any(c.isspace() or ord(c) < 0x20 for c in text):
        raise KasAddressError("the kas address contains whitespace or control characters")
    if "://" not in text:
        raise KasAddressError(
            "the kas address has no scheme", f"use a {_SCHEMES} URL, e.g. wss://{text.split('/')[0]}"
        )
    parts = urlsplit(text)
    scheme = _scheme(parts.scheme.lower())
    if "@" in parts.netloc:
        raise KasAddressError(
            "the kas address must not contain credentials (user:password@)",
            "send credentials with kasHeaders instead",
        )
    host = parts.hostname or ""
    if not host:
        raise KasAddressError(f"the {scheme}:// kas address has no host")
    _check_host(host)
    port = _port(parts, scheme)
    if parts.fragment:
        raise KasAddressError("the kas address must not contain a fragment (#...)")
    if scheme in (Scheme.GRPC, Scheme.GRPCS):
        if parts.path not in ("", "/") or parts.query:
            raise KasAddressError(
                f"a {scheme}:// kas address has no path or query",
                "to reach kas under a path (e.g. /-/kubernetes-agent/), use wss:// or ws://",
            )
        return KasAddress(scheme, host, port, "")
    path = parts.path or "/"
    if path.endswith(_OMNIBUS_PATH):
        fixed = f"{scheme}://{parts.netloc}{path}/"
        raise KasAddressError(
            f"the path {path} needs a trailing slash: GitLab answers the WebSocket upgrade with a "
            "301 redirect otherwise, and redirects are not followed",
            f"use {fixed}",
        )
    target = f"{path}?{parts.query}" if parts.query else path
    return KasAddress(scheme, host, port, target)


def _scheme(value: str) -> Scheme:
    try:
        return Scheme(value)
    except ValueError:
        pass
    shown = value[:20]
    if value in ("http", "https"):
        secure = "wss" if value == "https" else "ws"
        raise KasAddressError(
            f"unsupported scheme {shown!r} in GitLab Kubernetes Agent Server address",
            f"kas is reached over WebSocket: use {secure}:// instead of {value}://",
        )
    raise KasAddressError(
        f"unsupported scheme {shown!r} in GitLab Kubernetes Agent Server address", f"use {_SCHEMES}"
    )


def _check_host(host: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return
    labels = host.rstrip(".").split(".")
    if not all(label and len(label) <= 63 and _is_label(label) for label in labels):
        raise KasAddressError(f"invalid host name {host[:80]!r} in the kas address")


def _is_label(label: str) -> bool:
    return label.isascii() and all(c.isalnum() or c in "-_" for c in label)


def _port(parts: SplitResult, scheme: Scheme) -> int:
    try:
        port = parts.port
    except ValueError:
        raise KasAddressError("the kas address has an invalid port", "use a number from 1 to 65535") from None
    if port is None:
        return _DEFAULT_PORTS[scheme]
    if port == 0:
        raise KasAddressError("the kas address has port 0", "use a number from 1 to 65535")
    return port
