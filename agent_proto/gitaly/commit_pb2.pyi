from agent_proto.gitaly import shared_pb2 as _shared_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TreeEntryRequest(_message.Message):
    __slots__ = ("repository", "revision", "path", "limit", "max_size")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    repository: _shared_pb2.Repository
    revision: bytes
    path: bytes
    limit: int
    max_size: int
    def __init__(self, repository: _Optional[_Union[_shared_pb2.Repository, _Mapping]] = ..., revision: _Optional[bytes] = ..., path: _Optional[bytes] = ..., limit: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...

class TreeEntryResponse(_message.Message):
    __slots__ = ("type", "oid", "size", "mode", "data")
    class ObjectType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        COMMIT: _ClassVar[TreeEntryResponse.ObjectType]
        BLOB: _ClassVar[TreeEntryResponse.ObjectType]
        TREE: _ClassVar[TreeEntryResponse.ObjectType]
        TAG: _ClassVar[TreeEntryResponse.ObjectType]
    COMMIT: TreeEntryResponse.ObjectType
    BLOB: TreeEntryResponse.ObjectType
    TREE: TreeEntryResponse.ObjectType
    TAG: TreeEntryResponse.ObjectType
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    type: TreeEntryResponse.ObjectType
    oid: str
    size: int
    mode: int
    data: bytes
    def __init__(self, type: _Optional[_Union[TreeEntryResponse.ObjectType, str]] = ..., oid: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
