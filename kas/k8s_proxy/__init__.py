"""kas's Kubernetes API proxy for CI jobs and users (GitLab's port 8154), PROTOCOL.md §7 and §10.

Wiring (the composition root builds these):

    proxy = KubernetesApiProxy(
        ProxySettings(flavor=..., url_path_prefix="/k8s-proxy/", allowed_origins=frozenset({gitlab_url})),
        ProxyDependencies(router=..., find_agent=..., agent_configuration=..., access=...),
        host="127.0.0.1", port=8154, ssl_context=server_ssl_context(cert, key),
    )
    await proxy.run()   # until cancelled
"""

from kas.k8s_proxy.access import AccessConfigError, ProxyAccessConfig, load_access_config, parse_access_config
from kas.k8s_proxy.certs import ServingCertificate, self_signed_serving_certificate, server_ssl_context
from kas.k8s_proxy.server import KubernetesApiProxy
from kas.k8s_proxy.settings import (
    AccessLookup,
    AgentLookup,
    ConfigurationLookup,
    ProxyDependencies,
    ProxySettings,
)

__all__ = [
    "AccessConfigError",
    "AccessLookup",
    "AgentLookup",
    "ConfigurationLookup",
    "KubernetesApiProxy",
    "ProxyAccessConfig",
    "ProxyDependencies",
    "ProxySettings",
    "ServingCertificate",
    "load_access_config",
    "parse_access_config",
    "self_signed_serving_certificate",
    "server_ssl_context",
]
