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
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

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


ALLOWED_AGENTS_ANNOTATION: Final = "agentk.dev/allowed-agents"
"""Annotation by which a Secret opts in to GitLabAgents: a comma-separated list of GitLabAgent names of its
namespace (`*` = every GitLabAgent there). Only opted-in Secrets are sent to kas or a proxy (token,
kasHeaders values, proxy credentials): whoever may create a GitLabAgent also chooses its kas, so without
the opt-in they could send any Secret of the namespace (a ServiceAccount's token) to themselves."""
REFUSED_SECRET_TYPES: Final = ("kubernetes.io/service-account-token", "bootstrap.kubernetes.io/token")
"""Secrets that are credentials of the cluster itself: never sent to kas, whatever they are annotated with."""
PROXY_USERNAME_KEY: Final = "username"
"""Key of spec.proxy.credentialsSecretRef's Secret holding the user name (as kubernetes.io/basic-auth)."""
PROXY_PASSWORD_KEY: Final = "password"  # noqa: S105 (a key name, not a password)
"""Key of spec.proxy.credentialsSecretRef's Secret holding the password (as kubernetes.io/basic-auth)."""
_USERINFO_SAFE: Final = "!$&'()*+,;="
"""RFC 3986 sub-delims: kept as they are in a URL's user info; everything else is percent-encoded."""


class RefKind(enum.Enum):
    """What a referenced object is for; the status reports each kind under its own condition."""

    TOKEN = "token"  # noqa: S105 (a kind of reference, not a password)
    CA_CERT = "caCert"
    CREDENTIAL = "credential"
    """A kasHeaders value or the proxy credentials."""


@dataclass(frozen=True)
class Unresolved:
    """Why the agent cannot run: the first referenced value that cannot be used."""

    kind: RefKind
    """Which reference it is."""
    missing: Missing
    """What is wrong with it (safe to show)."""


def token_source(namespace: str, spec: GitLabAgentSpec) -> SourceRef:
    """The Secret holding the agent token."""
    return SourceRef(SourceKind.SECRET, namespace, spec.token_secret_ref.name)


def ca_source(namespace: str, ca: CaCertRef) -> tuple[SourceRef, str]:
    """The Secret or ConfigMap holding extra CA certificates, and the key in it."""
    if ca.secret_key_ref is not None:
        return SourceRef(SourceKind.SECRET, namespace, ca.secret_key_ref.name), ca.secret_key_ref.key
    assert ca.config_map_key_ref is not None  # the model guarantees exactly one
    return SourceRef(SourceKind.CONFIG_MAP, namespace, ca.config_map_key_ref.name), ca.config_map_key_ref.key


def _secret(namespace: str, name: str) -> SourceRef:
    return SourceRef(SourceKind.SECRET, namespace, name)


def credential_sources(namespace: str, spec: GitLabAgentSpec) -> frozenset[SourceRef]:
    """The Secrets whose values leave the cluster (to kas or the proxy): each must opt in to the agent."""
    refs = {token_source(namespace, spec)}
    for header in spec.kas_headers:
        if header.value_from is not None:
            refs.add(_secret(namespace, header.value_from.secret_key_ref.name))
    if spec.proxy is not None and spec.proxy.credentials_secret_ref is not None:
        refs.add(_secret(namespace, spec.proxy.credentials_secret_ref.name))
    return frozenset(refs)


def sources_of(namespace: str, spec: GitLabAgentSpec) -> frozenset[SourceRef]:
    """Every object the agent's worker depends on (a change to any of them means: re-map)."""
    refs = set(credential_sources(namespace, spec))
    if spec.ca_cert is not None:
        refs.add(ca_source(namespace, spec.ca_cert)[0])
    return frozenset(refs)


SourceUses = dict[SourceRef, frozenset[str] | None]
"""Objects GitLabAgents refer to, each with the agents it must have opted in to (None: no opt-in)."""


def add_uses(uses: SourceUses, agent: AgentKey, spec: GitLabAgentSpec) -> None:
    """Add what `agent` refers to: its credentials need its opt-in, anything else (a CA bundle) none."""
    credentials = credential_sources(agent.namespace, spec)
    for source in sources_of(agent.namespace, spec):
        needs = uses.get(source, frozenset())
        if needs is not None:
            uses[source] = needs | {agent.name} if source in credentials else None


def allowed_agents(obj: KubeObject) -> frozenset[str]:
    """The GitLabAgent names a Secret opted in to (its ALLOWED_AGENTS_ANNOTATION)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    listed = str(annotations.get(ALLOWED_AGENTS_ANNOTATION, ""))
    return frozenset(name.strip() for name in listed.split(",") if name.strip())


def opted_in(obj: KubeObject, agent: str) -> bool:
    """True when the Secret may be used by GitLabAgent `agent` of its namespace."""
    if obj.get("type") in REFUSED_SECRET_TYPES:
        return False
    names = allowed_agents(obj)
    return agent in names or "*" in names


def _usable(
    secret: KubeObject | None, agent: AgentKey, name: str, field: str, create: str = "create it"
) -> Missing | None:
    """None when the Secret exists and opted in to `agent`; otherwise why not, with the fix."""
    where = f"Secret {agent.namespace}/{name} ({field})"
    if secret is None:
        return Missing(
            "SecretNotFound",
            f"{where} does not exist",
            f"{create}, and let this GitLabAgent use it: {_annotate_command(agent, name)}; "
            "the agent starts by itself once both are done",
        )
    if secret.get("type") in REFUSED_SECRET_TYPES:
        return Missing(
            "SecretTypeRefused",
            f"{where} is of type {secret.get('type')}: credentials of the cluster are never sent to kas",
            "name a Secret that holds the value GitLab gave you",
        )
    if not opted_in(secret, agent.name):
        keep = " --overwrite (keep the names already listed)" if allowed_agents(secret) else ""
        return Missing(
            "SecretNotOptedIn",
            f"{where} does not allow GitLabAgent {agent.name!r} to use it "
            f"(annotation {ALLOWED_AGENTS_ANNOTATION})",
            "whoever owns the Secret lets this GitLabAgent use it with: "
            + _annotate_command(agent, name)
            + keep,
        )
    return None


def _annotate_command(agent: AgentKey, name: str) -> str:
    return f"kubectl -n {agent.namespace} annotate secret {name} {ALLOWED_AGENTS_ANNOTATION}={agent.name}"


def _decode_b64(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _single_line(secret: KubeObject, where: str, key: str, what: str) -> str | Missing:
    """`data[key]` of an opted-in Secret as text: base64-decoded, one trailing newline ignored, not empty,
    no control characters. Messages name only `key` (never other keys of the Secret, never the value)."""
    data = secret.get("data") or {}
    if key not in data:
        return Missing("KeyNotFound", f"{where} has no key {key!r}", f"put the {what} under key {key!r}")
    raw = _decode_b64(data[key])
    if raw is None:
        return Missing(
            "SecretUnreadable", f"{where} key {key!r} is not valid base64 data", "recreate the Secret"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Missing("SecretInvalid", f"{where} key {key!r} is not UTF-8 text", f"store the {what} as text")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        return Missing("SecretEmpty", f"{where} key {key!r} is empty", f"put the {what} into it")
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text):
        return Missing(
            "SecretInvalid", f"{where} key {key!r} contains control characters", f"store the {what} alone"
        )
    return text


def token_from_secret(secret: KubeObject | None, agent: AgentKey, spec: GitLabAgentSpec) -> Secret | Missing:
    """The agent token from its opted-in Secret: `data[key]`, base64-decoded, whitespace around it ignored."""
    name, key = spec.token_secret_ref.name, spec.token_secret_ref.key
    create = (
        f"create it with the agent token under key {key!r} "
        f"(kubectl -n {agent.namespace} create secret generic {name} --from-literal={key}=<token>)"
    )
    refused = _usable(secret, agent, name, "spec.tokenSecretRef", create)
    if refused is not None:
        return refused
    assert secret is not None  # _usable refuses None
    where = f"Secret {agent.namespace}/{name}"
    text = _single_line(secret, where, key, "agent token")
    if isinstance(text, Missing):
        return _token_reason(text)
    # Tokens are opaque (GitLab 18's structured `glagent-<base64>.01.<suffix>` too): only the whitespace
    # around one, as an editor or `echo` leaves it, is not part of it (PROTOCOL.md §18).
    text = text.strip()
    if not text:
        return Missing(
            "TokenEmpty", f"{where} key {key!r} holds only whitespace", "put the agent token into it"
        )
    if any(c.isspace() for c in text):
        return Missing(
            "TokenInvalid",
            f"{where} key {key!r} contains whitespace",
            "store exactly the token GitLab showed when the agent was registered",
        )
    return Secret(text)


_TOKEN_REASONS: Final = {
    "SecretUnreadable": "TokenUnreadable",
    "SecretInvalid": "TokenInvalid",
    "SecretEmpty": "TokenEmpty",
}


def _token_reason(missing: Missing) -> Missing:
    """The token's own condition reasons (documented in docs/operations.md) for a value problem."""
    return replace(missing, reason=_TOKEN_REASONS.get(missing.reason, missing.reason))


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


def header_value(
    secret: KubeObject | None, agent: AgentKey, spec: GitLabAgentSpec, index: int
) -> str | Missing:
    """The value of spec.kasHeaders[index] from its opted-in Secret (the header must use valueFrom)."""
    header = spec.kas_headers[index]
    assert header.value_from is not None  # callers pass only valueFrom headers
    ref = header.value_from.secret_key_ref
    field = f"spec.kasHeaders[{index}].valueFrom"
    refused = _usable(secret, agent, ref.name, field)
    if refused is not None:
        return refused
    assert secret is not None  # _usable refuses None
    where = f"Secret {agent.namespace}/{ref.name} ({field})"
    text = _single_line(secret, where, ref.key, f"value of header {header.name}")
    if isinstance(text, str) and len(text) > _MAX_HEADER_VALUE:
        return Missing(
            "SecretInvalid", f"{where} key {ref.key!r} is longer than {_MAX_HEADER_VALUE} bytes", ""
        )
    return text


_MAX_HEADER_VALUE: Final = 4096
"""As spec.kasHeaders[].value."""


def proxy_credentials(secret: KubeObject | None, agent: AgentKey, name: str) -> tuple[str, str] | Missing:
    """(username, password) from spec.proxy.credentialsSecretRef's opted-in Secret `name`."""
    field = "spec.proxy.credentialsSecretRef"
    create = (
        f"create it (kubectl -n {agent.namespace} create secret generic {name} "
        f"--type=kubernetes.io/basic-auth --from-literal={PROXY_USERNAME_KEY}=<user> "
        f"--from-literal={PROXY_PASSWORD_KEY}=<password>)"
    )
    refused = _usable(secret, agent, name, field, create)
    if refused is not None:
        return refused
    assert secret is not None  # _usable refuses None
    where = f"Secret {agent.namespace}/{name} ({field})"
    username = _single_line(secret, where, PROXY_USERNAME_KEY, "proxy user name")
    if isinstance(username, Missing):
        return username
    if ":" in username:
        return Missing(
            "SecretInvalid",
            f"{where} key {PROXY_USERNAME_KEY!r} contains ':'",
            "Basic authentication cannot carry a user name with ':'",
        )
    password = _single_line(secret, where, PROXY_PASSWORD_KEY, "proxy password")
    if isinstance(password, Missing):
        return password
    return username, password


def _with_userinfo(url: str, credentials: tuple[str, str] | None) -> str:
    """The proxy URL with the credentials as its user info (how both grpc core and the WebSocket dialer
    take proxy credentials); percent-encoded where the URL syntax needs it."""
    if credentials is None:
        return url
    parts = urlsplit(url)
    username, password = (quote(part, safe=_USERINFO_SAFE) for part in credentials)
    return urlunsplit(parts._replace(netloc=f"{username}:{password}@{parts.netloc}"))


def resolve(
    key: AgentKey, spec: GitLabAgentSpec, objects: Mapping[SourceRef, KubeObject | None]
) -> WorkerSpec | Unresolved:
    """The WorkerSpec from the spec and the objects it refers to (`objects` holds every one of
    sources_of(); a missing object is None), or the first reference that cannot be used."""
    token = token_from_secret(objects.get(token_source(key.namespace, spec)), key, spec)
    if isinstance(token, Missing):
        return Unresolved(RefKind.TOKEN, token)
    ca_pem: bytes | None = None
    if spec.ca_cert is not None:
        source, data_key = ca_source(key.namespace, spec.ca_cert)
        ca = ca_from_object(objects.get(source), source, data_key)
        if isinstance(ca, Missing):
            return Unresolved(RefKind.CA_CERT, ca)
        ca_pem = ca
    values: list[str] = []
    for index, header in enumerate(spec.kas_headers):
        if header.value_from is None:
            assert header.value is not None  # the model guarantees exactly one
            values.append(header.value)
            continue
        value = header_value(
            objects.get(_secret(key.namespace, header.value_from.secret_key_ref.name)), key, spec, index
        )
        if isinstance(value, Missing):
            return Unresolved(RefKind.CREDENTIAL, value)
        values.append(value)
    credentials: tuple[str, str] | None = None
    if spec.proxy is not None and spec.proxy.credentials_secret_ref is not None:
        name = spec.proxy.credentials_secret_ref.name
        found = proxy_credentials(objects.get(_secret(key.namespace, name)), key, name)
        if isinstance(found, Missing):
            return Unresolved(RefKind.CREDENTIAL, found)
        credentials = found
    return worker_spec(key, spec, token, ca_pem, header_values=tuple(values), proxy_credentials=credentials)


def worker_spec(
    key: AgentKey,
    spec: GitLabAgentSpec,
    token: Secret,
    ca_pem: bytes | None,
    *,
    header_values: tuple[str, ...] | None = None,
    proxy_credentials: tuple[str, str] | None = None,
) -> WorkerSpec:
    """The desired worker of one GitLabAgent. `header_values` holds one value per spec.kasHeaders entry
    (those from Secrets resolved); None = the literal values (every header must have one)."""
    if header_values is None:
        header_values = tuple(h.value or "" for h in spec.kas_headers)
        assert all(header_values), "kasHeaders from Secrets need header_values"
    proxy = None
    if spec.proxy is not None:
        proxy = ProxySettings(_with_userinfo(spec.proxy.url, proxy_credentials), spec.proxy.no_proxy)
    return WorkerSpec(
        id=key.worker_id,
        kas_address=spec.kas_address,
        token=token,
        tls=TlsSettings(
            ca_pem=ca_pem,
            server_name=spec.tls_server_name,
            insecure_skip_verify=spec.insecure_skip_tls_verify,
        ),
        kas_headers=tuple(zip((h.name for h in spec.kas_headers), header_values, strict=True)),
        proxy=proxy,
        identity=ServiceAccountRef(key.namespace, spec.service_account_name),
        tunnels=TunnelSettings(min_idle=spec.tunnels.min_idle, max=spec.tunnels.max),
        flavor=WireFlavor(spec.wire_flavor.value),
        tenant=key.namespace,  # every agent of a namespace shares its caps (policy.TenantBudget)
        flux_enabled=spec.flux.enabled,
        flux_mode=spec.flux.mode,
    )
