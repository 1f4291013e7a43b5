"""Kubernetes credentials, loaded once (agent_runtime.kube.load_configuration), shared by the runtime
(aiohttp) and kopf (its login handler)."""

from __future__ import annotations

from typing import Any

import kopf

from agent_runtime.kube import KubeAccess


def kopf_connection(configuration: Any, kube: KubeAccess) -> kopf.ConnectionInfo:
    """kopf's view of the same credentials; the token is the one KubeAccess keeps fresh."""
    header = kube.auth_headers().get("Authorization", "")
    scheme, _, token = header.partition(" ")
    bearer = scheme.lower() == "bearer" and bool(token)
    return kopf.ConnectionInfo(
        server=kube.base_url,
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        username=None if bearer else (configuration.username or None),
        password=None if bearer else (configuration.password or None),
        scheme="Bearer" if bearer else None,
        token=token if bearer else None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
    )
