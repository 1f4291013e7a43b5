from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ExpiringValue(_message.Message):
    __slots__ = ("expires_at", "value")
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    expires_at: int
    value: bytes
    def __init__(self, expires_at: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
