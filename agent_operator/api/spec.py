"""`spec` of a GitLabAgent: what one agent registration should run (agentk's flags, as a resource).

The apiserver enforces everything written here through the generated CRD (patterns, bounds, CEL rules),
so a bad spec is refused at `kubectl apply` time with the field's path; the model enforces the same rules
when the operator parses a resource.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field, model_validator
from pydantic.config import JsonDict

from agent_operator.api import base
from agent_operator.api.base import ApiModel, cel_rule, with_cel_rules
from agent_operator.api.constants import FluxMode, WireFlavor

KAS_ADDRESS: Final = r"^(grpc|grpcs|ws|wss)://[^\s/?#@]+(/[^\s#]*)?$"
"""agentk accepts exactly these four schemes (PROTOCOL.md §3.1); a host is required."""
PROXY_URL: Final = r"^https?://[^\s/?#@]+/?$"
"""An HTTP CONNECT proxy: http:// or https://, a host and port, no path and no credentials (a spec is no
place for a password: it is readable by whoever reads the resource and copied into kopf's annotation)."""
SERVER_NAME: Final = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"
"""A DNS name (or IPv4 address) for TLS verification."""
TLS_SCHEMES: Final = ("grpcs://", "wss://")

# Headers the transport sets itself: a user-supplied value would break the WebSocket handshake or the
# gRPC framing, so they are refused when the resource is applied instead of failing at connect time.
RESERVED_HEADERS: Final = (
    "connection",
    "content-length",
    "content-type",
    "host",
    "te",
    "transfer-encoding",
    "upgrade",
)
RESERVED_HEADER_PREFIXES: Final = ("grpc-", "sec-websocket-")
_RESERVED_LIST = ", ".join([*RESERVED_HEADERS, *(f"{p}*" for p in RESERVED_HEADER_PREFIXES)])

ObjectName = Annotated[
    str, Field(pattern=base.DNS1123_SUBDOMAIN, min_length=1, max_length=base.DNS1123_SUBDOMAIN_MAX)
]
DataKey = Annotated[str, Field(pattern=base.CONFIG_KEY, min_length=1, max_length=base.CONFIG_KEY_MAX)]
ServerName = Annotated[str, Field(pattern=SERVER_NAME, max_length=253)]


class TokenSecretRef(ApiModel):
    """The Secret, in the GitLabAgent's namespace, that holds the agent token."""

    name: ObjectName
    """Name of the Secret. Updating the Secret rotates the token without restarting anything."""
    key: DataKey = "token"
    """Key in the Secret's data whose value is the agent token (one trailing newline is ignored)."""


class KeyRef(ApiModel):
    """One key of a Secret or ConfigMap in the GitLabAgent's namespace."""

    name: ObjectName
    """Name of the object."""
    key: DataKey = "ca.crt"
    """Key in the object's data."""


class CaCertRef(ApiModel):
    """Where extra PEM CA certificates for kas come from: exactly one of secretKeyRef or configMapKeyRef."""

    model_config = with_cel_rules(
        cel_rule(
            "has(self.secretKeyRef) != has(self.configMapKeyRef)",
            "exactly one of secretKeyRef or configMapKeyRef must be set",
        )
    )

    secret_key_ref: KeyRef | None = None
    """A key of a Secret holding PEM CA certificates."""
    config_map_key_ref: KeyRef | None = None
    """A key of a ConfigMap holding PEM CA certificates."""

    @model_validator(mode="after")
    def _exactly_one(self) -> CaCertRef:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("exactly one of secretKeyRef or configMapKeyRef must be set")
        return self


def _is_reserved_header(name: str) -> bool:
    lowered = name.lower()
    return lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_HEADER_PREFIXES)


class SecretKeyRef(ApiModel):
    """One key of a Secret in the GitLabAgent's namespace. The Secret must opt in to this agent
    (annotation `agentk.dev/allowed-agents`, docs/security.md)."""

    name: ObjectName
    """Name of the Secret."""
    key: DataKey
    """Key in the Secret's data."""


class HeaderValueSource(ApiModel):
    """Where a header value comes from when it is secret."""

    secret_key_ref: SecretKeyRef
    """A key of a Secret holding the value (one trailing newline is ignored). Updating the Secret
    reconnects the agent with the new value."""


class KasHeader(ApiModel):
    """One extra header, as agentk's `--kas-header "Name: Value"`: exactly one of value or valueFrom."""

    model_config = with_cel_rules(
        cel_rule(
            f"!(self.name.lowerAscii() in {list(RESERVED_HEADERS)})"
            + "".join(f" && !self.name.lowerAscii().startsWith('{p}')" for p in RESERVED_HEADER_PREFIXES),
            f"this header is set by the transport itself and cannot be overridden ({_RESERVED_LIST})",
            field_path=".name",
            reason="FieldValueForbidden",
        ),
        cel_rule(
            "has(self.value) != has(self.valueFrom)",
            "exactly one of value or valueFrom must be set; put secret values in a Secret "
            "(valueFrom.secretKeyRef)",
        ),
    )

    name: Annotated[str, Field(pattern=base.HTTP_TOKEN, min_length=1, max_length=256)]
    """Header name: an HTTP token such as `X-Tenant`. Transport headers (Host, Upgrade, Sec-WebSocket-*,
    grpc-*, ...) are refused."""
    value: Annotated[str, Field(pattern=base.HEADER_VALUE, min_length=1, max_length=4096)] | None = None
    """Literal header value, for values that are not secret (the spec is readable by everyone who may read
    the resource); must not be empty or contain control characters."""
    value_from: HeaderValueSource | None = None
    """The header value from a Secret, for credentials (e.g. a gateway's API key)."""

    @model_validator(mode="after")
    def _not_reserved(self) -> KasHeader:
        if _is_reserved_header(self.name):
            raise ValueError(f"header {self.name!r} is set by the transport itself and cannot be overridden")
        if (self.value is None) == (self.value_from is None):
            raise ValueError("exactly one of value or valueFrom must be set")
        return self


class SecretRef(ApiModel):
    """A Secret in the GitLabAgent's namespace, opted in to this agent (annotation
    `agentk.dev/allowed-agents`, docs/security.md)."""

    name: ObjectName
    """Name of the Secret."""


class ProxySpec(ApiModel):
    """An explicit HTTP proxy for the connection to kas (instead of the operator's HTTPS_PROXY/NO_PROXY)."""

    model_config = with_cel_rules(
        cel_rule(
            "!self.url.contains('@')",
            "proxy.url must not contain credentials: put them in a Secret (keys username and password) "
            "named by proxy.credentialsSecretRef",
            field_path=".url",
        )
    )

    url: Annotated[str, Field(pattern=PROXY_URL, max_length=2048)]
    """`http://` or `https://` URL of the proxy (HTTP CONNECT), e.g. `http://proxy.internal:3128`; no
    credentials (see credentialsSecretRef)."""
    no_proxy: Annotated[str, Field(max_length=4096)] = ""
    """Comma-separated hosts, domains (`.example.com`) and CIDRs reached directly, as in NO_PROXY."""
    credentials_secret_ref: SecretRef | None = None
    """Secret with keys `username` and `password` (as a `kubernetes.io/basic-auth` Secret) for the proxy's
    Basic authentication. Updating the Secret reconnects the agent."""

    @model_validator(mode="before")
    @classmethod
    def _no_credentials_in_url(cls, data: object) -> object:
        # Before the pattern check, so the message says what to do instead.
        if isinstance(data, dict) and "@" in str(data.get("url", "")):
            raise ValueError(
                "proxy.url must not contain credentials: put them in a Secret (keys username and "
                "password) named by proxy.credentialsSecretRef"
            )
        return data


class TunnelsSpec(ApiModel):
    """Size of the reverse-tunnel pool: how many requests from kas can be served at once."""

    model_config = with_cel_rules(
        cel_rule("self.minIdle <= self.max", "minIdle must not be greater than max", field_path=".minIdle")
    )

    min_idle: Annotated[int, Field(ge=1, le=50)] = 2
    """Idle tunnels kept open, waiting for requests from kas (agentk's default: 2)."""
    max: Annotated[int, Field(ge=1, le=500)] = 500
    """Upper bound on idle plus busy tunnels (agentk's default: 500)."""

    @model_validator(mode="after")
    def _min_not_above_max(self) -> TunnelsSpec:
        if self.min_idle > self.max:
            raise ValueError("minIdle must not be greater than max")
        return self


def _tls_only(field: str, present: str) -> JsonDict:
    """TLS settings on a cleartext address are a mistake (probably the wrong scheme): say so early."""
    uses_tls = " || ".join(f"self.kasAddress.startsWith('{scheme}')" for scheme in TLS_SCHEMES)
    return cel_rule(
        f"!({present}) || {uses_tls}",
        f"{field} applies only to grpcs:// and wss:// kasAddress values",
        field_path=f".{field}",
    )


class FluxSpec(ApiModel):
    """The Flux integration: a push to a GitLab project makes Flux fetch that project at once."""

    enabled: bool = True
    """When a push to a GitLab project is reported by kas, request a reconcile of the Flux
    GitRepositories (source.toolkit.fluxcd.io/v1) of that project, in namespaces where this agent's
    ServiceAccount may patch GitRepositories, by setting their `reconcile.fluxcd.io/requestedAt`
    annotation. Runs only where Flux is installed; set false to opt out."""
    mode: FluxMode = FluxMode.REQUESTED_AT
    """How a push makes Flux fetch. `requestedAt` (default): patch the GitRepository's
    `reconcile.fluxcd.io/requestedAt` annotation, as the ServiceAccount. `receiver`: upstream agentk's way,
    a generic Flux Receiver (and its token Secret) per GitRepository, created and removed by the agent,
    and a POST to notification-controller's webhook; needs notification-controller, and the webhook URL
    from the agent's configuration must be one the operator allows (--flux-webhook-receiver-urls)."""


_FLUX_DEFAULT: JsonDict = {"default": {"enabled": True, "mode": FluxMode.REQUESTED_AT.value}}
"""Written out in full, so the stored object shows the effective setting when spec.flux is omitted."""

_TUNNELS_DEFAULT: JsonDict = {"default": TunnelsSpec().model_dump(mode="json", by_alias=True)}
"""Written out in full in the schema, so the apiserver stores the effective pool size even when
spec.tunnels is omitted (a nested `default: {}` would not be filled in before the CEL rule runs)."""


class GitLabAgentSpec(ApiModel):
    """Desired state of one GitLab agent: where kas is, how to authenticate, and whose RBAC to use."""

    model_config = with_cel_rules(
        _tls_only("caCert", "has(self.caCert)"),
        _tls_only("tlsServerName", "has(self.tlsServerName)"),
        _tls_only("insecureSkipTLSVerify", "has(self.insecureSkipTLSVerify) && self.insecureSkipTLSVerify"),
    )

    kas_address: Annotated[str, Field(pattern=KAS_ADDRESS, max_length=2048)]
    """Address of GitLab's agent server (kas): a `grpc://`, `grpcs://`, `ws://` or `wss://` URL.
    GitLab.com: `wss://kas.gitlab.com`; self-managed: `wss://gitlab.example.com/-/kubernetes-agent/`
    (keep the trailing slash)."""
    token_secret_ref: TokenSecretRef
    """Secret in this namespace holding the agent token. The token never appears in status, events,
    logs or metrics."""
    ca_cert: CaCertRef | None = None
    """Extra PEM CA certificates trusted for kas, in addition to the system roots (grpcs:// and wss://
    only)."""
    tls_server_name: ServerName | None = None
    """Server name for TLS (SNI and certificate verification) instead of kasAddress's host (grpcs:// and
    wss:// only)."""
    insecure_skip_tls_verify: bool = Field(default=False, alias="insecureSkipTLSVerify")
    """Do not verify kas's TLS certificate (grpcs:// and wss:// only). For testing; the status warns
    while it is on."""
    kas_headers: Annotated[list[KasHeader], Field(max_length=32)] = Field(default_factory=list)
    """Extra headers for kas, as agentk's `--kas-header`: HTTP headers on the WebSocket handshake
    (ws://, wss://) or gRPC metadata on every call (grpc://, grpcs://)."""
    proxy: ProxySpec | None = None
    """Explicit HTTP proxy for kas; when unset, the operator's HTTPS_PROXY/NO_PROXY apply, as for agentk."""
    service_account_name: ObjectName = "default"
    """ServiceAccount in this namespace whose RBAC applies to every Kubernetes API request that arrives
    through the agent's tunnel: the agent acts as this ServiceAccount."""
    tunnels: TunnelsSpec = Field(default_factory=TunnelsSpec, json_schema_extra=_TUNNELS_DEFAULT)
    """Reverse-tunnel pool size."""
    wire_flavor: WireFlavor = WireFlavor.GITLAB
    """Protocol flavor of kas: `gitlab` for GitLab's kas, `plural` for the Plural fork."""
    suspend: bool = False
    """Disconnect the agent from kas while keeping the resource; set back to false to reconnect."""
    flux: FluxSpec = Field(default_factory=FluxSpec, json_schema_extra=_FLUX_DEFAULT)
    """The Flux integration (on by default where Flux is installed): pushes to GitLab projects trigger
    the reconcile of their GitRepositories."""

    @model_validator(mode="after")
    def _tls_settings_need_tls(self) -> GitLabAgentSpec:
        if self.kas_address.startswith(TLS_SCHEMES):
            return self
        for name, is_set in (
            ("caCert", self.ca_cert is not None),
            ("tlsServerName", self.tls_server_name is not None),
            ("insecureSkipTLSVerify", self.insecure_skip_tls_verify),
        ):
            if is_set:
                raise ValueError(f"{name} applies only to grpcs:// and wss:// kasAddress values")
        return self
