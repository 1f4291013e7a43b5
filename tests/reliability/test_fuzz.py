"""Bad input, fuzzed with hypothesis (issue 13 §5): tunnel frames and HTTP framing from kas against a live
worker, WebSocket frames through the ws codec both sides use, agent configuration documents.

The property everywhere: bad input ends one stream (or one configuration) with an error; the worker never
crashes, no stream stays stuck, and the next request is served. Sizes: RELIABILITY_FUZZ_TUNNEL,
RELIABILITY_FUZZ_WS, RELIABILITY_FUZZ_CONFIG (or RELIABILITY_LONG=1 for the recorded run's).

The invalid GitLabAgent specs refused by the real apiserver (44 of them, each naming its field) are
tests/integration/operator_api/test_crd_validation.py with tests/unit/operator_api/cases.py.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_proto.flavor import wire_names
from agent_proto.gitlab.agent.agent_configuration.rpc import rpc_pb2 as config_rpc
from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_proto.gitlab.agent.grpctool import grpctool_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from agent_proto.ordering import StreamOrderError
from agent_proto.wstunnel import (
    Close,
    Data,
    FrameDecoder,
    Opcode,
    Ping,
    Pong,
    WebSocketProtocolError,
    encode_binary,
    encode_close,
    encode_frame,
)
from agent_runtime.local_rpc import RpcStatusError
from agent_runtime.modules.agent_configuration.module import ConfigurationModule, InvalidResponseError
from agent_runtime.modules.kubernetes_api.frames import RequestFrames
from agent_runtime.modules.reverse_tunnel.frames import ResponseReader
from tests.integration.runtime.fake_kas import FakeKas, FakeTunnel, http
from tests.reliability.figures import record, scale
from tests.reliability.live_worker import LiveWorker
from tests.support.k8s_cluster import LocalCluster

WIRE = wire_names("gitlab")
T = TypeVar("T")
TUNNEL_CASES = scale("fuzz_tunnel", ci=60, recorded=1000)
WS_CASES = scale("fuzz_ws", ci=2000, recorded=100_000)
CONFIG_CASES = scale("fuzz_config", ci=2000, recorded=100_000)
STREAM_BOUND_S = 15.0
"""A stream must end this long after kas ended its side (or after the request's close_send)."""
SANITY_EVERY = 25
"""A well-formed request after this many fuzzed ones must still be served."""
OVERSIZED = 300 * 1024
"""Above the worker's 256 KiB receive limit (agent_runtime/transport/channel.py)."""

# --- strategies -----------------------------------------------------------------------------------
_texts = st.text(max_size=24)
_values = st.lists(_texts, max_size=3).map(lambda v: prototool_pb2.Values(value=v))
_header_maps = st.dictionaries(
    st.one_of(_texts, st.sampled_from(["Impersonate-User", "Host", "Te"])), _values, max_size=4
)
_paths = st.one_of(st.sampled_from(["/api", "/api/v1/namespaces", "/version", "/apis"]), _texts)
_methods = st.one_of(st.sampled_from(["GET", "POST", "DELETE", "CONNECT"]), _texts)


_TRAILER = grpctool_pb2.HttpRequest(trailer=grpctool_pb2.HttpRequest.Trailer()).SerializeToString()


def _header(method: str, path: str, header: dict[str, prototool_pb2.Values], length: int) -> bytes:
    request = prototool_pb2.HttpRequest(method=method, url_path=path, header=header)
    framed = grpctool_pb2.HttpRequest.Header(request=request, content_length=length)
    return grpctool_pb2.HttpRequest(header=framed).SerializeToString()


_http_messages = st.one_of(
    st.builds(_header, _methods, _paths, _header_maps, st.integers(-2, 1 << 40)),
    st.binary(max_size=64).map(
        lambda b: grpctool_pb2.HttpRequest(data=grpctool_pb2.HttpRequest.Data(data=b)).SerializeToString()
    ),
    st.just(_TRAILER),
    st.binary(max_size=48),  # not an HttpRequest at all
)
_truncated = st.tuples(_http_messages, st.integers(0, 40)).map(lambda t: t[0][: t[1]])


def _message(data: bytes) -> tunnel_rpc.ConnectResponse:
    return tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=data))


_frames = st.one_of(
    st.one_of(st.just(WIRE.make_request_path), _texts).map(
        lambda m: tunnel_rpc.ConnectResponse(request_info=tunnel_rpc.RequestInfo(method_name=m))
    ),
    st.one_of(_http_messages, _truncated).map(_message),
    st.just(tunnel_rpc.ConnectResponse(close_send=tunnel_rpc.CloseSend())),
    st.binary(min_size=1, max_size=32),  # a ConnectResponse that does not decode
    st.just(b"oversized").map(lambda _: _message(b"\0" * OVERSIZED)),
)
_request_info = tunnel_rpc.ConnectResponse(
    request_info=tunnel_rpc.RequestInfo(method_name=WIRE.make_request_path)
)
# Most sequences start like a real request, so the fuzzing reaches the HTTP framing behind request_info.
_sequences = st.one_of(
    st.lists(_frames, max_size=8).map(lambda f: [_request_info, *f]),
    st.lists(_frames, max_size=8),
)


# --- tunnel frames against a live worker ----------------------------------------------------------
@pytest.fixture(scope="module")
def live(k8s_cluster: LocalCluster, admin_kubeconfig: Path) -> Iterator[LiveWorker]:
    namespace = f"fuzz-{secrets.token_hex(3)}"
    k8s_cluster.create_namespace(namespace)
    worker = LiveWorker(admin_kubeconfig, namespace).start()
    try:
        yield worker
    finally:
        worker.close()
        k8s_cluster.delete_namespace(namespace)


ENDINGS: Counter[str] = Counter()
SECONDS: dict[str, float] = {"waiting_for_a_tunnel": 0.0, "in_the_stream": 0.0}
"""Where the tunnel fuzzing's time goes: waiting for the worker's next tunnel, or in the stream."""


async def _drain(tunnel: FakeTunnel) -> str:
    """Read what the worker answers until it ends its side; how the stream ended."""
    try:
        async with asyncio.timeout(STREAM_BOUND_S):
            while (frame := await tunnel.recv()) is not None:
                if frame.WhichOneof("msg") == "error":
                    return "error frame"
    except TimeoutError:
        return "stuck"
    except Exception:  # noqa: BLE001 - any end of the call counts as an end; the kind is the figure
        return "call ended"
    return "response"


async def _one(live: LiveWorker, frames: list[tunnel_rpc.ConnectResponse | bytes]) -> str:
    """Send one fuzzed sequence on a fresh tunnel, end kas's side, wait for the worker to let go."""
    assert live.worker is not None
    began = time.monotonic()
    tunnel = await asyncio.wait_for(live.kas.tunnels.get(), 60)
    got_tunnel = time.monotonic()
    SECONDS["waiting_for_a_tunnel"] += got_tunnel - began
    ending = "kas ended"
    try:
        for frame in frames:
            await tunnel.send(frame)
    except Exception:  # noqa: BLE001 - the worker ended the call mid-sequence: that is one way to refuse
        ending = "worker ended the call"
    else:
        if any(isinstance(f, tunnel_rpc.ConnectResponse) and f.HasField("close_send") for f in frames):
            ending = await _drain(tunnel)
    tunnel.finish()
    async with asyncio.timeout(STREAM_BOUND_S):
        while live.worker.snapshot.tunnels_active:  # noqa: ASYNC110 - polling the snapshot, bounded
            await asyncio.sleep(0.005)
    SECONDS["in_the_stream"] += time.monotonic() - got_tunnel
    return ending


async def _sanity(live: LiveWorker, namespace: str) -> int:
    """A well-formed request: the API server's answer (403, the worker's identity has no rights)."""
    result = await http(live.kas, "GET", f"/api/v1/namespaces/{namespace}/configmaps")
    return result.status


@settings(
    max_examples=TUNNEL_CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(frames=_sequences)
@pytest.mark.timeout(120 + 3 * TUNNEL_CASES)  # ~1 s a case: the worker backs off after a refused stream
def test_fuzzed_tunnel_frames(live: LiveWorker, frames: list[tunnel_rpc.ConnectResponse | bytes]) -> None:
    ending = live.run(_one(live, frames))
    ENDINGS[ending] += 1
    assert ending != "stuck", frames
    assert live.alive, "the worker crashed"
    if sum(ENDINGS.values()) % SANITY_EVERY == 0:
        assert live.run(_sanity(live, "default")) == 403


def test_worker_serves_after_the_fuzzing(live: LiveWorker) -> None:
    """Runs after the fuzzing (file order): the same worker still serves, and the figure is recorded."""
    assert live.alive
    assert live.run(_sanity(live, "default")) == 403
    record(
        "fuzz: tunnel frames (live worker)",
        cases=sum(ENDINGS.values()),
        stuck=0,
        crashed=0,
        **ENDINGS,
        **SECONDS,
    )


# --- the same frames through the worker's own decoders, at volume -----------------------------------
FRAMES_CASES = scale("fuzz_frames", ci=2000, recorded=100_000)
FRAME_OUTCOMES: Counter[str] = Counter()
_FRAME_KINDS = {
    "tunnel frames accepted",
    "tunnel frames refused",
    "http framing accepted",
    f"http framing refused {grpc.StatusCode.INVALID_ARGUMENT.name}",
}


class _ScriptedCall:
    """A LocalCall whose request messages are a list (RequestFrames only calls recv())."""

    method = WIRE.make_request_path
    metadata: dict[str, list[str]] = {}  # noqa: RUF012 - read-only here

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = iter(messages)

    async def recv(self) -> bytes | None:
        return next(self._messages, None)

    async def send_header(self, meta: object) -> None:
        raise AssertionError("RequestFrames never sends")

    async def send(self, message: bytes) -> None:
        raise AssertionError("RequestFrames never sends")


def _complete(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (its awaits return at once) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coro.close()
    raise AssertionError("the coroutine suspended")


def _raw(frame: tunnel_rpc.ConnectResponse | bytes) -> bytes:
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


_data = st.binary(max_size=64).map(
    lambda b: grpctool_pb2.HttpRequest(data=grpctool_pb2.HttpRequest.Data(data=b)).SerializeToString()
)
_well_formed = st.tuples(
    st.builds(_header, _methods, _paths, _header_maps, st.integers(-2, 1 << 40)),
    st.lists(_data, max_size=3),
    st.booleans(),
).map(lambda t: [t[0], *t[1], *([_TRAILER] if t[2] else [])])
_http_streams = st.one_of(_well_formed, st.lists(st.one_of(_http_messages, _truncated), max_size=6))


@settings(
    max_examples=FRAMES_CASES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(frames=_sequences, http_stream=_http_streams)
def test_fuzzed_frames_through_the_decoders(
    frames: list[tunnel_rpc.ConnectResponse | bytes], http_stream: list[bytes]
) -> None:
    """ConnectResponse frames through ResponseReader, their messages through RequestFrames: the only
    failures are the typed ones that end that stream (StreamOrderError, RpcStatusError INVALID_ARGUMENT)."""
    reader = ResponseReader()
    messages: list[bytes] = []
    try:
        for frame in frames:
            decoded = reader.decode(_raw(frame))
            if decoded.HasField("message"):
                messages.append(decoded.message.data)
        reader.end()
        FRAME_OUTCOMES["tunnel frames accepted"] += 1
    except StreamOrderError:
        FRAME_OUTCOMES["tunnel frames refused"] += 1
    # The messages the tunnel frames carried, else (most sequences are refused early) an HTTP stream of
    # its own, so the HTTP framing is fuzzed as often as the tunnel framing.
    request = RequestFrames(_ScriptedCall(messages if len(messages) > 1 else http_stream))
    try:
        while _complete(request.next()) is not None:
            pass
        FRAME_OUTCOMES["http framing accepted"] += 1
    except RpcStatusError as err:
        FRAME_OUTCOMES[f"http framing refused {err.code.name}"] += 1
    assert set(FRAME_OUTCOMES) <= _FRAME_KINDS, FRAME_OUTCOMES


def test_frame_decoder_fuzz_figure() -> None:
    record("fuzz: tunnel frames + HTTP framing (decoders)", cases=FRAMES_CASES, **FRAME_OUTCOMES)
    assert sum(FRAME_OUTCOMES.values()) >= 2


# --- WebSocket frames -----------------------------------------------------------------------------
def _mutate(frames: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    raw = bytearray(frames)
    for position, value in flips:
        if raw:
            raw[position % len(raw)] = value
    return bytes(raw if cut is None else raw[:cut])


_valid_ws = st.lists(
    st.one_of(
        st.binary(max_size=300).map(lambda p: ("bin", p)),
        st.binary(max_size=125).map(lambda p: ("ping", p)),
        st.binary(max_size=125).map(lambda p: ("pong", p)),
    ),
    max_size=5,
)
WS_EVENTS: Counter[str] = Counter()


def _encode(items: list[tuple[str, bytes]], mask: bool) -> bytes:
    opcodes = {"ping": Opcode.PING, "pong": Opcode.PONG}
    out = b""
    for kind, payload in items:
        out += (
            encode_binary(payload, mask=mask)
            if kind == "bin"
            else encode_frame(opcodes[kind], payload, mask=mask)
        )
    return out


@settings(max_examples=WS_CASES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=_valid_ws,
    mask=st.booleans(),
    flips=st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 2048)),
    tail=st.binary(max_size=40),
    split=st.integers(1, 64),
)
def test_fuzzed_websocket_frames(
    items: list[tuple[str, bytes]],
    mask: bool,
    flips: list[tuple[int, int]],
    cut: int | None,
    tail: bytes,
    split: int,
) -> None:
    """Valid frames decode to their payload under any chunking; mutated ones raise only the protocol error."""
    stream = _encode(items, mask)
    decoder = FrameDecoder(expect_masked=mask, max_message_size=4096)
    got = b""
    for i in range(0, len(stream), split):
        got += b"".join(e.payload for e in decoder.feed(stream[i : i + split]) if isinstance(e, Data))
    assert got == b"".join(p for k, p in items if k == "bin")

    mutated = _mutate(stream, flips, cut) + tail + encode_close(1000, mask=mask)
    decoder = FrameDecoder(expect_masked=mask, max_message_size=4096)
    try:
        for i in range(0, len(mutated), split):
            for event in decoder.feed(mutated[i : i + split]):
                assert isinstance(event, Data | Ping | Pong | Close)
                WS_EVENTS[type(event).__name__] += 1
        WS_EVENTS["clean"] += 1
    except WebSocketProtocolError as err:
        WS_EVENTS[f"refused {err.code.name}"] += 1
    WS_EVENTS["cases"] += 1


def test_websocket_fuzz_figure() -> None:
    record("fuzz: WebSocket frames (codec)", **WS_EVENTS)
    assert WS_EVENTS["cases"] >= 1


# --- agent configuration documents -----------------------------------------------------------------
def _config(agent_id: int, url: str, commit: str, projects: list[str]) -> bytes:
    config = agentcfg_pb2.AgentConfiguration(agent_id=agent_id, gitlab_external_url=url)
    for project in projects:
        config.ci_access.projects.add(id=project)
    return config_rpc.ConfigurationResponse(configuration=config, commit_id=commit).SerializeToString()


_documents = st.one_of(
    st.builds(_config, st.integers(-(1 << 63), (1 << 63) - 1), _texts, _texts, st.lists(_texts, max_size=3)),
    st.binary(max_size=200),
    st.tuples(
        st.builds(_config, st.integers(0, 1 << 40), _texts, _texts, st.lists(_texts, max_size=3)),
        st.integers(0, 200),
    ).map(lambda t: t[0][: t[1]]),
)
CONFIG_OUTCOMES: Counter[str] = Counter()


@settings(
    max_examples=CONFIG_CASES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(raw=_documents)
def test_fuzzed_configuration_documents(raw: bytes) -> None:
    """The worker's own parser: a document is accepted or refused with InvalidResponseError, nothing else."""
    try:
        parsed = ConfigurationModule._parse(raw)
    except InvalidResponseError:
        CONFIG_OUTCOMES["refused"] += 1
    else:
        assert parsed.commit_id
        CONFIG_OUTCOMES["accepted"] += 1


def test_fuzzed_configurations_on_a_live_stream(k8s_cluster: LocalCluster, admin_kubeconfig: Path) -> None:
    """kas sends a stream of decodable but odd documents, then a broken one: the worker refuses what it
    must, reports it, and its tunnels keep serving."""
    documents = [
        _config(42, "http://[::1", "c1", ["group/a"]),  # a URL urlsplit refuses
        _config(42, "", "", []),  # no commit id
        _config(43, "", "c2", []),  # another agent id than the first accepted one
        _config(42, "https://gitlab.example", "c3", ["\x00", "ü" * 200]),
        b"\xff\xff\xff",  # not a ConfigurationResponse
    ]
    kas = FakeKas(config_responses=documents)
    live = LiveWorker(admin_kubeconfig, "default", kas=kas).start()
    try:
        status = live.run(_sanity(live, "default"))
        assert live.worker is not None
        snapshot = live.worker.snapshot
        assert live.alive
    finally:
        live.close()
    assert status == 403
    record(
        "fuzz: configuration documents",
        parser_cases=sum(CONFIG_OUTCOMES.values()),
        **CONFIG_OUTCOMES,
        live_stream_documents=len(documents),
        live_last_error=str(snapshot.last_error)[:120] if snapshot.last_error else None,
    )
