from agent_proto.gitlab.agent.grpctool.automata import automata_pb2 as _automata_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2 as _prototool_pb2
from agent_proto.gitlab.agent.reverse_tunnel.info import info_pb2 as _info_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Descriptor(_message.Message):
    __slots__ = ("agent_descriptor",)
    AGENT_DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    agent_descriptor: _info_pb2.AgentDescriptor
    def __init__(self, agent_descriptor: _Optional[_Union[_info_pb2.AgentDescriptor, _Mapping]] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("meta",)
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _prototool_pb2.Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_prototool_pb2.Values, _Mapping]] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    meta: _containers.MessageMap[str, _prototool_pb2.Values]
    def __init__(self, meta: _Optional[_Mapping[str, _prototool_pb2.Values]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class Trailer(_message.Message):
    __slots__ = ("meta",)
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _prototool_pb2.Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_prototool_pb2.Values, _Mapping]] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    meta: _containers.MessageMap[str, _prototool_pb2.Values]
    def __init__(self, meta: _Optional[_Mapping[str, _prototool_pb2.Values]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _status_pb2.Status
    def __init__(self, status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("descriptor", "header", "message", "trailer", "error")
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    descriptor: Descriptor
    header: Header
    message: Message
    trailer: Trailer
    error: Error
    def __init__(self, descriptor: _Optional[_Union[Descriptor, _Mapping]] = ..., header: _Optional[_Union[Header, _Mapping]] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., trailer: _Optional[_Union[Trailer, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class RequestInfo(_message.Message):
    __slots__ = ("method_name", "meta")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _prototool_pb2.Values
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_prototool_pb2.Values, _Mapping]] = ...) -> None: ...
    METHOD_NAME_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    method_name: str
    meta: _containers.MessageMap[str, _prototool_pb2.Values]
    def __init__(self, method_name: _Optional[str] = ..., meta: _Optional[_Mapping[str, _prototool_pb2.Values]] = ...) -> None: ...

class CloseSend(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("request_info", "message", "close_send")
    REQUEST_INFO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_SEND_FIELD_NUMBER: _ClassVar[int]
    request_info: RequestInfo
    message: Message
    close_send: CloseSend
    def __init__(self, request_info: _Optional[_Union[RequestInfo, _Mapping]] = ..., message: _Optional[_Union[Message, _Mapping]] = ..., close_send: _Optional[_Union[CloseSend, _Mapping]] = ...) -> None: ...
