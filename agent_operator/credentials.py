"""Kubernetes credentials, loaded once, shared by the runtime (aiohttp) and kopf (its login handler).

The `kubernetes` package's loaders find them: an explicit --kubeconfig, else in-cluster, else $KUBECONFIG /
~/.kube/config. Blocking (files, exec plugins): call `load_configuration` from a thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from agent_runtime.kube import KubeAccess, KubeConfigError

_load_incluster_config: Callable[[Any], None] = k8s_config.load_incluster_config
_load_kube_config: Callable[..., None] = k8s_config.load_kube_config


def load_configuration(kubeconfig: str | None, context: str | None) -> Any:
    """A filled `kubernetes.client.Configuration`; KubeConfigError says where it looked (no secrets)."""
    configuration = k8s_client.Configuration()
    loaders: list[tuple[str, Callable[[], None]]] = []
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        loaders.append(("in-cluster service account", lambda: _load_incluster_config(configuration)))
    where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    loaders.append(
        (
            f"kubeconfig {where}",
            lambda: _load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            ),
        )
    )
    problems: list[str] = []
    for name, load in loaders:
        try:
            load()
        except (k8s_config.ConfigException, OSError, ValueError, TypeError) as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        return configuration
    raise KubeConfigError("no Kubernetes credentials found (" + "; ".join(problems) + ")")


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
