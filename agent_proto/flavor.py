"""Wire flavour: GitLab's `gitlab.agent.*` names or the Plural fork's `plural.agent.*`.

See PROTOCOL.md §2.3 and §7.5.

Why this module exists: the package prefix shows up on the wire in exactly three places that must match
the peer: gRPC method paths, the service names agentk advertises in its AgentDescriptor, and the Any type
URL of HeaderExtra. Of the messages agentk and kas exchange, only the fork's ImpersonationConfig is
numbered differently (its kas-internal ConnectedAgentInfo differs too, but never reaches an agent), so
only GitLab's code is generated in full; this module derives the fork's names at run time
(from the generated descriptors, so a typo cannot creep in) and packs/unpacks HeaderExtra with the right
field numbering into one flavour-neutral ImpersonationConfig.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cache

from google.protobuf import any_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as configuration_rpc
from agent_proto.gitlab.agent.agent_registrar.rpc import rpc_pb2 as registrar_rpc
from agent_proto.gitlab.agent.kubernetes_api.rpc import rpc_pb2 as gitlab_k8s_rpc
from agent_proto.gitlab.agent.reverse_tunnel.info import info_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from agent_proto.plural.agent.kubernetes_api.rpc import rpc_pb2 as plural_k8s_rpc

TYPE_URL_PREFIX = "type.googleapis.com/"


class WireFlavor(enum.StrEnum):
    """Which peer we talk to: GitLab's kas/agentk, or the Plural fork's."""

    GITLAB = "gitlab"
    PLURAL = "plural"


class HeaderExtraError(ValueError):
    """A HeaderExtra cannot be packed or unpacked (undecodable bytes, unsupported content)."""


class HeaderExtraTypeError(HeaderExtraError):
    """The Any does not hold this flavour's HeaderExtra: the peer speaks another flavour, or sent junk."""


@dataclass(slots=True)
class ImpersonationConfig:
    """Who kas asks the agent to impersonate, independent of the flavour's field numbering.

    The fork has no `extra` (and its `roles` are ignored by its agentk, so they are not modelled).
    """

    username: str = ""
    uid: str = ""
    groups: list[str] = field(default_factory=list)
    extra: dict[str, list[str]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """True when nothing is to be impersonated (PROTOCOL.md §7.5 "non-empty")."""
        return not (self.username or self.uid or self.groups or self.extra)


@dataclass(frozen=True, slots=True)
class AdvertisedService:
    """One entry of the AgentDescriptor: full service name and bare method names."""

    name: str
    methods: tuple[str, ...]


def _service_name(flavor: WireFlavor, service: ServiceDescriptor) -> str:
    gitlab_name: str = service.full_name
    return flavor.value + gitlab_name.removeprefix(WireFlavor.GITLAB.value)


def _method_path(flavor: WireFlavor, service: ServiceDescriptor, method: str) -> str:
    return f"/{_service_name(flavor, service)}/{service.methods_by_name[method].name}"


_CONFIGURATION = configuration_rpc.DESCRIPTOR.services_by_name["AgentConfiguration"]
_REGISTRAR = registrar_rpc.DESCRIPTOR.services_by_name["AgentRegistrar"]
_TUNNEL = tunnel_rpc.DESCRIPTOR.services_by_name["ReverseTunnel"]
_KUBERNETES_API = gitlab_k8s_rpc.DESCRIPTOR.services_by_name["KubernetesApi"]


@dataclass(frozen=True, slots=True)
class WireNames:
    """Everything on the wire that depends on the flavour. Get one with `wire_names(flavor)`."""

    flavor: WireFlavor
    get_configuration_path: str
    register_path: str
    connect_path: str
    make_request_path: str
    kubernetes_api_service: str
    header_extra_type_url: str

    @property
    def advertised_services(self) -> tuple[AdvertisedService, ...]:
        """What agentk offers through its tunnels; kas matches these strings exactly."""
        return (AdvertisedService(self.kubernetes_api_service, ("MakeRequest",)),)

    def agent_descriptor(self) -> info_pb2.AgentDescriptor:
        """The descriptor agentk sends as the first frame of every tunnel."""
        return info_pb2.AgentDescriptor(
            services=[
                info_pb2.Service(name=s.name, methods=[info_pb2.Method(name=m) for m in s.methods])
                for s in self.advertised_services
            ]
        )

    def pack_header_extra(self, imp: ImpersonationConfig) -> any_pb2.Any:
        """HeaderExtra for grpctool.HttpRequest.Header.extra, in this flavour's numbering."""
        if self.flavor is WireFlavor.PLURAL:
            if imp.extra:
                raise HeaderExtraError("the plural wire flavour cannot carry impersonation extra")
            plural = plural_k8s_rpc.HeaderExtra(
                imp_config=plural_k8s_rpc.ImpersonationConfig(
                    username=imp.username, groups=imp.groups, uid=imp.uid
                )
            )
            value = plural.SerializeToString(deterministic=True)
        else:
            gitlab = gitlab_k8s_rpc.HeaderExtra(
                imp_config=gitlab_k8s_rpc.ImpersonationConfig(
                    username=imp.username,
                    groups=imp.groups,
                    uid=imp.uid,
                    extra=[gitlab_k8s_rpc.ExtraKeyVal(key=k, val=v) for k, v in imp.extra.items()],
                )
            )
            value = gitlab.SerializeToString(deterministic=True)
        return any_pb2.Any(type_url=self.header_extra_type_url, value=value)

    def unpack_header_extra(self, extra: any_pb2.Any) -> ImpersonationConfig:
        """Decode HeaderExtra, refusing any other message type (as agentk does).

        The message name after the last "/" must be exactly this flavour's HeaderExtra; like Go's
        anypb, the host part of the URL is not interpreted. Raises HeaderExtraTypeError on a mismatch
        and HeaderExtraError on undecodable bytes.
        """
        expected = self.header_extra_type_url.removeprefix(TYPE_URL_PREFIX)
        slash = extra.type_url.rfind("/")
        if slash < 0 or extra.type_url[slash + 1 :] != expected:
            raise HeaderExtraTypeError(
                f"HeaderExtra has type URL {extra.type_url!r}, expected {self.header_extra_type_url!r}"
            )
        try:
            if self.flavor is WireFlavor.PLURAL:
                p = plural_k8s_rpc.HeaderExtra.FromString(extra.value).imp_config
                return ImpersonationConfig(username=p.username, uid=p.uid, groups=list(p.groups))
            g = gitlab_k8s_rpc.HeaderExtra.FromString(extra.value).imp_config
        except DecodeError as e:
            raise HeaderExtraError(f"cannot decode {expected}: {e}") from e
        merged: dict[str, list[str]] = {}
        for kv in g.extra:
            merged.setdefault(kv.key, []).extend(kv.val)
        return ImpersonationConfig(username=g.username, uid=g.uid, groups=list(g.groups), extra=merged)


def wire_names(flavor: WireFlavor | str) -> WireNames:
    """The wire names of a flavour (accepts the enum or its string value, e.g. from the CRD)."""
    return _wire_names(WireFlavor(flavor))


@cache
def _wire_names(f: WireFlavor) -> WireNames:
    header_extra: str = gitlab_k8s_rpc.HeaderExtra.DESCRIPTOR.full_name
    return WireNames(
        flavor=f,
        get_configuration_path=_method_path(f, _CONFIGURATION, "GetConfiguration"),
        register_path=_method_path(f, _REGISTRAR, "Register"),
        connect_path=_method_path(f, _TUNNEL, "Connect"),
        make_request_path=_method_path(f, _KUBERNETES_API, "MakeRequest"),
        kubernetes_api_service=_service_name(f, _KUBERNETES_API),
        header_extra_type_url=TYPE_URL_PREFIX + f.value + header_extra.removeprefix(WireFlavor.GITLAB.value),
    )
