from agent_proto.gitlab.agent.agent_tracker import agent_tracker_pb2 as _agent_tracker_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetConnectedAgentsRequest(_message.Message):
    __slots__ = ("project_id", "agent_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: int
    agent_id: int
    def __init__(self, project_id: _Optional[int] = ..., agent_id: _Optional[int] = ...) -> None: ...

class GetConnectedAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[_agent_tracker_pb2.ConnectedAgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[_agent_tracker_pb2.ConnectedAgentInfo, _Mapping]]] = ...) -> None: ...
