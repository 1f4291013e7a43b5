import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class log_level_enum(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    info: _ClassVar[log_level_enum]
    debug: _ClassVar[log_level_enum]
    warn: _ClassVar[log_level_enum]
    error: _ClassVar[log_level_enum]
info: log_level_enum
debug: log_level_enum
warn: log_level_enum
error: log_level_enum

class ConfigurationFile(_message.Message):
    __slots__ = ("gitops", "observability", "ci_access", "container_scanning", "user_access", "remote_development", "flux")
    GITOPS_FIELD_NUMBER: _ClassVar[int]
    OBSERVABILITY_FIELD_NUMBER: _ClassVar[int]
    CI_ACCESS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_SCANNING_FIELD_NUMBER: _ClassVar[int]
    USER_ACCESS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_DEVELOPMENT_FIELD_NUMBER: _ClassVar[int]
    FLUX_FIELD_NUMBER: _ClassVar[int]
    gitops: GitopsCF
    observability: ObservabilityCF
    ci_access: CiAccessCF
    container_scanning: ContainerScanningCF
    user_access: UserAccessCF
    remote_development: RemoteDevelopmentCF
    flux: FluxCF
    def __init__(self, gitops: _Optional[_Union[GitopsCF, _Mapping]] = ..., observability: _Optional[_Union[ObservabilityCF, _Mapping]] = ..., ci_access: _Optional[_Union[CiAccessCF, _Mapping]] = ..., container_scanning: _Optional[_Union[ContainerScanningCF, _Mapping]] = ..., user_access: _Optional[_Union[UserAccessCF, _Mapping]] = ..., remote_development: _Optional[_Union[RemoteDevelopmentCF, _Mapping]] = ..., flux: _Optional[_Union[FluxCF, _Mapping]] = ...) -> None: ...

class AgentConfiguration(_message.Message):
    __slots__ = ("gitops", "observability", "agent_id", "project_id", "ci_access", "container_scanning", "project_path", "remote_development", "flux", "gitlab_external_url")
    GITOPS_FIELD_NUMBER: _ClassVar[int]
    OBSERVABILITY_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CI_ACCESS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_SCANNING_FIELD_NUMBER: _ClassVar[int]
    PROJECT_PATH_FIELD_NUMBER: _ClassVar[int]
    REMOTE_DEVELOPMENT_FIELD_NUMBER: _ClassVar[int]
    FLUX_FIELD_NUMBER: _ClassVar[int]
    GITLAB_EXTERNAL_URL_FIELD_NUMBER: _ClassVar[int]
    gitops: GitopsCF
    observability: ObservabilityCF
    agent_id: int
    project_id: int
    ci_access: CiAccessCF
    container_scanning: ContainerScanningCF
    project_path: str
    remote_development: RemoteDevelopmentCF
    flux: FluxCF
    gitlab_external_url: str
    def __init__(self, gitops: _Optional[_Union[GitopsCF, _Mapping]] = ..., observability: _Optional[_Union[ObservabilityCF, _Mapping]] = ..., agent_id: _Optional[int] = ..., project_id: _Optional[int] = ..., ci_access: _Optional[_Union[CiAccessCF, _Mapping]] = ..., container_scanning: _Optional[_Union[ContainerScanningCF, _Mapping]] = ..., project_path: _Optional[str] = ..., remote_development: _Optional[_Union[RemoteDevelopmentCF, _Mapping]] = ..., flux: _Optional[_Union[FluxCF, _Mapping]] = ..., gitlab_external_url: _Optional[str] = ...) -> None: ...

class GitopsCF(_message.Message):
    __slots__ = ("manifest_projects",)
    MANIFEST_PROJECTS_FIELD_NUMBER: _ClassVar[int]
    manifest_projects: _containers.RepeatedCompositeFieldContainer[ManifestProjectCF]
    def __init__(self, manifest_projects: _Optional[_Iterable[_Union[ManifestProjectCF, _Mapping]]] = ...) -> None: ...

class ManifestProjectCF(_message.Message):
    __slots__ = ("id", "default_namespace", "paths", "reconcile_timeout", "dry_run_strategy", "prune", "prune_timeout", "prune_propagation_policy", "inventory_policy", "ref")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    RECONCILE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PRUNE_FIELD_NUMBER: _ClassVar[int]
    PRUNE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PRUNE_PROPAGATION_POLICY_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_POLICY_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    id: str
    default_namespace: str
    paths: _containers.RepeatedCompositeFieldContainer[PathCF]
    reconcile_timeout: _duration_pb2.Duration
    dry_run_strategy: str
    prune: bool
    prune_timeout: _duration_pb2.Duration
    prune_propagation_policy: str
    inventory_policy: str
    ref: GitRefCF
    def __init__(self, id: _Optional[str] = ..., default_namespace: _Optional[str] = ..., paths: _Optional[_Iterable[_Union[PathCF, _Mapping]]] = ..., reconcile_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dry_run_strategy: _Optional[str] = ..., prune: _Optional[bool] = ..., prune_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., prune_propagation_policy: _Optional[str] = ..., inventory_policy: _Optional[str] = ..., ref: _Optional[_Union[GitRefCF, _Mapping]] = ...) -> None: ...

class PathCF(_message.Message):
    __slots__ = ("glob",)
    GLOB_FIELD_NUMBER: _ClassVar[int]
    glob: str
    def __init__(self, glob: _Optional[str] = ...) -> None: ...

class GitRefCF(_message.Message):
    __slots__ = ("tag", "branch", "commit")
    TAG_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    tag: str
    branch: str
    commit: str
    def __init__(self, tag: _Optional[str] = ..., branch: _Optional[str] = ..., commit: _Optional[str] = ...) -> None: ...

class ObservabilityCF(_message.Message):
    __slots__ = ("logging", "google_profiler")
    LOGGING_FIELD_NUMBER: _ClassVar[int]
    GOOGLE_PROFILER_FIELD_NUMBER: _ClassVar[int]
    logging: LoggingCF
    google_profiler: GoogleProfilerCF
    def __init__(self, logging: _Optional[_Union[LoggingCF, _Mapping]] = ..., google_profiler: _Optional[_Union[GoogleProfilerCF, _Mapping]] = ...) -> None: ...

class LoggingCF(_message.Message):
    __slots__ = ("level", "grpc_level")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    GRPC_LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: log_level_enum
    grpc_level: log_level_enum
    def __init__(self, level: _Optional[_Union[log_level_enum, str]] = ..., grpc_level: _Optional[_Union[log_level_enum, str]] = ...) -> None: ...

class GoogleProfilerCF(_message.Message):
    __slots__ = ("enabled", "project_id", "credentials_file", "debug_logging")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FILE_FIELD_NUMBER: _ClassVar[int]
    DEBUG_LOGGING_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    project_id: str
    credentials_file: str
    debug_logging: bool
    def __init__(self, enabled: _Optional[bool] = ..., project_id: _Optional[str] = ..., credentials_file: _Optional[str] = ..., debug_logging: _Optional[bool] = ...) -> None: ...

class CiAccessCF(_message.Message):
    __slots__ = ("projects", "groups")
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[CiAccessProjectCF]
    groups: _containers.RepeatedCompositeFieldContainer[CiAccessGroupCF]
    def __init__(self, projects: _Optional[_Iterable[_Union[CiAccessProjectCF, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[CiAccessGroupCF, _Mapping]]] = ...) -> None: ...

class CiAccessProjectCF(_message.Message):
    __slots__ = ("id", "default_namespace", "access_as", "environments")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_AS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    default_namespace: str
    access_as: CiAccessAsCF
    environments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., default_namespace: _Optional[str] = ..., access_as: _Optional[_Union[CiAccessAsCF, _Mapping]] = ..., environments: _Optional[_Iterable[str]] = ...) -> None: ...

class CiAccessGroupCF(_message.Message):
    __slots__ = ("id", "default_namespace", "access_as", "environments")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ACCESS_AS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    default_namespace: str
    access_as: CiAccessAsCF
    environments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., default_namespace: _Optional[str] = ..., access_as: _Optional[_Union[CiAccessAsCF, _Mapping]] = ..., environments: _Optional[_Iterable[str]] = ...) -> None: ...

class CiAccessAsCF(_message.Message):
    __slots__ = ("agent", "impersonate", "ci_job")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    IMPERSONATE_FIELD_NUMBER: _ClassVar[int]
    CI_JOB_FIELD_NUMBER: _ClassVar[int]
    agent: CiAccessAsAgentCF
    impersonate: CiAccessAsImpersonateCF
    ci_job: CiAccessAsCiJobCF
    def __init__(self, agent: _Optional[_Union[CiAccessAsAgentCF, _Mapping]] = ..., impersonate: _Optional[_Union[CiAccessAsImpersonateCF, _Mapping]] = ..., ci_job: _Optional[_Union[CiAccessAsCiJobCF, _Mapping]] = ...) -> None: ...

class CiAccessAsAgentCF(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CiAccessAsCiJobCF(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CiAccessAsImpersonateCF(_message.Message):
    __slots__ = ("username", "groups", "uid", "extra")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    username: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    uid: str
    extra: _containers.RepeatedCompositeFieldContainer[ExtraKeyValCF]
    def __init__(self, username: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., uid: _Optional[str] = ..., extra: _Optional[_Iterable[_Union[ExtraKeyValCF, _Mapping]]] = ...) -> None: ...

class ExtraKeyValCF(_message.Message):
    __slots__ = ("key", "val")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VAL_FIELD_NUMBER: _ClassVar[int]
    key: str
    val: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., val: _Optional[_Iterable[str]] = ...) -> None: ...

class UserAccessCF(_message.Message):
    __slots__ = ("access_as", "projects", "groups")
    ACCESS_AS_FIELD_NUMBER: _ClassVar[int]
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    access_as: UserAccessAsCF
    projects: _containers.RepeatedCompositeFieldContainer[UserAccessProjectCF]
    groups: _containers.RepeatedCompositeFieldContainer[UserAccessGroupCF]
    def __init__(self, access_as: _Optional[_Union[UserAccessAsCF, _Mapping]] = ..., projects: _Optional[_Iterable[_Union[UserAccessProjectCF, _Mapping]]] = ..., groups: _Optional[_Iterable[_Union[UserAccessGroupCF, _Mapping]]] = ...) -> None: ...

class UserAccessProjectCF(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UserAccessGroupCF(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UserAccessAsCF(_message.Message):
    __slots__ = ("agent", "user")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    agent: UserAccessAsAgentCF
    user: UserAccessAsUserCF
    def __init__(self, agent: _Optional[_Union[UserAccessAsAgentCF, _Mapping]] = ..., user: _Optional[_Union[UserAccessAsUserCF, _Mapping]] = ...) -> None: ...

class UserAccessAsAgentCF(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UserAccessAsUserCF(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContainerScanningCF(_message.Message):
    __slots__ = ("vulnerability_report", "cadence", "resource_requirements")
    VULNERABILITY_REPORT_FIELD_NUMBER: _ClassVar[int]
    CADENCE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    vulnerability_report: VulnerabilityReport
    cadence: str
    resource_requirements: ResourceRequirements
    def __init__(self, vulnerability_report: _Optional[_Union[VulnerabilityReport, _Mapping]] = ..., cadence: _Optional[str] = ..., resource_requirements: _Optional[_Union[ResourceRequirements, _Mapping]] = ...) -> None: ...

class VulnerabilityReport(_message.Message):
    __slots__ = ("namespaces", "filters")
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.RepeatedCompositeFieldContainer[ContainerScanningFilter]
    def __init__(self, namespaces: _Optional[_Iterable[str]] = ..., filters: _Optional[_Iterable[_Union[ContainerScanningFilter, _Mapping]]] = ...) -> None: ...

class ContainerScanningFilter(_message.Message):
    __slots__ = ("namespaces", "resources", "containers", "kinds")
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    resources: _containers.RepeatedScalarFieldContainer[str]
    containers: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespaces: _Optional[_Iterable[str]] = ..., resources: _Optional[_Iterable[str]] = ..., containers: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class ResourceRequirements(_message.Message):
    __slots__ = ("limits", "requests")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    limits: Resource
    requests: Resource
    def __init__(self, limits: _Optional[_Union[Resource, _Mapping]] = ..., requests: _Optional[_Union[Resource, _Mapping]] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("cpu", "memory")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    cpu: str
    memory: str
    def __init__(self, cpu: _Optional[str] = ..., memory: _Optional[str] = ...) -> None: ...

class RemoteDevelopmentCF(_message.Message):
    __slots__ = ("enabled", "dns_zone", "partial_sync_interval", "full_sync_interval", "gitlab_workspaces_proxy", "network_policy")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DNS_ZONE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_SYNC_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    FULL_SYNC_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    GITLAB_WORKSPACES_PROXY_FIELD_NUMBER: _ClassVar[int]
    NETWORK_POLICY_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    dns_zone: str
    partial_sync_interval: _duration_pb2.Duration
    full_sync_interval: _duration_pb2.Duration
    gitlab_workspaces_proxy: GitLabWorkspacesProxy
    network_policy: WorkspaceNetworkPolicy
    def __init__(self, enabled: _Optional[bool] = ..., dns_zone: _Optional[str] = ..., partial_sync_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., full_sync_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., gitlab_workspaces_proxy: _Optional[_Union[GitLabWorkspacesProxy, _Mapping]] = ..., network_policy: _Optional[_Union[WorkspaceNetworkPolicy, _Mapping]] = ...) -> None: ...

class GitLabWorkspacesProxy(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class WorkspaceNetworkPolicy(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class FluxCF(_message.Message):
    __slots__ = ("webhook_receiver_url",)
    WEBHOOK_RECEIVER_URL_FIELD_NUMBER: _ClassVar[int]
    webhook_receiver_url: str
    def __init__(self, webhook_receiver_url: _Optional[str] = ...) -> None: ...
