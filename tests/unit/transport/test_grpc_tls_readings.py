"""grpcs certificate failures read as what they are (grpc core's details, as grpcio 1.85 words them).

Found by tests/reliability/test_tls.py: a name mismatch read "kas unavailable" and an expired certificate
"not trusted, set caCert", with caCert set.
"""

from __future__ import annotations

from agent_runtime.spec import ErrorReason
from agent_runtime.transport.errors import classify_unavailable

_PREFIX = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:43949: "


def test_expired_certificate() -> None:
    error = classify_unavailable(
        _PREFIX + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
        "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: certificate has expired: OK"
    )
    assert error.reason is ErrorReason.TLS_ERROR
    assert "expired" in error.message
    assert "renewed" in error.hint


def test_name_mismatch() -> None:
    error = classify_unavailable(
        _PREFIX
        + "Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed."
    )
    assert error.reason is ErrorReason.TLS_ERROR
    assert "name" in error.message
    assert "tlsServerName" in error.hint


def test_unknown_authority_keeps_the_ca_hint() -> None:
    error = classify_unavailable(
        _PREFIX + "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
        "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
    )
    assert error.reason is ErrorReason.TLS_UNKNOWN_AUTHORITY
    assert "caCert" in error.hint
