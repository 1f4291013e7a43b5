"""Where a worker may dial: the operator admin's DestinationPolicy, applied to kas and an explicit proxy.

A tenant chooses its kas address (and proxy), so without this a GitLabAgent is an SSRF primitive: the
pod's loopback, cluster IPs and the cloud metadata endpoint, with a tenant-chosen path and headers. Two
stages: `check_connection` refuses what needs no DNS (scheme, insecureSkipTLSVerify, host names outside the
allow-list, literal non-public IPs) when the connection is built; `resolve` runs before every TCP
connection, resolves the name once and returns only the addresses the policy permits, which the dialer
then connects to (no second lookup, so no DNS rebinding between check and connect).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from agent_runtime.policy import DestinationPolicy
from agent_runtime.spec import ErrorReason, WorkerError
from agent_runtime.transport.address import KasAddress, Scheme
from agent_runtime.transport.config_error import TransportConfigError

_log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
PRIVATE_HINT: Final = (
    "use kas's public address; the operator admin can allow private destinations with "
    "--allow-private-kas, or name a CIDR in --allowed-kas-hosts"
)
ALLOW_LIST_HINT: Final = "ask the operator admin to add the host to --allowed-kas-hosts"


class DestinationRefusedError(TransportConfigError):
    """The policy forbids this destination; the worker reports DestinationRefused and does not retry."""

    def as_worker_error(self) -> WorkerError:
        """The refusal as a worker status entry."""
        return WorkerError(ErrorReason.DESTINATION_REFUSED, self.message, self.hint)


def refused(message: str, hint: str) -> WorkerError:
    """A DestinationRefused worker error (for refusals found while dialing)."""
    return WorkerError(ErrorReason.DESTINATION_REFUSED, message, hint)


def ip_category(ip: IPAddress) -> str | None:
    """The kind of non-public address `ip` is ("loopback", "link-local", ...), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip_category(ip.ipv4_mapped)  # ::ffff:127.0.0.1 reaches 127.0.0.1
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),  # includes 169.254.169.254, the cloud metadata service
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "shared (CGNAT)"),
        (ip.is_private, "private"),  # RFC 1918, ULA fc00::/7 and the other special-purpose blocks
        (not ip.is_global, "reserved"),
    )
    return next((name for matched, name in checks if matched), None)


def parse_ip(text: str) -> IPAddress | None:
    """`text` as an IP address (IPv6 with or without brackets, without a zone), or None for a name."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _normal_name(host: str) -> str:
    return host.lower().rstrip(".")


@dataclass(frozen=True)
class AllowList:
    """`DestinationPolicy.allowed_hosts`, parsed: exact names, `*.domain` suffixes and networks."""

    names: frozenset[str]
    """Exact host names (lower case, no trailing dot)."""
    suffixes: tuple[str, ...]
    """`.domain` for each `*.domain` pattern: matches names below the domain, not the domain itself."""
    networks: tuple[IPNetwork, ...]
    """CIDRs (and single IPs as /32 or /128)."""

    @classmethod
    def parse(cls, patterns: Sequence[str]) -> AllowList:
        """Parse patterns already validated by the operator's flag parser; unusable ones match nothing."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in patterns:
            pattern = raw.strip()
            ip = parse_ip(pattern)
            if "/" in pattern or ip is not None:
                try:
                    networks.append(ipaddress.ip_network(pattern.strip("[]"), strict=False))
                except ValueError:
                    _log.warning("ignoring unusable allowed kas host pattern %r", pattern[:80])
            elif pattern.startswith("*."):
                suffixes.append("." + _normal_name(pattern[2:]))
            elif pattern:
                names.add(_normal_name(pattern))
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    @property
    def empty(self) -> bool:
        """No allow-list: any public host."""
        return not (self.names or self.suffixes or self.networks)

    def names_host(self, host: str) -> bool:
        """`host` (a name) matches an exact or `*.domain` pattern."""
        name = _normal_name(host)
        return name in self.names or any(name.endswith(s) for s in self.suffixes)

    def covers(self, ip: IPAddress) -> bool:
        """`ip` is inside one of the networks."""
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        return any(plain.version == net.version and plain in net for net in self.networks)


@dataclass(frozen=True)
class Destination:
    """One host the worker is about to connect to, and how to name it in messages."""

    host: str
    """Host name or IP address (no brackets)."""
    port: int
    """TCP port."""
    role: str
    """"kas" or "proxy": what the host is, for messages."""

    @property
    def shown(self) -> str:
        """`host:port`, IPv6 in brackets; the tenant's own value, safe to show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class DestinationGuard:
    """Applies one DestinationPolicy. Stateless apart from the parsed allow-list; shared by a worker."""

    def __init__(self, policy: DestinationPolicy) -> None:
        self.policy = policy
        """The policy applied."""
        self._allow = AllowList.parse(policy.allowed_hosts)

    def check_connection(self, address: KasAddress, *, insecure_skip_verify: bool) -> None:
        """Refuse a plaintext scheme, skipped TLS verification, and a kas host decided without DNS."""
        if not address.tls and not self.policy.allow_plaintext:
            secure = "wss" if address.scheme is Scheme.WS else "grpcs"
            raise DestinationRefusedError(
                f"the kas address uses {address.scheme}:// (plaintext), which this operator does not allow",
                f"use {secure}://; the operator admin can allow plaintext with --allow-plaintext-kas",
            )
        if address.tls and insecure_skip_verify and not self.policy.allow_insecure_skip_verify:
            raise DestinationRefusedError(
                "insecureSkipTLSVerify is on, which this operator does not allow",
                "set caCert to the CA of kas's certificate instead; the operator admin can allow it with "
                "--allow-insecure-skip-tls-verify",
            )
        self.check_static(Destination(address.host, address.port, "kas"))

    def check_static(self, dest: Destination) -> None:
        """Refuse what is decided without DNS: a literal IP, or a name outside the allow-list."""
        ip = parse_ip(dest.host)
        if ip is not None:
            reason = self._ip_refusal(ip, named=False)
            if reason is not None:
                raise DestinationRefusedError(*_refusal_text(dest, "is", reason))
            return
        if self._allow.empty or self._allow.names_host(dest.host) or self._allow.networks:
            return  # a name outside the name patterns may still resolve into an allowed CIDR: see resolve()
        raise DestinationRefusedError(
            f"{dest.role} host {dest.host[:100]} is not in the operator's allowed kas hosts", ALLOW_LIST_HINT
        )

    def permitted(self, dest: Destination, ip: IPAddress) -> str | None:
        """None if `ip` (an address of `dest`) may be dialed, else the reason it may not."""
        return self._ip_refusal(ip, named=parse_ip(dest.host) is None and self._allow.names_host(dest.host))

    def _ip_refusal(self, ip: IPAddress, *, named: bool) -> str | None:
        if self._allow.covers(ip):
            return None
        if not self._allow.empty and not named:
            return "an address outside the operator's allowed kas hosts"
        category = ip_category(ip)
        if category is None or self.policy.allow_private:
            return None
        article = "an" if category[0] in "aeiou" else "a"
        return f"{article} {category} address"

    async def resolve(self, dest: Destination, *, within: float) -> list[IPAddress]:
        """The addresses of `dest` that may be dialed, in resolver order.

        Raises DestinationRefused (as `WorkerError` in `DestinationRefused`) when none may be, and
        `OSError`/`TimeoutError` when the name does not resolve.
        """
        ips = await _lookup(dest.host, dest.port, within)
        allowed: list[IPAddress] = []
        reasons: list[str] = []
        for ip in ips:
            reason = self.permitted(dest, ip)
            if reason is None:
                allowed.append(ip)
            else:
                reasons.append(reason)
        if not allowed:
            _log.debug("%s %s: every address refused (%s)", dest.role, dest.shown, ", ".join(map(str, ips)))
            raise DestinationRefused(self._resolved_refusal(dest, reasons))
        return allowed

    async def check_all(self, dest: Destination, *, within: float) -> None:
        """Refuse `dest` if any address it resolves to is refused; a name that does not resolve passes.

        For kas behind an HTTP proxy: the proxy connects, to whichever address it resolves, so every
        address we can see must be acceptable; a name only the proxy can resolve is the proxy's business.
        """
        if parse_ip(dest.host) is not None:
            return  # check_static decided
        try:
            ips = await _lookup(dest.host, dest.port, within)
        except (OSError, TimeoutError):
            return
        reasons = [r for r in (self.permitted(dest, ip) for ip in ips) if r is not None]
        if reasons:
            raise DestinationRefused(self._resolved_refusal(dest, reasons))

    def _resolved_refusal(self, dest: Destination, reasons: list[str]) -> WorkerError:
        return refused(*_refusal_text(dest, "resolves to", reasons[0]))


def _refusal_text(dest: Destination, verb: str, reason: str) -> tuple[str, str]:
    hint = ALLOW_LIST_HINT if "allowed kas hosts" in reason else PRIVATE_HINT
    return f"{dest.role} address {dest.shown} {verb} {reason}, which this operator does not allow", hint


class DestinationRefused(Exception):  # noqa: N818 - named after the status reason it carries
    """A dial was refused by the policy after resolution; `error` is what the worker reports."""

    def __init__(self, error: WorkerError) -> None:
        super().__init__(error.message)
        self.error = error


async def _lookup(host: str, port: int, within: float) -> list[IPAddress]:
    ip = parse_ip(host)
    if ip is not None:
        return [ip]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            candidate = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if candidate not in found:
                found.append(candidate)
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, "no IPv4/IPv6 address")
    return found
