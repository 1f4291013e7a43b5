"""The Kubernetes API server as kas sees it: where it is and how to authenticate, for aiohttp requests.

The `kubernetes` package's config loader finds the credentials (an explicit kubeconfig, else the
in-cluster service account, else $KUBECONFIG / ~/.kube/config); this module keeps only what an aiohttp
request needs. kas uses it for one thing: watching the Secret that holds its agents (kas.agents_secret).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

# The loaders carry no annotations; give them the signatures relied on here.
_load_incluster_config: Callable[[Any], None] = k8s_config.load_incluster_config
_load_kube_config: Callable[..., None] = k8s_config.load_kube_config


class KubeCredentialsError(RuntimeError):
    """No usable Kubernetes credentials; the message says where kas looked, never a credential."""


class KubeEndpoint:
    """Base URL, TLS settings and the Authorization header of one API server."""

    def __init__(self, configuration: Any) -> None:
        host: str = configuration.host or ""
        if not host.startswith(("https://", "http://")):
            raise KubeCredentialsError(f"Kubernetes API host {host!r} is not an http(s) URL")
        self._configuration = configuration
        self.base_url: str = host.rstrip("/")
        """Scheme, host, port (and path prefix) of the API server, without a trailing slash."""
        self.ssl_context: ssl.SSLContext | None = (
            _ssl_context(configuration) if host.startswith("https") else None
        )
        """TLS settings for https:// servers (CA, client certificate, verification)."""
        self.request_options: dict[str, Any] = {}
        """Per-request aiohttp options: TLS server name and proxy from the kubeconfig."""
        if server_name := getattr(configuration, "tls_server_name", None):
            self.request_options["server_hostname"] = server_name
        if proxy := getattr(configuration, "proxy", None):
            self.request_options["proxy"] = proxy
        self._authorization: str | None = _read_authorization(configuration)

    def headers(self) -> dict[str, str]:
        """Authorization (if any) and Accept headers for a JSON request."""
        found = {"Accept": "application/json"}
        if self._authorization:
            found["Authorization"] = self._authorization
        return found

    async def refresh(self) -> None:
        """Re-read an expiring token through the loader's hook (file read or exec plugin: in a thread)."""
        if self._configuration.refresh_api_key_hook is not None:
            self._authorization = await asyncio.to_thread(_read_authorization, self._configuration)


def _read_authorization(configuration: Any) -> str | None:
    # auth_settings() runs the loader's refresh hook, which re-reads an expired token.
    bearer = configuration.auth_settings().get("BearerToken")
    if bearer and bearer.get("value"):
        scheme, _, token = str(bearer["value"]).partition(" ")
        return f"Bearer {token}" if scheme.lower() == "bearer" and token else str(bearer["value"])
    if configuration.username and configuration.password:
        return str(configuration.get_basic_auth_token())
    return None


def _ssl_context(configuration: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    return context


def load_endpoint(kubeconfig: Path | None) -> KubeEndpoint:
    """An explicit kubeconfig; else in-cluster; else $KUBECONFIG / ~/.kube/config. Blocking (files,
    exec plugins): call it with `asyncio.to_thread`."""
    configuration = k8s_client.Configuration()
    attempts: list[tuple[str, Callable[[], None]]] = []
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        attempts.append(("in-cluster service account", lambda: _load_incluster_config(configuration)))
    where = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or "~/.kube/config"
    attempts.append(
        (
            f"kubeconfig {where}",
            lambda: _load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                client_configuration=configuration,
                persist_config=False,
            ),
        )
    )
    problems: list[str] = []
    for source, load in attempts:
        try:
            load()
            return KubeEndpoint(configuration)
        except (k8s_config.ConfigException, OSError, ValueError, TypeError, KubeCredentialsError) as exc:
            problems.append(f"{source}: {type(exc).__name__}: {exc}")
    raise KubeCredentialsError("no usable Kubernetes credentials (" + "; ".join(problems) + ")")
