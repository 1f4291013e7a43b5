"""The standalone CLI: agentk's flags and environment, validated without ever printing a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_runtime import cli
from agent_runtime.secret import Secret

TOKEN = "glagent-0123456789abcdefghijklmnopqrstuvwxyz-secret"
POD_ENV = {"POD_NAMESPACE": "gitlab-agent", "POD_NAME": "agentk-0"}


def _config(argv: list[str], environ: dict[str, str]) -> cli.StandaloneConfig:
    return cli.parse_config(cli.build_parser().parse_args(argv), environ)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_token_file_with_trailing_newline(token_file: Path) -> None:
    config = _config(
        ["--kas-address", "wss://kas.example.com", "--token-file", str(token_file)], dict(POD_ENV)
    )
    assert config.spec.token == Secret(TOKEN)
    assert config.token_file == token_file
    assert config.spec.id == "gitlab-agent/agentk-0"
    assert config.observability_address == ":8080"


def test_env_token_is_removed_from_the_environment() -> None:
    environ = {**POD_ENV, "AGENTK_TOKEN": TOKEN}
    config = _config(["--kas-address", "grpc://127.0.0.1:8150"], environ)
    assert config.spec.token == Secret(TOKEN)
    assert config.token_file is None
    assert "AGENTK_TOKEN" not in environ


def test_both_token_sources_is_an_error(token_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    environ = {**POD_ENV, "AGENTK_TOKEN": TOKEN}
    code = cli.main(["--kas-address", "grpcs://kas.example.com", "--token-file", str(token_file)], environ)
    err = capsys.readouterr().err
    assert code == 2
    assert "not both" in err
    assert TOKEN not in err
    assert "AGENTK_TOKEN" not in environ


def test_no_token_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--kas-address", "grpcs://kas.example.com"], dict(POD_ENV)) == 2
    assert "token is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("header", "complaint"),
    [
        ("Authorization Bearer sekrit-header-value", "must look like 'Name: Value'"),
        (": sekrit-header-value", "empty name"),
        ("Bad Name: sekrit-header-value", "invalid header name"),
        ("X-Empty:   ", "empty value"),
    ],
)
def test_bad_kas_header_is_an_error_that_hides_the_value(
    header: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {**POD_ENV, "AGENTK_TOKEN": TOKEN}
    argv = ["--kas-address", "wss://kas.example.com", "--kas-header", "X-Ok: fine", "--kas-header", header]
    assert cli.main(argv, environ) == 2
    err = capsys.readouterr().err
    assert complaint in err
    assert "sekrit-header-value" not in err
    assert TOKEN not in err


def test_kas_headers_are_trimmed_and_kept_in_order() -> None:
    environ = {**POD_ENV, "AGENTK_TOKEN": TOKEN}
    argv = [
        "--kas-address",
        "ws://127.0.0.1:1",
        "--kas-header",
        " X-A :  one ",
        "--kas-header",
        "X-B: two: 2",
    ]
    assert _config(argv, environ).spec.kas_headers == (("X-A", "one"), ("X-B", "two: 2"))


@pytest.mark.parametrize("address", [None, "https://kas.example.com", "wss://", "kas.example.com:443"])
def test_kas_address_must_be_a_supported_url(address: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--kas-address", address] if address is not None else []
    assert cli.main(argv, {**POD_ENV, "AGENTK_TOKEN": TOKEN}) == 2
    assert "--kas-address" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["POD_NAMESPACE", "POD_NAME"])
def test_pod_identity_is_required(missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    environ = {**POD_ENV, "AGENTK_TOKEN": TOKEN}
    del environ[missing]
    assert cli.main(["--kas-address", "grpc://127.0.0.1:1"], environ) == 2
    assert missing in capsys.readouterr().err


def test_tls_flags(tmp_path: Path, token_file: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    config = _config(
        [
            "--kas-address=grpcs://kas.example.com",
            f"--token-file={token_file}",
            f"--ca-cert-file={ca}",
            "--kas-tls-server-name=kas.internal",
            "--kas-insecure-skip-tls-verify",
        ],
        dict(POD_ENV),
    )
    assert config.spec.tls.ca_pem == ca.read_bytes()
    assert config.spec.tls.server_name == "kas.internal"
    assert config.spec.tls.insecure_skip_verify


def test_unreadable_token_file_and_bad_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--kas-address=grpc://h:1", f"--token-file={tmp_path / 'nope'}"], dict(POD_ENV)) == 2
    assert "cannot read" in capsys.readouterr().err
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    argv = ["--kas-address=grpcs://h:1", f"--ca-cert-file={not_pem}"]
    assert cli.main(argv, {**POD_ENV, "AGENTK_TOKEN": TOKEN}) == 2
    assert "no PEM certificate" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"], {}) == 0
    out = capsys.readouterr().out
    assert out.startswith("agentk version v")
    assert ", commit: gao-" in out
    assert ", built: " in out
