"""Kubeconfigs for CI jobs/users (GitLab's shape) and the proxy's self-signed serving certificate."""

from __future__ import annotations

import base64
import ipaddress
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from kas import kubeconfig
from kas.k8s_proxy.certs import self_signed_serving_certificate, server_ssl_context
from kas.kubeconfig import KubeconfigAgent, build_kubeconfig
from kas.secret import Secret


def test_kubeconfig_has_gitlabs_names() -> None:
    config = build_kubeconfig(
        server="https://127.0.0.1:8154/k8s-proxy/",
        ca_pem=b"PEM",
        agents=[KubeconfigAgent(42, "team-agent", "group1/agents", "app"), KubeconfigAgent(43, "b", "g/p")],
        token=Secret(b"job-token"),
    )

    assert config["clusters"] == [
        {
            "name": "gitlab",
            "cluster": {
                "server": "https://127.0.0.1:8154/k8s-proxy/",
                "certificate-authority-data": base64.b64encode(b"PEM").decode(),
            },
        }
    ]
    assert config["users"][0] == {"name": "agent:42", "user": {"token": "ci:42:job-token"}}
    assert config["users"][1] == {"name": "agent:43", "user": {"token": "ci:43:job-token"}}
    assert config["contexts"][0] == {
        "name": "group1/agents:team-agent",
        "context": {"cluster": "gitlab", "user": "agent:42", "namespace": "app"},
    }
    assert config["current-context"] == "group1/agents:team-agent"


def test_cli_prints_a_pat_kubeconfig(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pat").write_text("glpat-secret\n")
    (tmp_path / "ca.crt").write_bytes(b"CA")

    code = kubeconfig.main(
        [
            "--agent-id=7",
            "--agent-name=a",
            "--config-project-path=g/p",
            "--server=https://127.0.0.1:1/",
            f"--ca-file={tmp_path / 'ca.crt'}",
            f"--pat-file={tmp_path / 'pat'}",
        ]
    )

    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["users"] == [{"name": "agent:7", "user": {"token": "pat:7:glpat-secret"}}]
    assert printed["current-context"] == "g/p:a"


def test_cli_reports_an_empty_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "token").write_text("\n")

    code = kubeconfig.main(
        [
            "--agent-id=7",
            "--agent-name=a",
            "--config-project-path=g/p",
            "--server=https://x/",
            f"--ci-job-token-file={tmp_path / 'token'}",
        ]
    )

    assert code == 1
    assert "is empty" in capsys.readouterr().err


def test_serving_certificate_is_signed_by_its_ca_for_loopback(tmp_path: Path) -> None:
    bundle = self_signed_serving_certificate()
    ca_file, cert_file, key_file = bundle.write(tmp_path)

    cert = x509.load_pem_x509_certificate(bundle.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(bundle.ca_pem))
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE" not in repr(bundle)
    context = server_ssl_context(cert_file, key_file)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ca_file.read_bytes() == bundle.ca_pem
