"""Encoding of the ConnectRequest frames agentk sends and decoding of kas's ConnectResponse (§6.3)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from google.protobuf.message import DecodeError
from google.rpc import status_pb2  # type: ignore[import-untyped,unused-ignore]  # no stubs in some installs

from agent_proto.flavor import WireNames
from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2
from agent_proto.ordering import OrderingValidator, StreamOrderError
from agent_runtime.rpc_status import StatusCode

Meta = Mapping[str, Sequence[str]]


@functools.cache
def descriptor(wire: WireNames) -> bytes:
    """The first frame of every tunnel: what the agent serves (the same bytes every time: built once)."""
    return rpc_pb2.ConnectRequest(
        descriptor=rpc_pb2.Descriptor(agent_descriptor=wire.agent_descriptor())
    ).SerializeToString()


def _values(meta: Meta) -> dict[str, prototool_pb2.Values]:
    return {k: prototool_pb2.Values(value=list(v)) for k, v in meta.items()}


def header(meta: Meta) -> bytes:
    """Response header metadata of the tunnelled call."""
    return rpc_pb2.ConnectRequest(header=rpc_pb2.Header(meta=_values(meta))).SerializeToString()


def message(data: bytes) -> bytes:
    """One raw response message."""
    return rpc_pb2.ConnectRequest(message=rpc_pb2.Message(data=data)).SerializeToString()


def trailer(meta: Meta) -> bytes:
    """Response trailer metadata."""
    return rpc_pb2.ConnectRequest(trailer=rpc_pb2.Trailer(meta=_values(meta))).SerializeToString()


def error(code: StatusCode, text: str) -> bytes:
    """The call's final non-OK status."""
    status = status_pb2.Status(code=int(code), message=text)
    return rpc_pb2.ConnectRequest(error=rpc_pb2.Error(status=status)).SerializeToString()


def request_metadata(meta: Mapping[str, prototool_pb2.Values]) -> dict[str, list[str]]:
    """RequestInfo.meta without pseudo-headers and reserved grpc-* keys (§6.3.3)."""
    return {k: list(v.value) for k, v in meta.items() if not k.startswith((":", "grpc-"))}


class ResponseReader:
    """Decodes kas's frames and enforces their order (§4.3); errors raise StreamOrderError."""

    def __init__(self) -> None:
        self._validator = OrderingValidator(rpc_pb2.ConnectResponse, "msg")

    def decode(self, raw: bytes) -> rpc_pb2.ConnectResponse:
        """Parse and check one frame."""
        try:
            frame = rpc_pb2.ConnectResponse.FromString(raw)
        except DecodeError as e:
            raise StreamOrderError(f"cannot decode ConnectResponse: {e}") from e
        self._validator.accept(frame)
        return frame

    def end(self) -> None:
        """kas ended the stream."""
        self._validator.end()
