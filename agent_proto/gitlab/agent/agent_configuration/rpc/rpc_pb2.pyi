from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2 as _agentcfg_pb2
from agent_proto.gitlab.agent.entity import entity_pb2 as _entity_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigurationRequest(_message.Message):
    __slots__ = ("commit_id", "agent_meta", "skip_register")
    COMMIT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_META_FIELD_NUMBER: _ClassVar[int]
    SKIP_REGISTER_FIELD_NUMBER: _ClassVar[int]
    commit_id: str
    agent_meta: _entity_pb2.AgentMeta
    skip_register: bool
    def __init__(self, commit_id: _Optional[str] = ..., agent_meta: _Optional[_Union[_entity_pb2.AgentMeta, _Mapping]] = ..., skip_register: _Optional[bool] = ...) -> None: ...

class ConfigurationResponse(_message.Message):
    __slots__ = ("configuration", "commit_id")
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    COMMIT_ID_FIELD_NUMBER: _ClassVar[int]
    configuration: _agentcfg_pb2.AgentConfiguration
    commit_id: str
    def __init__(self, configuration: _Optional[_Union[_agentcfg_pb2.AgentConfiguration, _Mapping]] = ..., commit_id: _Optional[str] = ...) -> None: ...
