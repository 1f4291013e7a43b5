"""Our own kubeconfig and in-cluster reading (agent_runtime.kubeconfig), without the kubernetes package."""

from __future__ import annotations

import base64
import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from agent_runtime.kubeconfig import (
    KubeconfigError,
    NotHandledHereError,
    from_kubeconfig,
    in_cluster,
)

TOKEN = "kubeconfig-secret-token-0123456789"


def _write(tmp_path: Path, user: Mapping[str, object], cluster: Mapping[str, object] | None = None) -> Path:
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "main",
        "contexts": [
            {"name": "main", "context": {"cluster": "c", "user": "u"}},
            {"name": "other", "context": {"cluster": "c2", "user": "u"}},
        ],
        "clusters": [
            {"name": "c", "cluster": {"server": "https://127.0.0.1:6443", **(cluster or {})}},
            {"name": "c2", "cluster": {"server": "https://127.0.0.2:6443"}},
        ],
        "users": [{"name": "u", "user": user}],
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(document))
    return path


def test_a_token_user_of_the_current_context(tmp_path: Path) -> None:
    credentials = from_kubeconfig(_write(tmp_path, {"token": TOKEN}, {"insecure-skip-tls-verify": True}))
    assert credentials.host == "https://127.0.0.1:6443"
    assert credentials.verify_ssl is False
    assert credentials.auth_settings() == {"BearerToken": {"value": f"Bearer {TOKEN}"}}
    assert credentials.refresh_api_key_hook is None  # a fixed token is never re-read


def test_another_context_by_name(tmp_path: Path) -> None:
    assert from_kubeconfig(_write(tmp_path, {"token": TOKEN}), "other").host == "https://127.0.0.2:6443"
    with pytest.raises(KubeconfigError, match="no context named 'missing'"):
        from_kubeconfig(_write(tmp_path, {"token": TOKEN}), "missing")


def test_inline_certificates_go_to_private_files(tmp_path: Path) -> None:
    cert, key, ca = b"-----CERT-----\n", b"-----KEY-----\n", b"-----CA-----\n"
    user = {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
    cluster = {"certificate-authority-data": base64.b64encode(ca).decode(), "tls-server-name": "kube.test"}
    credentials = from_kubeconfig(_write(tmp_path, user, cluster))
    assert credentials.cert_file is not None
    assert credentials.key_file is not None
    assert credentials.ssl_ca_cert is not None
    assert Path(credentials.cert_file).read_bytes() == cert
    assert Path(credentials.key_file).read_bytes() == key
    assert Path(credentials.ssl_ca_cert).read_bytes() == ca
    assert stat.S_IMODE(Path(credentials.key_file).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(credentials.key_file).parent.stat().st_mode) == 0o700
    assert credentials.tls_server_name == "kube.test"
    assert credentials.auth_settings() == {}


def test_file_references_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    user = {"client-certificate": "certs/client.crt", "tokenFile": "token"}
    credentials = from_kubeconfig(_write(tmp_path, user, {"certificate-authority": "/etc/ca.pem"}))
    assert credentials.cert_file == str(tmp_path / "certs" / "client.crt")
    assert credentials.ssl_ca_cert == "/etc/ca.pem"
    assert credentials.auth_settings() == {"BearerToken": {"value": f"Bearer {TOKEN}"}}
    (tmp_path / "token").write_text("rotated")
    assert credentials.auth_settings() == {"BearerToken": {"value": "Bearer rotated"}}
    assert credentials.refresh_api_key_hook is not None


def test_basic_authentication(tmp_path: Path) -> None:
    credentials = from_kubeconfig(_write(tmp_path, {"username": "admin", "password": "pw"}))
    assert credentials.get_basic_auth_token() == "Basic " + base64.b64encode(b"admin:pw").decode()


@pytest.mark.parametrize("user", [{"exec": {"command": "aws"}}, {"auth-provider": {"name": "oidc"}}])
def test_plugins_are_left_to_the_kubernetes_package(tmp_path: Path, user: dict[str, object]) -> None:
    with pytest.raises(NotHandledHereError):
        from_kubeconfig(_write(tmp_path, user))


def test_malformed_files_say_where_and_never_quote_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(f"users:\n- name: u\n  user: {{token: {TOKEN}\n")
    with pytest.raises(KubeconfigError) as raised:
        from_kubeconfig(path)
    assert "is not valid YAML" in str(raised.value)
    assert TOKEN not in str(raised.value)
    path.write_text("- just a list\n")
    with pytest.raises(KubeconfigError, match="no mapping"):
        from_kubeconfig(path)
    bad = _write(tmp_path, {"client-key-data": "not base64!"})
    with pytest.raises(KubeconfigError, match="client-key-data is not valid base64"):
        from_kubeconfig(bad)


def test_in_cluster_reads_the_mounted_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "ca.crt").write_text("-----CA-----\n")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    credentials = in_cluster(env, tmp_path)
    assert credentials.host == "https://[fd00::1]:443"
    assert credentials.ssl_ca_cert == str(tmp_path / "ca.crt")
    assert credentials.auth_settings() == {"BearerToken": {"value": f"Bearer {TOKEN}"}}
    (tmp_path / "token").write_text("rotated")  # kubelet rotates the projected token
    assert credentials.auth_settings() == {"BearerToken": {"value": "Bearer rotated"}}


def test_in_cluster_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match="KUBERNETES_SERVICE_PORT"):
        in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeconfigError, match="token does not exist"):
        in_cluster(env, tmp_path)
