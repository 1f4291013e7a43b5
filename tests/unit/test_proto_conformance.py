"""The generated protobuf code against the tables of PROTOCOL.md, plus the hand-written helpers around it.

Why: the .proto files are written by hand from PROTOCOL.md; one wrong field number or package name and a
real kas or agentk silently misreads us. Every method path and every tabulated field (§4, §5, §6, §7, §9,
§11, §17) is restated here as data and compared with the descriptors protoc generated. The coverage tests
at the end make sure no message or service exists in agent_proto without a row here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

import agent_proto
from agent_proto import http_headers, ordering
from agent_proto.flavor import (
    AdvertisedService,
    HeaderExtraError,
    HeaderExtraTypeError,
    ImpersonationConfig,
    WireFlavor,
    wire_names,
)
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_proto.gitlab.agent.entity import entity_pb2
from agent_proto.gitlab.agent.grpctool import grpctool_pb2
from agent_proto.gitlab.agent.kas import kas_pb2
from agent_proto.gitlab.agent.kubernetes_api.rpc import rpc_pb2 as k8s_rpc
from agent_proto.gitlab.agent.reverse_tunnel.info import info_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from agent_proto.plural.agent.kubernetes_api.rpc import rpc_pb2 as plural_k8s_rpc

PROTO_ROOT = Path(agent_proto.__file__).parent
PROTO_FILES = sorted(PROTO_ROOT.rglob("*.proto"))
# Every generated module, found on disk so that a new .proto cannot escape the coverage tests below.
OUR_FILES: list[FileDescriptor] = [
    importlib.import_module(".".join(p.relative_to(PROTO_ROOT.parent).with_suffix("").parts)).DESCRIPTOR
    for p in sorted(PROTO_ROOT.rglob("*_pb2.py"))
]

# Short package names for the tables below.
PT = "gitlab.agent.prototool"
GT = "gitlab.agent.grpctool"
EN = "gitlab.agent.entity"
AC = "gitlab.agent.agent_configuration.rpc"
AR = "gitlab.agent.agent_registrar.rpc"
RT = "gitlab.agent.reverse_tunnel.rpc"
RI = "gitlab.agent.reverse_tunnel.info"
KA = "gitlab.agent.kubernetes_api.rpc"
PK = "plural.agent.kubernetes_api.rpc"
CF = "gitlab.agent.agentcfg"
TR = "gitlab.agent.agent_tracker"
KS = "gitlab.agent.kas"
FX = "gitlab.agent.flux.rpc"
EV = "gitlab.agent.event"
NO = "gitlab.agent.notifications.rpc"
GY = "gitaly"
VALUES_MAP = f"map<string, {PT}.Values>"
DURATION = "google.protobuf.Duration"

# ---------------------------------------------------------------------------------------------------
# Methods (§2.2, §6, §7.1, §11.3, §17.2, §17.7): service, method, request, response, streaming, :path
# ---------------------------------------------------------------------------------------------------

METHODS: list[tuple[str, str, str, str, str, str]] = [
    (
        f"{AC}.AgentConfiguration",
        "GetConfiguration",
        f"{AC}.ConfigurationRequest",
        f"{AC}.ConfigurationResponse",
        "server-streaming",
        "/gitlab.agent.agent_configuration.rpc.AgentConfiguration/GetConfiguration",
    ),
    (
        f"{AR}.AgentRegistrar",
        "Register",
        f"{AR}.RegisterRequest",
        f"{AR}.RegisterResponse",
        "unary",
        "/gitlab.agent.agent_registrar.rpc.AgentRegistrar/Register",
    ),
    (
        f"{RT}.ReverseTunnel",
        "Connect",
        f"{RT}.ConnectRequest",
        f"{RT}.ConnectResponse",
        "bidi",
        "/gitlab.agent.reverse_tunnel.rpc.ReverseTunnel/Connect",
    ),
    (
        f"{KA}.KubernetesApi",
        "MakeRequest",
        f"{GT}.HttpRequest",
        f"{GT}.HttpResponse",
        "bidi",
        "/gitlab.agent.kubernetes_api.rpc.KubernetesApi/MakeRequest",
    ),
    (
        f"{TR}.rpc.AgentTracker",
        "GetConnectedAgents",
        f"{TR}.rpc.GetConnectedAgentsRequest",
        f"{TR}.rpc.GetConnectedAgentsResponse",
        "unary",
        "/gitlab.agent.agent_tracker.rpc.AgentTracker/GetConnectedAgents",
    ),
    (
        f"{FX}.GitLabFlux",
        "ReconcileProjects",
        f"{FX}.ReconcileProjectsRequest",
        f"{FX}.ReconcileProjectsResponse",
        "server-streaming",
        "/gitlab.agent.flux.rpc.GitLabFlux/ReconcileProjects",
    ),
    (
        f"{NO}.Notifications",
        "GitPushEvent",
        f"{NO}.GitPushEventRequest",
        f"{NO}.GitPushEventResponse",
        "unary",
        "/gitlab.agent.notifications.rpc.Notifications/GitPushEvent",
    ),
    # Gitaly, as GitLab's kas calls it (GITLAB-INTERNAL-API.md §5); served by tests/support/gitaly.py
    (
        f"{GY}.SmartHTTPService",
        "InfoRefsUploadPack",
        f"{GY}.InfoRefsRequest",
        f"{GY}.InfoRefsResponse",
        "server-streaming",
        "/gitaly.SmartHTTPService/InfoRefsUploadPack",
    ),
    (
        f"{GY}.CommitService",
        "TreeEntry",
        f"{GY}.TreeEntryRequest",
        f"{GY}.TreeEntryResponse",
        "server-streaming",
        "/gitaly.CommitService/TreeEntry",
    ),
]

STREAMING = {"unary": (False, False), "server-streaming": (False, True), "bidi": (True, True)}

# Wire names per flavour (§2.2, §2.3, §6.3.1, §7.5), through agent_proto.flavor.
FLAVOR_NAMES: list[tuple[WireFlavor, str, str]] = [
    (
        WireFlavor.GITLAB,
        "get_configuration_path",
        "/gitlab.agent.agent_configuration.rpc.AgentConfiguration/GetConfiguration",
    ),
    (WireFlavor.GITLAB, "register_path", "/gitlab.agent.agent_registrar.rpc.AgentRegistrar/Register"),
    (WireFlavor.GITLAB, "connect_path", "/gitlab.agent.reverse_tunnel.rpc.ReverseTunnel/Connect"),
    (WireFlavor.GITLAB, "make_request_path", "/gitlab.agent.kubernetes_api.rpc.KubernetesApi/MakeRequest"),
    (WireFlavor.GITLAB, "kubernetes_api_service", "gitlab.agent.kubernetes_api.rpc.KubernetesApi"),
    (
        WireFlavor.GITLAB,
        "header_extra_type_url",
        "type.googleapis.com/gitlab.agent.kubernetes_api.rpc.HeaderExtra",
    ),
    (
        WireFlavor.PLURAL,
        "get_configuration_path",
        "/plural.agent.agent_configuration.rpc.AgentConfiguration/GetConfiguration",
    ),
    (WireFlavor.PLURAL, "register_path", "/plural.agent.agent_registrar.rpc.AgentRegistrar/Register"),
    (WireFlavor.PLURAL, "connect_path", "/plural.agent.reverse_tunnel.rpc.ReverseTunnel/Connect"),
    (WireFlavor.PLURAL, "make_request_path", "/plural.agent.kubernetes_api.rpc.KubernetesApi/MakeRequest"),
    (WireFlavor.PLURAL, "kubernetes_api_service", "plural.agent.kubernetes_api.rpc.KubernetesApi"),
    (
        WireFlavor.PLURAL,
        "header_extra_type_url",
        "type.googleapis.com/plural.agent.kubernetes_api.rpc.HeaderExtra",
    ),
]

# ---------------------------------------------------------------------------------------------------
# Fields: message -> [(number, name, type)]. Type is "string", "repeated X", "optional X" (proto3
# optional, presence matters), "map<K, V>" or a message/enum full name. Oneof membership is in ONEOFS.
# ---------------------------------------------------------------------------------------------------

FIELDS: dict[str, list[tuple[int, str, str]]] = {
    # §4.1 prototool
    f"{PT}.Values": [(1, "value", "repeated string")],
    f"{PT}.HttpRequest": [
        (1, "method", "string"),
        (2, "header", VALUES_MAP),
        (3, "url_path", "string"),
        (4, "query", VALUES_MAP),
    ],
    f"{PT}.HttpResponse": [(1, "status_code", "int32"), (2, "status", "string"), (3, "header", VALUES_MAP)],
    # §4.2 grpctool
    f"{GT}.HttpRequest": [
        (1, "header", f"{GT}.HttpRequest.Header"),
        (2, "data", f"{GT}.HttpRequest.Data"),
        (3, "trailer", f"{GT}.HttpRequest.Trailer"),
        (4, "upgradeData", f"{GT}.HttpRequest.UpgradeData"),
    ],
    f"{GT}.HttpRequest.Header": [
        (1, "request", f"{PT}.HttpRequest"),
        (2, "extra", "google.protobuf.Any"),
        (3, "content_length", "optional int64"),
    ],
    f"{GT}.HttpRequest.Data": [(1, "data", "bytes")],
    f"{GT}.HttpRequest.UpgradeData": [(1, "data", "bytes")],
    f"{GT}.HttpResponse": [
        (1, "header", f"{GT}.HttpResponse.Header"),
        (2, "data", f"{GT}.HttpResponse.Data"),
        (3, "trailer", f"{GT}.HttpResponse.Trailer"),
        (4, "upgradeData", f"{GT}.HttpResponse.UpgradeData"),
    ],
    f"{GT}.HttpResponse.Header": [(1, "response", f"{PT}.HttpResponse")],
    f"{GT}.HttpResponse.Data": [(1, "data", "bytes")],
    f"{GT}.HttpResponse.UpgradeData": [(1, "data", "bytes")],
    # §4.4 google.rpc.Status (imported from googleapis-common-protos, not ours)
    "google.rpc.Status": [
        (1, "code", "int32"),
        (2, "message", "string"),
        (3, "details", "repeated google.protobuf.Any"),
    ],
    # §5 entity
    f"{EN}.AgentMeta": [
        (1, "version", "string"),
        (2, "commit_id", "string"),
        (3, "pod_namespace", "string"),
        (4, "pod_name", "string"),
        (5, "kubernetes_version", f"{EN}.KubernetesVersion"),
    ],
    f"{EN}.KubernetesVersion": [
        (1, "major", "string"),
        (2, "minor", "string"),
        (3, "git_version", "string"),
        (4, "platform", "string"),
    ],
    # §6.1 AgentConfiguration
    f"{AC}.ConfigurationRequest": [
        (1, "commit_id", "string"),
        (2, "agent_meta", f"{EN}.AgentMeta"),
        (3, "skip_register", "bool"),
    ],
    f"{AC}.ConfigurationResponse": [
        (1, "configuration", f"{CF}.AgentConfiguration"),
        (2, "commit_id", "string"),
    ],
    # §6.2 AgentRegistrar
    f"{AR}.RegisterRequest": [(1, "agent_meta", f"{EN}.AgentMeta"), (2, "pod_id", "int64")],
    # §6.3 ReverseTunnel
    f"{RT}.ConnectRequest": [
        (1, "descriptor", f"{RT}.Descriptor"),
        (2, "header", f"{RT}.Header"),
        (3, "message", f"{RT}.Message"),
        (4, "trailer", f"{RT}.Trailer"),
        (5, "error", f"{RT}.Error"),
    ],
    f"{RT}.Descriptor": [(1, "agent_descriptor", f"{RI}.AgentDescriptor")],
    f"{RT}.Header": [(1, "meta", VALUES_MAP)],
    f"{RT}.Message": [(1, "data", "bytes")],
    f"{RT}.Trailer": [(1, "meta", VALUES_MAP)],
    f"{RT}.Error": [(1, "status", "google.rpc.Status")],
    f"{RT}.ConnectResponse": [
        (1, "request_info", f"{RT}.RequestInfo"),
        (2, "message", f"{RT}.Message"),
        (3, "close_send", f"{RT}.CloseSend"),
    ],
    f"{RT}.RequestInfo": [(1, "method_name", "string"), (2, "meta", VALUES_MAP)],
    f"{RI}.AgentDescriptor": [(1, "services", f"repeated {RI}.Service")],
    f"{RI}.Service": [(1, "name", "string"), (2, "methods", f"repeated {RI}.Method")],
    f"{RI}.Method": [(1, "name", "string")],
    # §7.5 HeaderExtra / ImpersonationConfig, both numberings
    f"{KA}.HeaderExtra": [(1, "imp_config", f"{KA}.ImpersonationConfig")],
    f"{KA}.ImpersonationConfig": [
        (1, "username", "string"),
        (2, "groups", "repeated string"),
        (3, "uid", "string"),
        (4, "extra", f"repeated {KA}.ExtraKeyVal"),
    ],
    f"{KA}.ExtraKeyVal": [(1, "key", "string"), (2, "val", "repeated string")],
    f"{PK}.HeaderExtra": [(1, "imp_config", f"{PK}.ImpersonationConfig")],
    f"{PK}.ImpersonationConfig": [
        (1, "username", "string"),
        (2, "groups", "repeated string"),
        (3, "roles", "repeated string"),
        (4, "uid", "string"),
    ],
    # §9.2 agentcfg top level
    f"{CF}.ConfigurationFile": [
        (1, "gitops", f"{CF}.GitopsCF"),
        (2, "observability", f"{CF}.ObservabilityCF"),
        (4, "ci_access", f"{CF}.CiAccessCF"),
        (5, "container_scanning", f"{CF}.ContainerScanningCF"),
        (6, "user_access", f"{CF}.UserAccessCF"),
        (7, "remote_development", f"{CF}.RemoteDevelopmentCF"),
        (8, "flux", f"{CF}.FluxCF"),
    ],
    f"{CF}.AgentConfiguration": [
        (1, "gitops", f"{CF}.GitopsCF"),
        (2, "observability", f"{CF}.ObservabilityCF"),
        (4, "agent_id", "int64"),
        (5, "project_id", "int64"),
        (6, "ci_access", f"{CF}.CiAccessCF"),
        (7, "container_scanning", f"{CF}.ContainerScanningCF"),
        (8, "project_path", "string"),
        (9, "remote_development", f"{CF}.RemoteDevelopmentCF"),
        (10, "flux", f"{CF}.FluxCF"),
        (11, "gitlab_external_url", "string"),
    ],
    # §9.3 agentcfg sub-messages
    f"{CF}.GitopsCF": [(1, "manifest_projects", f"repeated {CF}.ManifestProjectCF")],
    f"{CF}.ManifestProjectCF": [
        (1, "id", "optional string"),
        (4, "default_namespace", "string"),
        (5, "paths", f"repeated {CF}.PathCF"),
        (6, "reconcile_timeout", DURATION),
        (7, "dry_run_strategy", "string"),
        (8, "prune", "bool"),
        (9, "prune_timeout", DURATION),
        (10, "prune_propagation_policy", "string"),
        (11, "inventory_policy", "string"),
        (12, "ref", f"{CF}.GitRefCF"),
    ],
    f"{CF}.PathCF": [(1, "glob", "string")],
    f"{CF}.GitRefCF": [(1, "tag", "string"), (2, "branch", "string"), (3, "commit", "string")],
    f"{CF}.ObservabilityCF": [
        (1, "logging", f"{CF}.LoggingCF"),
        (2, "google_profiler", f"{CF}.GoogleProfilerCF"),
    ],
    f"{CF}.LoggingCF": [
        (1, "level", f"{CF}.log_level_enum"),
        (2, "grpc_level", f"optional {CF}.log_level_enum"),
    ],
    f"{CF}.GoogleProfilerCF": [
        (1, "enabled", "bool"),
        (2, "project_id", "string"),
        (3, "credentials_file", "string"),
        (4, "debug_logging", "bool"),
    ],
    f"{CF}.CiAccessCF": [
        (1, "projects", f"repeated {CF}.CiAccessProjectCF"),
        (2, "groups", f"repeated {CF}.CiAccessGroupCF"),
    ],
    **{
        f"{CF}.{name}": [
            (1, "id", "string"),
            (2, "default_namespace", "string"),
            (3, "access_as", f"{CF}.CiAccessAsCF"),
            (4, "environments", "repeated string"),
        ]
        for name in ("CiAccessProjectCF", "CiAccessGroupCF")
    },
    f"{CF}.CiAccessAsCF": [
        (1, "agent", f"{CF}.CiAccessAsAgentCF"),
        (2, "impersonate", f"{CF}.CiAccessAsImpersonateCF"),
        (3, "ci_job", f"{CF}.CiAccessAsCiJobCF"),
    ],
    f"{CF}.CiAccessAsImpersonateCF": [
        (1, "username", "string"),
        (2, "groups", "repeated string"),
        (3, "uid", "string"),
        (4, "extra", f"repeated {CF}.ExtraKeyValCF"),
    ],
    f"{CF}.ExtraKeyValCF": [(1, "key", "string"), (2, "val", "repeated string")],
    f"{CF}.UserAccessCF": [
        (1, "access_as", f"{CF}.UserAccessAsCF"),
        (2, "projects", f"repeated {CF}.UserAccessProjectCF"),
        (3, "groups", f"repeated {CF}.UserAccessGroupCF"),
    ],
    f"{CF}.UserAccessProjectCF": [(1, "id", "string")],
    f"{CF}.UserAccessGroupCF": [(1, "id", "string")],
    f"{CF}.UserAccessAsCF": [
        (1, "agent", f"{CF}.UserAccessAsAgentCF"),
        (3, "user", f"{CF}.UserAccessAsUserCF"),
    ],
    f"{CF}.ContainerScanningCF": [
        (1, "vulnerability_report", f"{CF}.VulnerabilityReport"),
        (2, "cadence", "string"),
        (3, "resource_requirements", f"{CF}.ResourceRequirements"),
    ],
    f"{CF}.VulnerabilityReport": [
        (1, "namespaces", "repeated string"),
        (2, "filters", f"repeated {CF}.ContainerScanningFilter"),
    ],
    f"{CF}.ContainerScanningFilter": [
        (1, "namespaces", "repeated string"),
        (2, "resources", "repeated string"),
        (3, "containers", "repeated string"),
        (4, "kinds", "repeated string"),
    ],
    f"{CF}.ResourceRequirements": [(1, "limits", f"{CF}.Resource"), (2, "requests", f"{CF}.Resource")],
    f"{CF}.Resource": [(1, "cpu", "string"), (2, "memory", "string")],
    f"{CF}.RemoteDevelopmentCF": [
        (1, "enabled", "bool"),
        (2, "dns_zone", "string"),
        (3, "partial_sync_interval", DURATION),
        (4, "full_sync_interval", DURATION),
        (5, "gitlab_workspaces_proxy", f"{CF}.GitLabWorkspacesProxy"),
        (6, "network_policy", f"{CF}.WorkspaceNetworkPolicy"),
    ],
    f"{CF}.GitLabWorkspacesProxy": [(1, "namespace", "string")],
    f"{CF}.WorkspaceNetworkPolicy": [(1, "enabled", "optional bool")],
    f"{CF}.FluxCF": [(1, "webhook_receiver_url", "string")],
    # §11.2 kas -> kas
    f"{KS}.GatewayKasResponse": [
        (1, "tunnel_ready", f"{KS}.GatewayKasResponse.TunnelReady"),
        (2, "header", f"{KS}.GatewayKasResponse.Header"),
        (3, "message", f"{KS}.GatewayKasResponse.Message"),
        (4, "trailer", f"{KS}.GatewayKasResponse.Trailer"),
        (5, "error", f"{KS}.GatewayKasResponse.Error"),
        (6, "no_tunnel", f"{KS}.GatewayKasResponse.NoTunnel"),
    ],
    f"{KS}.GatewayKasResponse.Header": [(1, "meta", VALUES_MAP)],
    f"{KS}.GatewayKasResponse.Message": [(1, "data", "bytes")],
    f"{KS}.GatewayKasResponse.Trailer": [(1, "meta", VALUES_MAP)],
    f"{KS}.GatewayKasResponse.Error": [(1, "status", "google.rpc.Status")],
    # §11.3 Redis values and the agent tracker
    "gitlab.agent.redistool.ExpiringValue": [(1, "expires_at", "int64"), (2, "value", "bytes")],
    f"{TR}.ConnectedAgentInfo": [
        (1, "agent_meta", f"{EN}.AgentMeta"),
        (2, "connected_at", "google.protobuf.Timestamp"),
        (3, "connection_id", "int64"),
        (4, "agent_id", "int64"),
        (5, "project_id", "int64"),
    ],
    f"{TR}.rpc.GetConnectedAgentsRequest": [(1, "project_id", "int64"), (2, "agent_id", "int64")],
    f"{TR}.rpc.GetConnectedAgentsResponse": [(1, "agents", f"repeated {TR}.ConnectedAgentInfo")],
    # §17.2 / §17.7 Flux push notifications (upstream only)
    f"{FX}.ReconcileProjectsRequest": [(1, "project", f"repeated {FX}.Project")],
    f"{FX}.ReconcileProjectsResponse": [(1, "project", f"{FX}.Project")],
    f"{FX}.Project": [(1, "id", "string")],
    f"{NO}.GitPushEventRequest": [(1, "event", f"{EV}.GitPushEvent")],
    f"{EV}.GitPushEvent": [(1, "project", f"{EV}.Project")],
    f"{EV}.Project": [(1, "id", "int64"), (2, "full_path", "string")],
    # Gitaly (the two RPCs kas 16.5 uses; field numbers of Gitaly's own files)
    f"{GY}.Repository": [
        (2, "storage_name", "string"),
        (3, "relative_path", "string"),
        (4, "git_object_directory", "string"),
        (5, "git_alternate_object_directories", "repeated string"),
        (6, "gl_repository", "string"),
        (8, "gl_project_path", "string"),
    ],
    f"{GY}.InfoRefsRequest": [
        (1, "repository", f"{GY}.Repository"),
        (2, "git_config_options", "repeated string"),
        (3, "git_protocol", "string"),
    ],
    f"{GY}.InfoRefsResponse": [(1, "data", "bytes")],
    f"{GY}.TreeEntryRequest": [
        (1, "repository", f"{GY}.Repository"),
        (2, "revision", "bytes"),
        (3, "path", "bytes"),
        (4, "limit", "int64"),
        (5, "max_size", "int64"),
    ],
    f"{GY}.TreeEntryResponse": [
        (1, "type", f"{GY}.TreeEntryResponse.ObjectType"),
        (2, "oid", "string"),
        (3, "size", "int64"),
        (4, "mode", "int32"),
        (5, "data", "bytes"),
    ],
}

EMPTY_MESSAGES = [
    f"{GT}.HttpRequest.Trailer",
    f"{GT}.HttpResponse.Trailer",
    f"{AR}.RegisterResponse",
    f"{RT}.CloseSend",
    f"{CF}.CiAccessAsAgentCF",
    f"{CF}.CiAccessAsCiJobCF",
    f"{CF}.UserAccessAsAgentCF",
    f"{CF}.UserAccessAsUserCF",
    f"{KS}.StartStreaming",
    f"{KS}.GatewayKasResponse.TunnelReady",
    f"{KS}.GatewayKasResponse.NoTunnel",
    f"{NO}.GitPushEventResponse",
]

# Real oneofs (proto3 `optional` fields are not listed here): (message, oneof) -> members in order.
ONEOFS: dict[tuple[str, str], list[str]] = {
    (f"{GT}.HttpRequest", "message"): ["header", "data", "trailer", "upgradeData"],
    (f"{GT}.HttpResponse", "message"): ["header", "data", "trailer", "upgradeData"],
    (f"{RT}.ConnectRequest", "msg"): ["descriptor", "header", "message", "trailer", "error"],
    (f"{RT}.ConnectResponse", "msg"): ["request_info", "message", "close_send"],
    (f"{KS}.GatewayKasResponse", "msg"): [
        "tunnel_ready",
        "header",
        "message",
        "trailer",
        "error",
        "no_tunnel",
    ],
    (f"{CF}.ManifestProjectCF", "prune_oneof"): ["prune"],
    (f"{CF}.GitRefCF", "ref"): ["tag", "branch", "commit"],
    (f"{CF}.CiAccessAsCF", "as"): ["agent", "impersonate", "ci_job"],
    (f"{CF}.UserAccessAsCF", "as"): ["agent", "user"],
    (f"{TR}.rpc.GetConnectedAgentsRequest", "request"): ["project_id", "agent_id"],
}

# §4.3, written exactly as the table there (S = start of stream, EOF = end of stream).
HTTP_ORDER = (
    "S→header; header→data|trailer; data→data|trailer; trailer→upgradeData|EOF; upgradeData→upgradeData|EOF"
)
ORDERINGS: list[tuple[str, str, str]] = [
    (f"{GT}.HttpRequest", "message", HTTP_ORDER),
    (f"{GT}.HttpResponse", "message", HTTP_ORDER),
    (
        f"{RT}.ConnectRequest",
        "msg",
        "S→descriptor; descriptor→header|error; header→message|trailer; message→message|trailer; "
        "trailer→error|EOF; error→EOF",
    ),
    (
        f"{RT}.ConnectResponse",
        "msg",
        "S→request_info|EOF; request_info→message|close_send|EOF; message→message|close_send|EOF; "
        "close_send→EOF",
    ),
    (
        f"{KS}.GatewayKasResponse",
        "msg",
        "S→EOF|tunnel_ready|no_tunnel; no_tunnel→EOF|tunnel_ready; tunnel_ready→header; "
        "header→message|trailer; message→message|trailer; trailer→error|EOF; error→EOF",
    ),
]

RESERVED: list[tuple[str, list[int], list[str]]] = [
    (f"{CF}.ConfigurationFile", [3], []),
    (f"{CF}.AgentConfiguration", [3], []),
    (f"{CF}.GitopsCF", [2], ["charts"]),
    (f"{CF}.ManifestProjectCF", [2, 3], []),
    (f"{GY}.Repository", [1, 7], []),
]

LOG_LEVELS = [("info", 0), ("debug", 1), ("warn", 2), ("error", 3)]

# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
}


def message(full_name: str) -> Descriptor:
    return descriptor_pool.Default().FindMessageTypeByName(full_name)


def is_proto3_optional(field: FieldDescriptor) -> bool:
    proto = descriptor_pb2.DescriptorProto()
    assert field.containing_type is not None
    field.containing_type.CopyToProto(proto)
    return next(f for f in proto.field if f.number == field.number).proto3_optional


def type_spec(field: FieldDescriptor) -> str:
    """The field's type written as in the FIELDS table."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type.fields_by_name
        return f"map<{type_spec(entry['key'])}, {type_spec(entry['value'])}>"
    if field.message_type is not None:
        base = field.message_type.full_name
    elif field.enum_type is not None:
        base = field.enum_type.full_name
    else:
        base = _SCALARS[field.type]
    if field.is_repeated:
        return f"repeated {base}"
    return f"optional {base}" if is_proto3_optional(field) else base


def all_messages(d: Descriptor | FileDescriptor) -> Iterator[Descriptor]:
    nested = d.message_types_by_name.values() if isinstance(d, FileDescriptor) else d.nested_types
    for m in nested:
        if not m.GetOptions().map_entry:
            yield m
            yield from all_messages(m)


def with_member(cls: type[Message], member: str) -> Message:
    msg = cls()
    getattr(msg, member).SetInParent()
    return msg


def field_rows() -> list[Any]:
    return [
        pytest.param(msg_name, number, name, spec, id=f"{msg_name}.{name}")
        for msg_name, rows in FIELDS.items()
        for number, name, spec in rows
    ]


# ---------------------------------------------------------------------------------------------------
# Methods and names
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("service", "method", "request_type", "response_type", "kind", "path"), METHODS)
def test_method(
    service: str, method: str, request_type: str, response_type: str, kind: str, path: str
) -> None:
    m = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
    assert f"/{m.containing_service.full_name}/{m.name}" == path
    assert (m.input_type.full_name, m.output_type.full_name) == (request_type, response_type)
    assert (m.client_streaming, m.server_streaming) == STREAMING[kind]


class _RecordingChannel:
    """Stands in for grpc.Channel: records the paths the generated stubs register."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def _record(self, path: str, **_: object) -> None:
        self.paths.append(path)

    unary_unary = unary_stream = stream_unary = stream_stream = _record


@pytest.mark.parametrize(("service", "method", "path"), [(s, m, p) for s, m, *_, p in METHODS])
def test_generated_stub_uses_the_wire_path(service: str, method: str, path: str) -> None:
    desc = descriptor_pool.Default().FindServiceByName(service)
    grpc_module = importlib.import_module(
        desc.file.name.removesuffix(".proto").replace("/", ".") + "_pb2_grpc"
    )
    channel = _RecordingChannel()
    getattr(grpc_module, f"{desc.name}Stub")(channel)
    assert path in channel.paths


def test_every_service_is_tabulated() -> None:
    generated = {
        (s.full_name, m.name) for f in OUR_FILES for s in f.services_by_name.values() for m in s.methods
    }
    assert generated == {(s, m) for s, m, *_ in METHODS}


@pytest.mark.parametrize(("flavor", "attribute", "expected"), FLAVOR_NAMES)
def test_flavor_wire_names(flavor: WireFlavor, attribute: str, expected: str) -> None:
    assert getattr(wire_names(flavor), attribute) == expected
    assert getattr(wire_names(flavor.value), attribute) == expected


@pytest.mark.parametrize("flavor", list(WireFlavor))
def test_flavor_agent_descriptor(flavor: WireFlavor) -> None:
    names = wire_names(flavor)
    service = f"{flavor.value}.agent.kubernetes_api.rpc.KubernetesApi"
    assert names.advertised_services == (AdvertisedService(service, ("MakeRequest",)),)
    expected = info_pb2.AgentDescriptor(
        services=[info_pb2.Service(name=service, methods=[info_pb2.Method(name="MakeRequest")])]
    )
    assert names.agent_descriptor() == expected
    # The advertised method, joined to the service, is exactly the path kas sends in RequestInfo.
    assert f"/{service}/MakeRequest" == names.make_request_path


def test_unknown_flavor_is_rejected() -> None:
    with pytest.raises(ValueError, match="bogus"):
        wire_names("bogus")


# ---------------------------------------------------------------------------------------------------
# Fields, oneofs, reserved numbers, enums, JSON names
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", PROTO_FILES, ids=lambda p: p.relative_to(PROTO_ROOT).as_posix())
def test_proto_file_layout(proto: Path) -> None:
    """Each .proto is generated, sits at <package as directories>/<name>.proto, and is named from the root."""
    file = descriptor_pool.Default().FindFileByName(proto.relative_to(PROTO_ROOT.parent).as_posix())
    assert proto.with_name(proto.stem + "_pb2.py").is_file()
    assert proto.parent.relative_to(PROTO_ROOT).parts == tuple(file.package.split("."))
    assert file.package.split(".")[:2] in (["gitlab", "agent"], ["plural", "agent"], ["gitaly"])


@pytest.mark.parametrize(("msg_name", "number", "name", "spec"), field_rows())
def test_field(msg_name: str, number: int, name: str, spec: str) -> None:
    field = message(msg_name).fields_by_number[number]
    assert (field.name, type_spec(field)) == (name, spec)


@pytest.mark.parametrize("msg_name", sorted(FIELDS))
def test_message_has_no_untabulated_fields(msg_name: str) -> None:
    assert sorted(message(msg_name).fields_by_number) == sorted(n for n, _, _ in FIELDS[msg_name])


@pytest.mark.parametrize("msg_name", EMPTY_MESSAGES)
def test_empty_message(msg_name: str) -> None:
    assert not message(msg_name).fields


def test_every_message_is_tabulated() -> None:
    ours = {m.full_name for f in OUR_FILES for m in all_messages(f)}
    assert ours == (FIELDS.keys() | set(EMPTY_MESSAGES)) - {"google.rpc.Status"}


@pytest.mark.parametrize(
    ("key", "members"), list(ONEOFS.items()), ids=lambda v: ".".join(v) if isinstance(v, tuple) else ""
)
def test_oneof(key: tuple[str, str], members: list[str]) -> None:
    msg_name, oneof_name = key
    assert [f.name for f in message(msg_name).oneofs_by_name[oneof_name].fields] == members


def test_every_real_oneof_is_tabulated() -> None:
    real = {
        (m.full_name, o.name)
        for f in OUR_FILES
        for m in all_messages(f)
        for o in m.oneofs
        if not (len(o.fields) == 1 and is_proto3_optional(o.fields[0]))
    }
    assert real == set(ONEOFS)


@pytest.mark.parametrize(("msg_name", "numbers", "names"), RESERVED)
def test_reserved(msg_name: str, numbers: list[int], names: list[str]) -> None:
    proto = descriptor_pb2.DescriptorProto()
    message(msg_name).CopyToProto(proto)
    reserved = [n for r in proto.reserved_range for n in range(r.start, r.end)]
    assert (reserved, list(proto.reserved_name)) == (numbers, names)


@pytest.mark.parametrize(("name", "number"), LOG_LEVELS)
def test_log_level_enum(name: str, number: int) -> None:
    enum = agentcfg_pb2.DESCRIPTOR.enum_types_by_name["log_level_enum"]
    assert enum.values_by_name[name].number == number
    assert len(enum.values) == len(LOG_LEVELS)


def test_file_schema_json_names_are_the_yaml_keys() -> None:
    """§9.1: kas parses the YAML as protobuf JSON, so json_name must be the snake_case key everywhere."""
    top = agentcfg_pb2.ConfigurationFile.DESCRIPTOR
    seen: set[str] = set()
    todo = [top]
    while todo:
        m = todo.pop()
        if m.full_name in seen or not m.full_name.startswith(CF):
            continue
        seen.add(m.full_name)
        for f in m.fields:
            assert f.json_name == f.name, f.full_name
            if f.message_type is not None:
                todo.append(f.message_type)
    everything = {m.full_name for m in all_messages(agentcfg_pb2.DESCRIPTOR)}
    assert seen == everything - {f"{CF}.AgentConfiguration"}


@pytest.mark.parametrize("msg", [entity_pb2.AgentMeta, entity_pb2.KubernetesVersion])
def test_entity_json_names_are_snake_case(msg: type[Message]) -> None:
    assert all(f.json_name == f.name for f in msg.DESCRIPTOR.fields)


def test_agent_configuration_has_default_json_names() -> None:
    fields = agentcfg_pb2.AgentConfiguration.DESCRIPTOR.fields_by_name
    assert fields["gitlab_external_url"].json_name == "gitlabExternalUrl"


EXAMPLE_CONFIG = """
observability:
  logging:
    level: debug
    grpc_level: warn
ci_access:
  projects:
    - id: group1/app
      default_namespace: app
      environments: ["staging", "review/*"]
      access_as:
        ci_job: {}
  groups:
    - id: group2
      access_as:
        impersonate:
          username: deployer
          groups: ["deployers"]
          extra:
            - key: team
              val: ["a"]
user_access:
  access_as:
    user: {}
  projects:
    - id: group1/app
remote_development:
  partial_sync_interval: 10s
flux:
  webhook_receiver_url: http://webhook-receiver.flux-system.svc.cluster.local
"""


def test_example_config_parses_strictly() -> None:
    cfg = json_format.ParseDict(yaml.safe_load(EXAMPLE_CONFIG), agentcfg_pb2.ConfigurationFile())
    assert cfg.observability.logging.level == agentcfg_pb2.debug
    assert cfg.observability.logging.HasField("grpc_level")
    assert cfg.ci_access.projects[0].access_as.WhichOneof("as") == "ci_job"
    assert list(cfg.ci_access.groups[0].access_as.impersonate.extra[0].val) == ["a"]
    assert cfg.user_access.access_as.WhichOneof("as") == "user"
    assert cfg.remote_development.partial_sync_interval.seconds == 10
    out = json_format.MessageToDict(cfg)
    assert "ci_access" in out
    assert "default_namespace" in out["ci_access"]["projects"][0]


def test_unknown_config_key_is_an_error() -> None:
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict({"ci_acess": {}}, agentcfg_pb2.ConfigurationFile())


def test_status_is_the_googleapis_one() -> None:
    status = tunnel_rpc.Error.DESCRIPTOR.fields_by_name["status"].message_type
    assert status is not None
    assert status.file.name == "google/rpc/status.proto"


# ---------------------------------------------------------------------------------------------------
# HeaderExtra pack/unpack (§7.5)
# ---------------------------------------------------------------------------------------------------

FULL = ImpersonationConfig(
    username="gitlab:ci_job:1074",
    uid="u-1",
    groups=["gitlab:ci_job", "gitlab:project:7"],
    extra={"agent.gitlab.com/id": ["42"], "agent.gitlab.com/ci_job_id": ["1074"]},
)


@pytest.mark.parametrize(
    ("flavor", "imp"),
    [
        (WireFlavor.GITLAB, FULL),
        (WireFlavor.GITLAB, ImpersonationConfig()),
        (WireFlavor.PLURAL, ImpersonationConfig(username="me@example.com", uid="u-2", groups=["admins"])),
        (WireFlavor.PLURAL, ImpersonationConfig()),
    ],
)
def test_header_extra_round_trip(flavor: WireFlavor, imp: ImpersonationConfig) -> None:
    names = wire_names(flavor)
    packed = names.pack_header_extra(imp)
    assert packed.type_url == names.header_extra_type_url
    assert names.unpack_header_extra(packed) == imp


def test_gitlab_numbering_on_the_wire() -> None:
    packed = wire_names(WireFlavor.GITLAB).pack_header_extra(FULL)
    imp = k8s_rpc.HeaderExtra.FromString(packed.value).imp_config
    assert (imp.username, imp.uid, list(imp.groups)) == (FULL.username, FULL.uid, FULL.groups)
    assert {kv.key: list(kv.val) for kv in imp.extra} == FULL.extra


def test_plural_numbering_on_the_wire() -> None:
    imp = ImpersonationConfig(username="me@example.com", uid="u-2", groups=["admins"])
    packed = wire_names(WireFlavor.PLURAL).pack_header_extra(imp)
    plural = plural_k8s_rpc.HeaderExtra.FromString(packed.value).imp_config
    assert (plural.username, plural.uid, list(plural.groups), list(plural.roles)) == (
        "me@example.com",
        "u-2",
        ["admins"],
        [],
    )


def test_plural_roles_are_ignored() -> None:
    sent = plural_k8s_rpc.HeaderExtra(
        imp_config=plural_k8s_rpc.ImpersonationConfig(username="u", roles=["r"], uid="9")
    )
    packed = any_pb2.Any(type_url=wire_names("plural").header_extra_type_url, value=sent.SerializeToString())
    assert wire_names("plural").unpack_header_extra(packed) == ImpersonationConfig(username="u", uid="9")


def test_plural_cannot_carry_extra() -> None:
    with pytest.raises(HeaderExtraError, match="extra"):
        wire_names(WireFlavor.PLURAL).pack_header_extra(FULL)


def test_duplicate_extra_keys_are_merged() -> None:
    sent = k8s_rpc.HeaderExtra(
        imp_config=k8s_rpc.ImpersonationConfig(
            extra=[k8s_rpc.ExtraKeyVal(key="k", val=["1"]), k8s_rpc.ExtraKeyVal(key="k", val=["2"])]
        )
    )
    packed = any_pb2.Any(type_url=wire_names("gitlab").header_extra_type_url, value=sent.SerializeToString())
    assert wire_names("gitlab").unpack_header_extra(packed).extra == {"k": ["1", "2"]}


@pytest.mark.parametrize(
    ("flavor", "type_url"),
    [
        (WireFlavor.PLURAL, "type.googleapis.com/gitlab.agent.kubernetes_api.rpc.HeaderExtra"),
        (WireFlavor.GITLAB, "type.googleapis.com/plural.agent.kubernetes_api.rpc.HeaderExtra"),
        (WireFlavor.GITLAB, "type.googleapis.com/gitlab.agent.gitlab_access.rpc.HeaderExtra"),
        (WireFlavor.GITLAB, "gitlab.agent.kubernetes_api.rpc.HeaderExtra"),
        (WireFlavor.GITLAB, ""),
    ],
)
def test_header_extra_type_is_checked(flavor: WireFlavor, type_url: str) -> None:
    with pytest.raises(HeaderExtraTypeError, match="expected"):
        wire_names(flavor).unpack_header_extra(any_pb2.Any(type_url=type_url))


def test_header_extra_host_part_is_not_interpreted() -> None:
    """As with Go's anypb, only the message name after the last "/" identifies the type."""
    packed = wire_names("gitlab").pack_header_extra(FULL)
    packed.type_url = "example.com/gitlab.agent.kubernetes_api.rpc.HeaderExtra"
    assert wire_names("gitlab").unpack_header_extra(packed) == FULL


def test_undecodable_header_extra() -> None:
    bad = any_pb2.Any(type_url=wire_names("gitlab").header_extra_type_url, value=b"\x0a\x05ab")
    with pytest.raises(HeaderExtraError) as err:
        wire_names("gitlab").unpack_header_extra(bad)
    assert not isinstance(err.value, HeaderExtraTypeError)


def test_impersonation_config_emptiness() -> None:
    assert ImpersonationConfig().is_empty()
    assert not ImpersonationConfig(groups=["g"]).is_empty()
    assert not ImpersonationConfig(extra={"k": ["v"]}).is_empty()


# ---------------------------------------------------------------------------------------------------
# Orderings (§4.3)
# ---------------------------------------------------------------------------------------------------


def parse_transitions(text: str, desc: Descriptor, oneof: str) -> dict[int, frozenset[int]]:
    numbers = {f.name: f.number for f in desc.oneofs_by_name[oneof].fields} | {
        "S": ordering.START,
        "EOF": ordering.EOF,
    }
    result = {}
    for rule in text.split("; "):
        src, dst = rule.split("→")
        result[numbers[src]] = frozenset(numbers[d] for d in dst.split("|"))
    return result


@pytest.mark.parametrize(("msg_name", "oneof", "transitions"), ORDERINGS)
def test_ordering_annotations_match_the_spec(msg_name: str, oneof: str, transitions: str) -> None:
    desc = message(msg_name)
    assert dict(ordering.automaton(desc, oneof).transitions) == parse_transitions(transitions, desc, oneof)


def test_every_annotated_oneof_is_tabulated() -> None:
    annotated = {
        (m.full_name, o.name)
        for f in OUR_FILES
        for m in all_messages(f)
        for o in m.oneofs
        if o.GetOptions().ListFields()
    }
    assert annotated == {(m, o) for m, o, _ in ORDERINGS}


GOOD_SEQUENCES: list[tuple[type[Message], str, list[str]]] = [
    (grpctool_pb2.HttpRequest, "message", ["header", "trailer"]),
    (grpctool_pb2.HttpRequest, "message", ["header", "data", "data", "trailer"]),
    (grpctool_pb2.HttpRequest, "message", ["header", "trailer", "upgradeData", "upgradeData"]),
    (grpctool_pb2.HttpResponse, "message", ["header", "data", "trailer", "upgradeData"]),
    (tunnel_rpc.ConnectRequest, "msg", ["descriptor", "header", "message", "message", "trailer"]),
    (tunnel_rpc.ConnectRequest, "msg", ["descriptor", "header", "trailer", "error"]),
    (tunnel_rpc.ConnectRequest, "msg", ["descriptor", "error"]),
    (tunnel_rpc.ConnectResponse, "msg", []),
    (tunnel_rpc.ConnectResponse, "msg", ["request_info"]),
    (tunnel_rpc.ConnectResponse, "msg", ["request_info", "message", "message", "close_send"]),
    (kas_pb2.GatewayKasResponse, "msg", []),
    (kas_pb2.GatewayKasResponse, "msg", ["no_tunnel"]),
    (
        kas_pb2.GatewayKasResponse,
        "msg",
        ["no_tunnel", "tunnel_ready", "header", "message", "trailer", "error"],
    ),
    (kas_pb2.GatewayKasResponse, "msg", ["tunnel_ready", "header", "trailer"]),
]

NOT_ALLOWED = r"^transition from .* is not allowed\. Allowed: \["

# The last element is the offending step ("EOF" = the stream ending there).
BAD_SEQUENCES: list[tuple[type[Message], str, list[str]]] = [
    (grpctool_pb2.HttpRequest, "message", ["data"]),
    (grpctool_pb2.HttpRequest, "message", ["EOF"]),
    (grpctool_pb2.HttpRequest, "message", ["header", "EOF"]),
    (grpctool_pb2.HttpRequest, "message", ["header", "upgradeData"]),
    (grpctool_pb2.HttpRequest, "message", ["header", "trailer", "data"]),
    (grpctool_pb2.HttpResponse, "message", ["header", "header"]),
    (tunnel_rpc.ConnectRequest, "msg", ["header"]),
    (tunnel_rpc.ConnectRequest, "msg", ["descriptor", "EOF"]),
    (tunnel_rpc.ConnectRequest, "msg", ["descriptor", "message"]),
    (tunnel_rpc.ConnectRequest, "msg", ["descriptor", "header", "error"]),
    (tunnel_rpc.ConnectRequest, "msg", ["descriptor", "error", "trailer"]),
    (tunnel_rpc.ConnectResponse, "msg", ["message"]),
    (tunnel_rpc.ConnectResponse, "msg", ["request_info", "close_send", "message"]),
    (kas_pb2.GatewayKasResponse, "msg", ["header"]),
    (kas_pb2.GatewayKasResponse, "msg", ["tunnel_ready", "EOF"]),
    (kas_pb2.GatewayKasResponse, "msg", ["tunnel_ready", "no_tunnel"]),
]


def _ids(case: object) -> str:
    if isinstance(case, list):
        return ",".join(case) or "empty"
    return case.__name__ if isinstance(case, type) else str(case)


@pytest.mark.parametrize(("cls", "oneof", "steps"), GOOD_SEQUENCES, ids=_ids)
def test_validator_accepts(cls: type[Message], oneof: str, steps: list[str]) -> None:
    v = ordering.OrderingValidator(cls, oneof)
    assert [v.accept(with_member(cls, s)) for s in steps] == steps
    v.end()
    assert v.state == ordering.EOF


@pytest.mark.parametrize(("cls", "oneof", "steps"), BAD_SEQUENCES, ids=_ids)
def test_validator_rejects(cls: type[Message], oneof: str, steps: list[str]) -> None:
    v = ordering.OrderingValidator(cls, oneof)
    *ok, bad = steps
    for s in ok:
        v.accept(with_member(cls, s))
    if bad == "EOF":
        with pytest.raises(ordering.StreamOrderError, match=NOT_ALLOWED):
            v.end()
    else:
        frame = with_member(cls, bad)
        with pytest.raises(ordering.StreamOrderError, match=NOT_ALLOWED):
            v.accept(frame)


def test_validator_message_text() -> None:
    v = ordering.OrderingValidator(grpctool_pb2.HttpRequest, "message")
    v.accept(with_member(grpctool_pb2.HttpRequest, "header"))
    with pytest.raises(ordering.StreamOrderError) as err:
        v.accept(with_member(grpctool_pb2.HttpRequest, "upgradeData"))
    assert str(err.value) == (
        "transition from header (1) to upgradeData (4) is not allowed. Allowed: [data (2), trailer (3)]"
    )
    v2 = ordering.OrderingValidator(tunnel_rpc.ConnectResponse, "msg")
    with pytest.raises(ordering.StreamOrderError, match=r"Allowed: \[request_info \(1\), EOF\]$"):
        v2.accept(with_member(tunnel_rpc.ConnectResponse, "close_send"))


def test_validator_rejects_empty_frame() -> None:
    v = ordering.OrderingValidator(message(f"{RT}.ConnectRequest"), "msg")  # a Descriptor works too
    with pytest.raises(ordering.StreamOrderError) as err:
        v.accept(tunnel_rpc.ConnectRequest())
    assert (
        str(err.value)
        == "no fields in the oneof group gitlab.agent.reverse_tunnel.rpc.ConnectRequest.msg is set"
    )


def test_validator_nothing_after_end() -> None:
    v = ordering.OrderingValidator(tunnel_rpc.ConnectResponse, "msg")
    v.end()
    assert v.allowed() == frozenset()
    with pytest.raises(ordering.StreamOrderError, match=r"^transition from EOF to request_info"):
        v.accept(with_member(tunnel_rpc.ConnectResponse, "request_info"))


def test_validator_wrong_message_type() -> None:
    v = ordering.OrderingValidator(grpctool_pb2.HttpRequest, "message")
    with pytest.raises(TypeError):
        v.accept(with_member(grpctool_pb2.HttpResponse, "header"))


@pytest.mark.parametrize(
    ("cls", "oneof"), [(agentcfg_pb2.GitRefCF, "ref"), (grpctool_pb2.HttpRequest, "nope")]
)
def test_validator_needs_annotated_oneof(cls: type[Message], oneof: str) -> None:
    with pytest.raises(ValueError, match=r"annotation|no oneof"):
        ordering.OrderingValidator(cls, oneof)


# ---------------------------------------------------------------------------------------------------
# HTTP headers (§4.1, §7.4)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("content-type", "Content-Type"),
        ("impersonate-extra-foo", "Impersonate-Extra-Foo"),
        ("IMPERSONATE-USER", "Impersonate-User"),
        ("Impersonate-Uid", "Impersonate-Uid"),
        ("upgrade", "Upgrade"),
        ("TE", "Te"),
        ("www-authenticate", "Www-Authenticate"),
        ("x-csrf-token", "X-Csrf-Token"),
        ("a1-b2", "A1-B2"),
        ("user_agent", "User_agent"),
        ("x--y", "X--Y"),
        ("-foo", "-Foo"),
        ("", ""),
        ("foo bar", "foo bar"),
        ("foo:bar", "foo:bar"),
        ("ümlaut-x", "ümlaut-x"),
    ],
)
def test_canonical_header_key(raw: str, canonical: str) -> None:
    assert http_headers.canonical_header_key(raw) == canonical


def test_hop_by_hop_fixed_set_is_removed() -> None:
    header = {k: ["x"] for k in http_headers.HOP_BY_HOP_HEADERS - {"Upgrade"}} | {"Accept": ["*/*"]}
    assert http_headers.clean_hop_by_hop(header) == {"Accept": ["*/*"]}


def test_hop_by_hop_headers_named_in_connection_are_removed() -> None:
    header = {"Connection": ["keep-alive, x-foo", " X-Bar "], "X-Foo": ["1"], "X-Bar": ["2"], "X-Baz": ["3"]}
    assert http_headers.clean_hop_by_hop(header) == {"X-Baz": ["3"]}


def test_hop_by_hop_keeps_upgrade() -> None:
    header = {
        "connection": ["Upgrade"],
        "upgrade": ["SPDY/3.1"],
        "x-stream-protocol-version": ["v4.channel.k8s.io"],
    }
    assert http_headers.clean_hop_by_hop(header) == {
        "X-Stream-Protocol-Version": ["v4.channel.k8s.io"],
        "Upgrade": ["SPDY/3.1"],
        "Connection": ["upgrade"],
    }


def test_hop_by_hop_merges_keys_and_leaves_input_alone() -> None:
    header = {"accept": ["a"], "Accept": ["b"], "Te": ["trailers"]}
    snapshot = {k: list(v) for k, v in header.items()}
    assert http_headers.clean_hop_by_hop(header) == {"Accept": ["a", "b"]}
    assert header == snapshot
