"""Receive-side ordering of ConnectResponse frames (PROTOCOL.md §4.3) as the tunnel enforces it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2
from agent_proto.ordering import StreamOrderError
from agent_runtime.modules.reverse_tunnel.frames import ResponseReader, request_metadata

INFO = rpc_pb2.ConnectResponse(request_info=rpc_pb2.RequestInfo(method_name="/a.B/C")).SerializeToString()
MSG = rpc_pb2.ConnectResponse(message=rpc_pb2.Message(data=b"x")).SerializeToString()
CLOSE = rpc_pb2.ConnectResponse(close_send=rpc_pb2.CloseSend()).SerializeToString()
EMPTY = rpc_pb2.ConnectResponse().SerializeToString()


def feed(frames: list[bytes], end: bool = True) -> None:
    reader = ResponseReader()
    for f in frames:
        reader.decode(f)
    if end:
        reader.end()


@pytest.mark.parametrize("frames", [[], [INFO], [INFO, MSG, MSG, CLOSE], [INFO, CLOSE]])
def test_allowed(frames: list[bytes]) -> None:
    feed(frames)


@pytest.mark.parametrize(
    "frames", [[MSG], [CLOSE], [INFO, INFO], [INFO, CLOSE, MSG], [EMPTY], [b"\xff\xff\xff"], [INFO, b"\x0a"]]
)
def test_rejected(frames: list[bytes]) -> None:
    with pytest.raises(StreamOrderError):
        feed(frames, end=False)


def test_request_metadata_drops_pseudo_and_reserved() -> None:
    from agent_proto.gitlab.agent.prototool import prototool_pb2

    meta = {
        ":authority": prototool_pb2.Values(value=["kas"]),
        "grpc-timeout": prototool_pb2.Values(value=["1S"]),
        "user-agent": prototool_pb2.Values(value=["x"]),
    }
    assert request_metadata(meta) == {"user-agent": ["x"]}


@given(st.lists(st.binary(max_size=40), max_size=6))
def test_arbitrary_bytes_only_raise_order_errors(frames: list[bytes]) -> None:
    reader = ResponseReader()
    try:
        for f in frames:
            reader.decode(f)
        reader.end()
    except StreamOrderError:
        pass
