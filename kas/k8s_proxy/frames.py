"""grpctool.HttpRequest frames kas sends and grpctool.HttpResponse frames it receives (§4.2, §7.2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from google.protobuf.message import DecodeError

from agent_proto.flavor import ImpersonationConfig, WireNames
from agent_proto.gitlab.agent.grpctool import grpctool_pb2 as grpctool
from agent_proto.gitlab.agent.prototool import prototool_pb2 as prototool
from agent_proto.ordering import OrderingValidator, StreamOrderError

CHUNK_SIZE: Final = 32 * 1024
"""Largest body chunk per data/upgradeData frame, as GitLab's kas sends them."""


@dataclass(frozen=True)
class RequestHead:
    """Everything of the client's request that goes into the header frame."""

    method: str
    url_path: str
    header: Mapping[str, Sequence[str]]
    query: Mapping[str, Sequence[str]]
    content_length: int
    """-1 unknown (chunked), 0 no body, > 0 exact size."""
    impersonation: ImpersonationConfig | None


def _values(mapping: Mapping[str, Sequence[str]]) -> dict[str, prototool.Values]:
    return {key: prototool.Values(value=list(values)) for key, values in mapping.items()}


def header_frame(head: RequestHead, names: WireNames) -> bytes:
    header = grpctool.HttpRequest.Header(
        request=prototool.HttpRequest(
            method=head.method,
            header=_values(head.header),
            url_path=head.url_path,
            query=_values(head.query),
        ),
        content_length=head.content_length,
    )
    if head.impersonation is not None and not head.impersonation.is_empty():
        header.extra.CopyFrom(names.pack_header_extra(head.impersonation))
    return grpctool.HttpRequest(header=header).SerializeToString()


def data_frame(chunk: bytes) -> bytes:
    return grpctool.HttpRequest(data=grpctool.HttpRequest.Data(data=chunk)).SerializeToString()


def trailer_frame() -> bytes:
    return grpctool.HttpRequest(trailer=grpctool.HttpRequest.Trailer()).SerializeToString()


def upgrade_data_frame(chunk: bytes) -> bytes:
    return grpctool.HttpRequest(upgradeData=grpctool.HttpRequest.UpgradeData(data=chunk)).SerializeToString()


@dataclass(frozen=True)
class ResponseHead:
    status_code: int
    reason: str
    header: Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class ResponseBody:
    data: bytes


@dataclass(frozen=True)
class ResponseEnd:
    """The trailer frame: the response body is complete."""


@dataclass(frozen=True)
class ResponseUpgradeData:
    data: bytes


ResponseFrame = ResponseHead | ResponseBody | ResponseEnd | ResponseUpgradeData


class ResponseFrameError(Exception):
    """The agent sent an undecodable or out-of-order HttpResponse frame."""


class ResponseDecoder:
    """Decodes the agent's HttpResponse messages in order, enforcing the allowed orderings."""

    def __init__(self) -> None:
        self._order = OrderingValidator(grpctool.HttpResponse, "message")

    def decode(self, data: bytes) -> ResponseFrame:
        try:
            message = grpctool.HttpResponse.FromString(data)
            member = self._order.accept(message)
        except (DecodeError, StreamOrderError) as err:
            raise ResponseFrameError(f"invalid HttpResponse frame: {err}") from None
        if member == "header":
            response = message.header.response
            return ResponseHead(
                status_code=response.status_code,
                reason=_reason(response.status_code, response.status),
                header={key: list(values.value) for key, values in response.header.items()},
            )
        if member == "data":
            return ResponseBody(message.data.data)
        if member == "trailer":
            return ResponseEnd()
        return ResponseUpgradeData(message.upgradeData.data)


def _reason(code: int, status: str) -> str:
    """ "200 OK" -> "OK" (Go puts the code in front of the reason phrase); anything else is kept."""
    prefix = f"{code} "
    return status[len(prefix) :] if status.startswith(prefix) else status
