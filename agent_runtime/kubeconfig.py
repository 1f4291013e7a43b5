"""Kubernetes credentials without the kubernetes package, for the shapes nearly every deployment uses.

The in-cluster ServiceAccount (the operator's normal case) and kubeconfig files whose user has a token,
a token file, a client certificate or a user name and password are read here. Importing the kubernetes
package for this cost about 15 MiB per process (its API models), more than a hundred agents' workers
(docs/benchmarks.md, issue 11). Kubeconfigs that need more (an exec plugin, an auth provider, several
files in $KUBECONFIG) are still loaded by the kubernetes package, imported only then (`kube.py`).

What this module returns has the attributes `KubeAccess` reads of a `kubernetes.client.Configuration`,
so both loaders feed it alike.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where a pod's ServiceAccount token and the cluster's CA are mounted."""


class NotHandledHereError(Exception):
    """The kubeconfig needs what only the kubernetes package does (exec plugins, auth providers)."""


class KubeconfigError(ValueError):
    """The kubeconfig or the in-cluster environment is incomplete or malformed (says what, never a secret)."""


@dataclass
class Credentials:
    """The subset of `kubernetes.client.Configuration` that KubeAccess reads."""

    host: str
    """The API server's URL."""
    ssl_ca_cert: str | None = None
    """A CA bundle file to verify the API server against (None: the system's roots)."""
    verify_ssl: bool = True
    """False: insecure-skip-tls-verify."""
    cert_file: str | None = None
    """Client certificate file."""
    key_file: str | None = None
    """Client key file."""
    tls_server_name: str | None = None
    """The name to verify the API server's certificate against, when not the host's."""
    proxy: str | None = None
    """A proxy URL for every request."""
    token: str | None = None
    """A bearer token that never changes."""
    token_file: str | None = None
    """A file to (re-)read the bearer token from: the mounted ServiceAccount token rotates."""
    username: str | None = None
    """Basic authentication's user."""
    password: str | None = None
    """Basic authentication's password."""

    @property
    def refresh_api_key_hook(self) -> object | None:
        """Non-None when the token can change (a token file), so KubeAccess re-reads it periodically."""
        return self.token_file

    def auth_settings(self) -> dict[str, Any]:
        """The bearer token, read from its file now when it has one (blocking: called in a thread)."""
        token = self.token
        if self.token_file is not None:
            token = Path(self.token_file).read_text().strip()
        return {"BearerToken": {"value": f"Bearer {token}"}} if token else {}

    def get_basic_auth_token(self) -> str:
        """The Authorization value of basic authentication."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


def in_cluster(environ: Mapping[str, str], account_dir: Path = SERVICE_ACCOUNT_DIR) -> Credentials:
    """The pod's ServiceAccount: the API server from KUBERNETES_SERVICE_HOST/PORT, token and CA mounted."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = environ.get("KUBERNETES_SERVICE_PORT", "").strip()
    if not host or not port:
        raise KubeconfigError("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set")
    token_file, ca_file = account_dir / "token", account_dir / "ca.crt"
    for needed in (token_file, ca_file):
        if not needed.is_file():
            raise KubeconfigError(f"{needed} does not exist")
    if not token_file.read_text().strip():
        raise KubeconfigError(f"{token_file} is empty")
    bracketed = f"[{host}]" if ":" in host else host
    return Credentials(
        host=f"https://{bracketed}:{port}", ssl_ca_cert=str(ca_file), token_file=str(token_file)
    )


def from_kubeconfig(path: Path, context: str | None = None) -> Credentials:
    """The credentials of `context` (default: the current context) of the kubeconfig at `path`.

    Raises NotHandledHereError for users that need the kubernetes package, KubeconfigError for what is wrong.
    """
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        # Never yaml's own text: it quotes the offending line, which may hold a token.
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise KubeconfigError(f"{path} is not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise KubeconfigError(f"{path} is not a kubeconfig (no mapping at its top)")
    name = context or document.get("current-context")
    if not name:
        raise KubeconfigError(f"{path} has no current-context and none was given")
    chosen = _named(document, "contexts", "context", name, path)
    cluster = _named(document, "clusters", "cluster", chosen.get("cluster"), path)
    user = _named(document, "users", "user", chosen.get("user"), path) if chosen.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise NotHandledHereError("the kubeconfig's user needs an exec plugin or an auth provider")
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise KubeconfigError(f"cluster {chosen.get('cluster')!r} in {path} has no server")
    files = _Files(path.parent)
    return Credentials(
        host=server,
        ssl_ca_cert=files.path_or_data(cluster, "certificate-authority"),
        verify_ssl=not cluster.get("insecure-skip-tls-verify", False),
        cert_file=files.path_or_data(user, "client-certificate"),
        key_file=files.path_or_data(user, "client-key"),
        tls_server_name=cluster.get("tls-server-name") or None,
        proxy=cluster.get("proxy-url") or None,
        token=user.get("token") or None,
        token_file=files.path(user.get("tokenFile")),
        username=user.get("username") or None,
        password=user.get("password") or None,
    )


def _named(document: dict[str, Any], section: str, key: str, name: object, path: Path) -> dict[str, Any]:
    for entry in document.get(section) or ():
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key)
            return value if isinstance(value, dict) else {}
    raise KubeconfigError(f"{path} has no {key} named {name!r}")


class _Files:
    """Resolves a kubeconfig's file references (relative to its directory) and writes its inline data
    (`<field>-data`, base64) to private files, which ssl needs; removed when the process exits."""

    _directory: str | None = None

    def __init__(self, base: Path) -> None:
        self._base = base

    def path(self, value: object) -> str | None:
        if not isinstance(value, str) or not value:
            return None
        return str(self._base / os.path.expanduser(value))

    def path_or_data(self, section: dict[str, Any], field: str) -> str | None:
        data = section.get(f"{field}-data")
        if not data:
            return self.path(section.get(field))
        try:
            content = base64.b64decode(data, validate=True)
        except (ValueError, TypeError) as e:
            raise KubeconfigError(f"{field}-data is not valid base64") from e
        return self._write(field, content)

    @classmethod
    def _write(cls, field: str, content: bytes) -> str:
        if cls._directory is None:
            cls._directory = tempfile.mkdtemp(prefix="gao-kube-")  # mode 0700
            atexit.register(shutil.rmtree, cls._directory, ignore_errors=True)
        fd, name = tempfile.mkstemp(prefix=f"{field}-", dir=cls._directory)
        with os.fdopen(fd, "wb") as file:
            file.write(content)
        return name
