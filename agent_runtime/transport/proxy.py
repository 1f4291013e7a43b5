"""Which HTTP CONNECT proxy (if any) carries the connection to kas.

As agentk (Go's ProxyFromEnvironment): HTTPS_PROXY for wss, grpcs and grpc, HTTP_PROXY for ws, NO_PROXY
exempts hosts, and loopback destinations are never proxied. An explicit ProxySettings replaces the
environment. Proxy URLs may carry credentials: only `display` (host:port) is ever shown.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from agent_runtime.spec import ProxySettings
from agent_runtime.transport.address import KasAddress
from agent_runtime.transport.config_error import TransportConfigError


class ProxyConfigError(TransportConfigError):
    """The proxy URL is unusable. The message never contains the URL (it may hold credentials)."""

    default_hint = "fix the proxy URL"


@dataclass(frozen=True)
class Proxy:
    """A resolved proxy endpoint."""

    tls: bool
    """The proxy itself is reached over TLS (https:// proxy URL)."""
    host: str
    """Proxy host, without IPv6 brackets."""
    port: int
    """Proxy port."""
    authorization: str | None = field(default=None, repr=False)
    """Proxy-Authorization header value from the URL's user info; secret."""

    @property
    def display(self) -> str:
        """`host:port`, safe to show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_proxy_url(url: str) -> Proxy:
    """Parse an http:// or https:// proxy URL (a bare host:port means http://, as in Go)."""
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ProxyConfigError(f"unsupported proxy scheme {scheme[:10]!r}; use http:// or https://")
    try:
        port = parts.port
    except ValueError:
        raise ProxyConfigError("the proxy URL has an invalid port") from None
    if not parts.hostname:
        raise ProxyConfigError("the proxy URL has no host")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
    default_port = 443 if scheme == "https" else 80
    return Proxy(scheme == "https", parts.hostname, port or default_port, authorization)


def proxy_for(
    address: KasAddress, explicit: ProxySettings | None, environ: Mapping[str, str]
) -> Proxy | None:
    """The proxy for `address`: the explicit settings if given, else the environment."""
    if explicit is not None:
        url, no_proxy = explicit.url, explicit.no_proxy
    else:
        # grpc-go (agentk's grpc:// and grpcs://) asks for the proxy of an https URL whatever the scheme.
        https = address.tls or not address.websocket
        names = ("HTTPS_PROXY", "https_proxy") if https else ("HTTP_PROXY", "http_proxy")
        url = next((environ[n] for n in names if environ.get(n)), "")
        no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
    if not url or bypasses_proxy(address.host, address.port, no_proxy):
        return None
    return parse_proxy_url(url)


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """True when `host` must be dialed directly: loopback, or matched by a NO_PROXY entry."""
    host = host.lower().rstrip(".")
    ip = _ip(host)
    if host == "localhost" or (ip is not None and ip.is_loopback):
        return True
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry and _matches(entry, host, ip, port):
            return True
    return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _matches(
    entry: str, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int
) -> bool:
    if entry == "*":
        return True
    if "/" in entry:
        try:
            return ip is not None and ip in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    entry_host, entry_port = _split_port(entry)
    if entry_port is not None and entry_port != port:
        return False
    entry_ip = _ip(entry_host)
    if entry_ip is not None:
        return ip == entry_ip
    domain = entry_host.lstrip("*").lstrip(".").rstrip(".")
    return bool(domain) and (host == domain or host.endswith("." + domain))


def _split_port(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, int(port) if port.isdigit() else None
    return entry, None
