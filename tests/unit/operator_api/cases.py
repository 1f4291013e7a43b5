"""Valid and invalid GitLabAgent specs, shared by the model tests and the apiserver tests.

Every invalid case names the field path the apiserver must report, so a user reading the error of
`kubectl apply` knows which line of their manifest to fix.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

VALID_SPEC: dict[str, Any] = {
    "kasAddress": "wss://gitlab.example.com/-/kubernetes-agent/",
    "tokenSecretRef": {"name": "agent-token"},
}

_MISSING = object()


@dataclass(frozen=True)
class Invalid:
    id: str
    """Test id."""
    changes: dict[str, Any]
    """Top-level spec keys to set; the value _MISSING deletes the key."""
    field: str
    """The field path the error must name, as the apiserver writes it."""
    model_too: bool = True
    """False where only the apiserver rejects: pydantic's lax mode coerces "yes" to True, which is
    harmless because the operator only ever parses objects the apiserver accepted."""

    def spec(self) -> dict[str, Any]:
        spec = copy.deepcopy(VALID_SPEC)
        for key, value in self.changes.items():
            if value is _MISSING:
                spec.pop(key, None)
            else:
                spec[key] = value
        return spec


def _header(name: str, value: str) -> dict[str, Any]:
    return {"kasHeaders": [{"name": name, "value": value}]}


_REF = {"name": "kas-ca"}
_KEY_REF = {"name": "gateway", "key": "api-key"}

INVALID: tuple[Invalid, ...] = (
    Invalid(
        "scheme-https", {"kasAddress": "https://gitlab.example.com/-/kubernetes-agent/"}, "spec.kasAddress"
    ),
    Invalid("scheme-missing", {"kasAddress": "kas.gitlab.com:443"}, "spec.kasAddress"),
    Invalid("no-host", {"kasAddress": "wss://"}, "spec.kasAddress"),
    Invalid("space-in-address", {"kasAddress": "wss://kas.gitlab.com/a b"}, "spec.kasAddress"),
    Invalid("missing-kasAddress", {"kasAddress": _MISSING}, "spec.kasAddress"),
    Invalid("missing-tokenSecretRef", {"tokenSecretRef": _MISSING}, "spec.tokenSecretRef"),
    Invalid("token-secret-without-name", {"tokenSecretRef": {"key": "token"}}, "spec.tokenSecretRef.name"),
    Invalid("token-secret-bad-name", {"tokenSecretRef": {"name": "Agent_Token"}}, "spec.tokenSecretRef.name"),
    Invalid(
        "token-secret-bad-key", {"tokenSecretRef": {"name": "t", "key": "a/b"}}, "spec.tokenSecretRef.key"
    ),
    Invalid("unknown-field", {"replicas": 2}, "spec.replicas"),
    Invalid("unknown-nested-field", {"tunnels": {"minIdle": 2, "minimum": 1}}, "spec.tunnels.minimum"),
    Invalid("minIdle-above-max", {"tunnels": {"minIdle": 10, "max": 5}}, "spec.tunnels.minIdle"),
    Invalid("max-zero", {"tunnels": {"max": 0}}, "spec.tunnels.max"),
    Invalid("max-501", {"tunnels": {"max": 501}}, "spec.tunnels.max"),
    Invalid("minIdle-zero", {"tunnels": {"minIdle": 0}}, "spec.tunnels.minIdle"),
    Invalid("minIdle-51", {"tunnels": {"minIdle": 51}}, "spec.tunnels.minIdle"),
    Invalid("max-as-string", {"tunnels": {"max": "500"}}, "spec.tunnels.max", model_too=False),
    Invalid("header-name-with-space", _header("X Tenant", "a"), "spec.kasHeaders[0].name"),
    Invalid("header-name-with-colon", _header("X-Tenant:", "a"), "spec.kasHeaders[0].name"),
    Invalid("header-value-empty", _header("X-Tenant", ""), "spec.kasHeaders[0].value"),
    Invalid("header-value-crlf", _header("X-Tenant", "a\r\nX-Injected: 1"), "spec.kasHeaders[0].value"),
    Invalid("header-reserved", _header("Sec-WebSocket-Protocol", "x"), "spec.kasHeaders[0].name"),
    Invalid("header-reserved-host", _header("HOST", "x"), "spec.kasHeaders[0].name"),
    Invalid("headers-not-a-list", {"kasHeaders": {"X-Tenant": "a"}}, "spec.kasHeaders"),
    Invalid(
        "too-many-headers",
        {"kasHeaders": [{"name": f"X-H{i}", "value": "v"} for i in range(33)]},
        "spec.kasHeaders",
    ),
    Invalid("caCert-both-refs", {"caCert": {"secretKeyRef": _REF, "configMapKeyRef": _REF}}, "spec.caCert"),
    Invalid("caCert-no-ref", {"caCert": {}}, "spec.caCert"),
    Invalid(
        "caCert-ref-without-name",
        {"caCert": {"secretKeyRef": {"key": "ca.crt"}}},
        "spec.caCert.secretKeyRef.name",
    ),
    Invalid(
        "caCert-on-cleartext",
        {"kasAddress": "ws://kas:8150", "caCert": {"configMapKeyRef": _REF}},
        "spec.caCert",
    ),
    Invalid(
        "tlsServerName-on-grpc",
        {"kasAddress": "grpc://kas:8150", "tlsServerName": "kas"},
        "spec.tlsServerName",
    ),
    Invalid("tlsServerName-bad", {"tlsServerName": "kas example"}, "spec.tlsServerName"),
    Invalid(
        "insecure-on-ws",
        {"kasAddress": "ws://kas:8150", "insecureSkipTLSVerify": True},
        "spec.insecureSkipTLSVerify",
    ),
    Invalid("proxy-socks", {"proxy": {"url": "socks5://proxy:1080"}}, "spec.proxy.url"),
    Invalid("proxy-with-path", {"proxy": {"url": "http://proxy:3128/path"}}, "spec.proxy.url"),
    Invalid("proxy-without-url", {"proxy": {"noProxy": ".svc"}}, "spec.proxy.url"),
    Invalid("proxy-credentials-in-url", {"proxy": {"url": "http://user:pw@proxy:3128"}}, "spec.proxy.url"),
    Invalid(
        "proxy-credentials-ref-without-name",
        {"proxy": {"url": "http://proxy:3128", "credentialsSecretRef": {}}},
        "spec.proxy.credentialsSecretRef.name",
    ),
    Invalid(
        "header-value-and-valueFrom",
        {"kasHeaders": [{"name": "X-Key", "value": "a", "valueFrom": {"secretKeyRef": _KEY_REF}}]},
        "spec.kasHeaders[0]",
    ),
    Invalid("header-without-value", {"kasHeaders": [{"name": "X-Key"}]}, "spec.kasHeaders[0]"),
    Invalid(
        "header-valueFrom-without-key",
        {"kasHeaders": [{"name": "X-Key", "valueFrom": {"secretKeyRef": {"name": "gw"}}}]},
        "spec.kasHeaders[0].valueFrom.secretKeyRef.key",
    ),
    Invalid("wireFlavor-unknown", {"wireFlavor": "GitLab"}, "spec.wireFlavor"),
    Invalid("serviceAccountName-bad", {"serviceAccountName": "Admin!"}, "spec.serviceAccountName"),
    Invalid("serviceAccountName-empty", {"serviceAccountName": ""}, "spec.serviceAccountName"),
    Invalid("suspend-not-bool", {"suspend": "yes"}, "spec.suspend", model_too=False),
)

VALID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("minimal", VALID_SPEC),
    (
        "gitlab-com",
        {"kasAddress": "wss://kas.gitlab.com", "tokenSecretRef": {"name": "t", "key": "agent-token"}},
    ),
    ("grpc", {"kasAddress": "grpc://kas.gitlab-system.svc:8150", "tokenSecretRef": {"name": "t"}}),
    (
        "everything",
        {
            "kasAddress": "grpcs://kas.example.com:8150",
            "tokenSecretRef": {"name": "agent-token", "key": "token"},
            "caCert": {"configMapKeyRef": {"name": "kas-ca", "key": "ca.pem"}},
            "tlsServerName": "kas.internal",
            "insecureSkipTLSVerify": False,
            "kasHeaders": [
                {"name": "X-Tenant", "value": "team a\tb"},
                {"name": "X-Tenant", "value": "again"},
                {"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "gateway", "key": "api-key"}}},
            ],
            "proxy": {
                "url": "http://proxy.internal:3128",
                "noProxy": ".svc,10.0.0.0/8",
                "credentialsSecretRef": {"name": "proxy-login"},
            },
            "serviceAccountName": "agent.team-a",
            "tunnels": {"minIdle": 50, "max": 50},
            "wireFlavor": "plural",
            "suspend": True,
        },
    ),
)
