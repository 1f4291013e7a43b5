from agent_proto.gitaly import shared_pb2 as _shared_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRefsRequest(_message.Message):
    __slots__ = ("repository", "git_config_options", "git_protocol")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    GIT_CONFIG_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    GIT_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    git_config_options: _containers.RepeatedScalarFieldContainer[str]
    git_protocol: str
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., git_config_options: _Optional[_Iterable[str]] = ..., git_protocol: _Optional[str] = ...) -> None: ...

class InfoRefsResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...
