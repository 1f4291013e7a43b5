from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeaderExtra(_message.Message):
    __slots__ = ("imp_config",)
    IMP_CONFIG_FIELD_NUMBER: _ClassVar[int]
    imp_config: ImpersonationConfig
    def __init__(self, imp_config: _Optional[_Union[ImpersonationConfig, _Mapping]] = ...) -> None: ...

class ImpersonationConfig(_message.Message):
    __slots__ = ("username", "groups", "roles", "uid")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    username: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    uid: str
    def __init__(self, username: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ..., uid: _Optional[str] = ...) -> None: ...
