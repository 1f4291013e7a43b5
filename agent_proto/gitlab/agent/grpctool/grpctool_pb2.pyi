from agent_proto.gitlab.agent.grpctool.automata import automata_pb2 as _automata_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2 as _prototool_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HttpRequest(_message.Message):
    __slots__ = ("header", "data", "trailer", "upgradeData")
    class Header(_message.Message):
        __slots__ = ("request", "extra", "content_length")
        REQUEST_FIELD_NUMBER: _ClassVar[int]
        EXTRA_FIELD_NUMBER: _ClassVar[int]
        CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
        request: _prototool_pb2.HttpRequest
        extra: _any_pb2.Any
        content_length: int
        def __init__(self, request: _Optional[_Union[_prototool_pb2.HttpRequest, _Mapping]] = ..., extra: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., content_length: _Optional[int] = ...) -> None: ...
    class Data(_message.Message):
        __slots__ = ("data",)
        DATA_FIELD_NUMBER: _ClassVar[int]
        data: bytes
        def __init__(self, data: _Optional[bytes] = ...) -> None: ...
    class Trailer(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class UpgradeData(_message.Message):
        __slots__ = ("data",)
        DATA_FIELD_NUMBER: _ClassVar[int]
        data: bytes
        def __init__(self, data: _Optional[bytes] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    UPGRADEDATA_FIELD_NUMBER: _ClassVar[int]
    header: HttpRequest.Header
    data: HttpRequest.Data
    trailer: HttpRequest.Trailer
    upgradeData: HttpRequest.UpgradeData
    def __init__(self, header: _Optional[_Union[HttpRequest.Header, _Mapping]] = ..., data: _Optional[_Union[HttpRequest.Data, _Mapping]] = ..., trailer: _Optional[_Union[HttpRequest.Trailer, _Mapping]] = ..., upgradeData: _Optional[_Union[HttpRequest.UpgradeData, _Mapping]] = ...) -> None: ...

class HttpResponse(_message.Message):
    __slots__ = ("header", "data", "trailer", "upgradeData")
    class Header(_message.Message):
        __slots__ = ("response",)
        RESPONSE_FIELD_NUMBER: _ClassVar[int]
        response: _prototool_pb2.HttpResponse
        def __init__(self, response: _Optional[_Union[_prototool_pb2.HttpResponse, _Mapping]] = ...) -> None: ...
    class Data(_message.Message):
        __slots__ = ("data",)
        DATA_FIELD_NUMBER: _ClassVar[int]
        data: bytes
        def __init__(self, data: _Optional[bytes] = ...) -> None: ...
    class Trailer(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class UpgradeData(_message.Message):
        __slots__ = ("data",)
        DATA_FIELD_NUMBER: _ClassVar[int]
        data: bytes
        def __init__(self, data: _Optional[bytes] = ...) -> None: ...
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    UPGRADEDATA_FIELD_NUMBER: _ClassVar[int]
    header: HttpResponse.Header
    data: HttpResponse.Data
    trailer: HttpResponse.Trailer
    upgradeData: HttpResponse.UpgradeData
    def __init__(self, header: _Optional[_Union[HttpResponse.Header, _Mapping]] = ..., data: _Optional[_Union[HttpResponse.Data, _Mapping]] = ..., trailer: _Optional[_Union[HttpResponse.Trailer, _Mapping]] = ..., upgradeData: _Optional[_Union[HttpResponse.UpgradeData, _Mapping]] = ...) -> None: ...
