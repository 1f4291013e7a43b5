"""TLS to kas with a private CA (issue 13 §8), grpcs and wss, against the reference kas, through a Runtime.

tests/integration/transport/test_kas_connection.py covers the bridge alone (unknown authority, wrong
name, skip-verify against a test peer); this adds the expired certificate and the whole worker: the
reason and hint each case leaves in the worker's snapshot (what the operator writes into the status;
tests/unit/operator/test_status_mapping.py shows skip-verify is flagged there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.spec import ErrorReason, TlsSettings, WorkerSnapshot
from tests.integration.system.conftest import Certs, agent_spec, connected, kube, started_kas  # noqa: F401
from tests.reliability.figures import record

Check = Callable[[WorkerSnapshot], bool]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _private_ca(work: Path, *, expired: bool) -> Certs:
    """A CA and a kas certificate for 127.0.0.1 it signed; `expired`: the certificate ended yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("reliability private CA"))
        .issuer_name(_name("reliability private CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    ends = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=1)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("kas.test"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(ends)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    work.mkdir(parents=True, exist_ok=True)
    files = Certs(work / "ca.crt", work / "tls.crt", work / "tls.key")
    files.ca.write_bytes(_pem(ca))
    files.cert.write_bytes(_pem(leaf))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return files


@pytest.fixture
async def runtime(kube: KubeAccess) -> AsyncIterator[Runtime]:  # noqa: F811 - kube is the imported fixture
    rt = Runtime(kube, RuntimeSettings(observability_address=None, stop_grace=1.0, policy=PERMISSIVE_POLICY))
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(30):
            await rt.stop(1.0)


def _failed(snapshot: WorkerSnapshot) -> bool:
    return snapshot.last_error is not None


async def _outcome(runtime: Runtime, worker_id: str, within: float = 20) -> WorkerSnapshot:
    """The first snapshot that is connected or carries an error."""
    async with asyncio.timeout(within):
        while True:
            snapshot = runtime.snapshot(worker_id)
            if snapshot is not None and (connected(snapshot) or _failed(snapshot)):
                return snapshot
            await asyncio.sleep(0.05)


CASES: dict[str, tuple[bool, Callable[[bytes], TlsSettings]]] = {
    "no caCert": (False, lambda ca: TlsSettings()),
    "caCert": (False, lambda ca: TlsSettings(ca_pem=ca)),
    "wrong name": (False, lambda ca: TlsSettings(ca_pem=ca, server_name="wrong.test")),
    "expired": (True, lambda ca: TlsSettings(ca_pem=ca)),
    "expired, skip-verify": (True, lambda ca: TlsSettings(insecure_skip_verify=True)),
}


@pytest.mark.parametrize("scheme", ["grpcs", "wss"])
async def test_private_ca(runtime: Runtime, tmp_path: Path, scheme: str) -> None:
    readings: dict[str, WorkerSnapshot] = {}
    for case, (is_expired, tls) in CASES.items():
        certs = _private_ca(tmp_path / case.replace(" ", "-").replace(",", ""), expired=is_expired)
        async with started_kas(tmp_path / f"kas-{len(readings)}", certs, agent_tls=True) as kas:
            spec = agent_spec(kas, scheme, certs)
            spec = dataclasses.replace(
                spec, id=f"tls/{scheme}/{len(readings)}", tls=tls(certs.ca.read_bytes())
            )
            runtime.apply(spec)
            readings[case] = await _outcome(runtime, spec.id)
            await runtime.remove(spec.id)

    def reading(case: str) -> str:
        error = readings[case].last_error
        return (
            "Connected"
            if error is None or connected(readings[case])
            else f"{error.reason.value}: {error.message} ({error.hint})"
        )

    record(f"TLS {scheme}", **{case: reading(case)[:160] for case in CASES})
    assert connected(readings["caCert"])
    assert connected(readings["expired, skip-verify"])
    unknown = readings["no caCert"].last_error
    assert unknown is not None
    assert unknown.reason is ErrorReason.TLS_UNKNOWN_AUTHORITY
    assert "caCert" in unknown.hint
    wrong, expired = readings["wrong name"].last_error, readings["expired"].last_error
    assert wrong is not None
    assert expired is not None
    assert (wrong.reason, wrong.message, wrong.hint) != (expired.reason, expired.message, expired.hint)
    assert "expired" in expired.message.lower()
