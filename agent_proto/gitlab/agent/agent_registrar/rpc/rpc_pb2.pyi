from agent_proto.gitlab.agent.entity import entity_pb2 as _entity_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("agent_meta", "pod_id")
    AGENT_META_FIELD_NUMBER: _ClassVar[int]
    POD_ID_FIELD_NUMBER: _ClassVar[int]
    agent_meta: _entity_pb2.AgentMeta
    pod_id: int
    def __init__(self, agent_meta: _Optional[_Union[_entity_pb2.AgentMeta, _Mapping]] = ..., pod_id: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
