from agent_proto.gitlab.agent.grpctool.automata import automata_pb2 as _automata_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2 as _prototool_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartStreaming(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayKasResponse(_message.Message):
    __slots__ = ("tunnel_ready", "header", "message", "trailer", "error", "no_tunnel")
    class TunnelReady(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
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
    class NoTunnel(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    TUNNEL_READY_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NO_TUNNEL_FIELD_NUMBER: _ClassVar[int]
    tunnel_ready: GatewayKasResponse.TunnelReady
    header: GatewayKasResponse.Header
    message: GatewayKasResponse.Message
    trailer: GatewayKasResponse.Trailer
    error: GatewayKasResponse.Error
    no_tunnel: GatewayKasResponse.NoTunnel
    def __init__(self, tunnel_ready: _Optional[_Union[GatewayKasResponse.TunnelReady, _Mapping]] = ..., header: _Optional[_Union[GatewayKasResponse.Header, _Mapping]] = ..., message: _Optional[_Union[GatewayKasResponse.Message, _Mapping]] = ..., trailer: _Optional[_Union[GatewayKasResponse.Trailer, _Mapping]] = ..., error: _Optional[_Union[GatewayKasResponse.Error, _Mapping]] = ..., no_tunnel: _Optional[_Union[GatewayKasResponse.NoTunnel, _Mapping]] = ...) -> None: ...
