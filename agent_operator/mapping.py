"""GitLabAgent resource + the data it references → WorkerSpec. Pure functions, no I/O.

The operator reads the token Secret (and the CA Secret/ConfigMap) and hands their decoded JSON objects
here. What cannot be used becomes a `Missing` with a reason, a message and a hint for the status; the
token's value never appears in either.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent_operator.api import CaCertRef, GitLabAgentSpec
from agent_proto.flavor import WireFlavor
from agent_runtime.secret import Secret
from agent_runtime.spec import ProxySettings, ServiceAccountRef, TlsSettings, TunnelSettings, WorkerSpec

KubeObject = Mapping[str, Any]
"""A Kubernetes object as decoded JSON."""

_PEM_MARKER: Final = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, order=True)
class AgentKey:
    """Identifies one GitLabAgent; its string form `<namespace>/<name>` is the worker id."""

    namespace: str
    """Namespace of the GitLabAgent."""
    name: str
    """Name of the GitLabAgent."""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def worker_id(self) -> str:
        """The WorkerSpec id of this agent's worker."""
        return str(self)

    @classmethod
    def parse(cls, text: str) -> AgentKey:
        """Inverse of str(): `ns/name` → AgentKey (ValueError otherwise)."""
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"not a <namespace>/<name> key: {text!r}")
        return cls(namespace, name)


class SourceKind(enum.StrEnum):
    """Kinds of objects a GitLabAgent refers to."""

    SECRET = "secrets"  # noqa: S105 (a resource name, not a password)
    CONFIG_MAP = "configmaps"


@dataclass(frozen=True, order=True)
class SourceRef:
    """A Secret or ConfigMap that a GitLabAgent refers to."""

    kind: SourceKind
    """Secret or ConfigMap."""
    namespace: str
    """Namespace (always the GitLabAgent's own)."""
    name: str
    """Object name."""

    @property
    def store_key(self) -> str:
        """The informer store key of the object."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Missing:
    """A referenced value that cannot be used; safe to show (never contains the value)."""

    reason: str
    """CamelCase condition reason, e.g. SecretNotFound."""
    message: str
    """What is wrong."""
    hint: str
    """What to do about it."""


def token_source(namespace: str, spec: GitLabAgentSpec) -> SourceRef:
    """The Secret holding the agent token."""
    return SourceRef(SourceKind.SECRET, namespace, spec.token_secret_ref.name)


def ca_source(namespace: str, ca: CaCertRef) -> tuple[SourceRef, str]:
    """The Secret or ConfigMap holding extra CA certificates, and the key in it."""
    if ca.secret_key_ref is not None:
        return SourceRef(SourceKind.SECRET, namespace, ca.secret_key_ref.name), ca.secret_key_ref.key
    assert ca.config_map_key_ref is not None  # the model guarantees exactly one
    return SourceRef(SourceKind.CONFIG_MAP, namespace, ca.config_map_key_ref.name), ca.config_map_key_ref.key


def sources_of(namespace: str, spec: GitLabAgentSpec) -> frozenset[SourceRef]:
    """Every object the agent's worker depends on (a change to any of them means: re-map)."""
    refs = {token_source(namespace, spec)}
    if spec.ca_cert is not None:
        refs.add(ca_source(namespace, spec.ca_cert)[0])
    return frozenset(refs)


def _decode_b64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def token_from_secret(secret: KubeObject | None, namespace: str, spec: GitLabAgentSpec) -> Secret | Missing:
    """The agent token from its Secret: `data[key]`, base64-decoded, one trailing newline ignored."""
    name, key = spec.token_secret_ref.name, spec.token_secret_ref.key
    where = f"Secret {namespace}/{name}"
    if secret is None:
        return Missing(
            "SecretNotFound",
            f"{where} does not exist",
            f"create it with the agent token under key {key!r} "
            f"(kubectl create secret generic {name} -n {namespace} --from-literal={key}=<token>); "
            "the agent starts by itself once it exists",
        )
    data = secret.get("data") or {}
    if key not in data:
        present = ", ".join(sorted(str(k) for k in data)) or "none"
        return Missing(
            "KeyNotFound",
            f"{where} has no key {key!r} (keys present: {present})",
            f"add the token under key {key!r}, or set spec.tokenSecretRef.key to the key that holds it",
        )
    raw = _decode_b64(data[key])
    if raw is None:
        return Missing(
            "TokenUnreadable", f"{where} key {key!r} is not valid base64 data", "recreate the Secret"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Missing("TokenInvalid", f"{where} key {key!r} is not UTF-8 text", "store the token as text")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        return Missing("TokenEmpty", f"{where} key {key!r} is empty", "put the agent token into it")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return Missing(
            "TokenInvalid",
            f"{where} key {key!r} contains whitespace or control characters",
            "store exactly the token GitLab showed when the agent was registered",
        )
    return Secret(text)


def ca_from_object(obj: KubeObject | None, source: SourceRef, key: str) -> bytes | Missing:
    """PEM CA certificates from a Secret (`data`) or a ConfigMap (`data` or `binaryData`)."""
    kind = "Secret" if source.kind is SourceKind.SECRET else "ConfigMap"
    where = f"{kind} {source.namespace}/{source.name}"
    if obj is None:
        return Missing(
            "CACertificateNotFound",
            f"{where} (spec.caCert) does not exist",
            f"create it with the PEM CA certificates under key {key!r}",
        )
    pem: bytes | None
    if source.kind is SourceKind.SECRET:
        pem = _decode_b64((obj.get("data") or {}).get(key))
    else:
        text = (obj.get("data") or {}).get(key)
        pem = text.encode() if isinstance(text, str) else _decode_b64((obj.get("binaryData") or {}).get(key))
    if pem is None:
        return Missing(
            "CACertificateNotFound",
            f"{where} has no usable key {key!r}",
            "add the PEM CA certificates under that key, or fix spec.caCert",
        )
    if _PEM_MARKER not in pem:
        return Missing(
            "CACertificateInvalid",
            f"{where} key {key!r} holds no PEM certificate",
            "it must contain one or more '-----BEGIN CERTIFICATE-----' blocks",
        )
    return pem


def worker_spec(key: AgentKey, spec: GitLabAgentSpec, token: Secret, ca_pem: bytes | None) -> WorkerSpec:
    """The desired worker of one GitLabAgent."""
    return WorkerSpec(
        id=key.worker_id,
        kas_address=spec.kas_address,
        token=token,
        tls=TlsSettings(
            ca_pem=ca_pem,
            server_name=spec.tls_server_name,
            insecure_skip_verify=spec.insecure_skip_tls_verify,
        ),
        kas_headers=tuple((h.name, h.value) for h in spec.kas_headers),
        proxy=ProxySettings(spec.proxy.url, spec.proxy.no_proxy) if spec.proxy is not None else None,
        identity=ServiceAccountRef(key.namespace, spec.service_account_name),
        tunnels=TunnelSettings(min_idle=spec.tunnels.min_idle, max=spec.tunnels.max),
        flavor=WireFlavor(spec.wire_flavor.value),
    )
