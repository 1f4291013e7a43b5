"""TLS settings for kas (PROTOCOL.md §3.3): extra CAs are added to the system roots, never replace them."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import Final

import certifi

from agent_runtime.spec import TlsSettings
from agent_runtime.transport.config_error import TransportConfigError

_SYSTEM_BUNDLES: Final = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, some BSDs
)


class TlsConfigError(TransportConfigError):
    """The CA certificate data cannot be loaded."""

    default_hint = "caCert must hold PEM certificates"


def client_context(tls: TlsSettings, *, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """An SSL context for dialing kas (wss, or grpcs through the loopback pipe) or an https proxy."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not ctx.cert_store_stats().get("x509_ca"):
        # No system bundle (slim images without ca-certificates): fall back to Mozilla's roots.
        ctx.load_verify_locations(cafile=certifi.where())
    if tls.ca_pem:
        _load_extra_ca(ctx, tls.ca_pem)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def check_ca_pem(ca_pem: bytes) -> None:
    """Raise TlsConfigError unless `ca_pem` holds at least one loadable PEM certificate."""
    _load_extra_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca_pem)


def _load_extra_ca(ctx: ssl.SSLContext, ca_pem: bytes) -> None:
    try:
        text = ca_pem.decode("ascii")
    except UnicodeDecodeError:
        raise TlsConfigError("caCert is not PEM text") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise TlsConfigError("caCert holds no PEM certificate")
    try:
        ctx.load_verify_locations(cadata=text)
    except ssl.SSLError as e:
        raise TlsConfigError(f"caCert cannot be loaded: {e.reason or e}") from None


@functools.lru_cache(maxsize=1)
def system_roots_pem() -> bytes:
    """The system CA bundle as PEM (certifi's when the system has none), read once."""
    candidates = [ssl.get_default_verify_paths().cafile, *_SYSTEM_BUNDLES, certifi.where()]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            data = Path(candidate).read_bytes()
            if b"-----BEGIN CERTIFICATE-----" in data:
                return data
    return b""


def grpc_root_certificates(tls: TlsSettings) -> bytes | None:
    """Roots for grpc.ssl_channel_credentials, which replaces the default roots when given any.

    None (grpc's bundled roots) without an extra CA; otherwise the system bundle plus the extra CA.
    """
    if not tls.ca_pem:
        return None
    check_ca_pem(tls.ca_pem)
    return system_roots_pem() + b"\n" + tls.ca_pem
