"""What kubernetes_api counts for metrics: body bytes each way and the response status it sent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry

from agent_proto.gitlab.agent.grpctool import grpctool_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_runtime.environment import NoMetrics, WorkerMetrics
from agent_runtime.modules.kubernetes_api import frames
from agent_runtime.telemetry.metrics import RuntimeMetrics

Req = grpctool_pb2.HttpRequest


class MemoryCall:
    """A LocalCall over two lists: what kas sent, and what the handler sends back."""

    def __init__(self, incoming: list[bytes]) -> None:
        self._incoming = list(incoming)
        self.sent: list[bytes] = []

    @property
    def method(self) -> str:
        return "/gitlab.agent.kubernetes_api.rpc.KubernetesApi/MakeRequest"

    @property
    def metadata(self) -> Mapping[str, Sequence[str]]:
        return {}

    async def recv(self) -> bytes | None:
        return self._incoming.pop(0) if self._incoming else None

    async def send_header(self, meta: Mapping[str, Sequence[str]]) -> None:
        del meta

    async def send(self, message: bytes) -> None:
        self.sent.append(message)


def _header() -> bytes:
    request = prototool_pb2.HttpRequest(method="POST", url_path="/api/v1/namespaces/x/pods/p/exec")
    return Req(header=Req.Header(request=request, content_length=5)).SerializeToString()


async def test_request_frames_count_data_and_upgrade_bytes() -> None:
    stream = [
        _header(),
        Req(data=Req.Data(data=b"hello")).SerializeToString(),
        Req(trailer=Req.Trailer()).SerializeToString(),
        Req(upgradeData=Req.UpgradeData(data=b"x" * 1000)).SerializeToString(),
        Req(upgradeData=Req.UpgradeData(data=b"")).SerializeToString(),
    ]
    counted: list[int] = []
    request_frames = frames.RequestFrames(MemoryCall(stream), counted.append)
    while await request_frames.next() is not None:
        pass
    assert request_frames.body_bytes == 5 + 1000
    assert counted == [5, 1000], "told chunk by chunk, empty chunks skipped"


async def test_response_writer_remembers_status_and_counts_body_bytes() -> None:
    call = MemoryCall([])
    counted: list[int] = []
    writer = frames.ResponseWriter(call, counted.append)
    assert writer.status_code is None
    await writer.header(101, "101 Switching Protocols", {"Upgrade": ["SPDY/3.1"]})
    await writer.data(b"abc")
    await writer.trailer()
    await writer.upgrade_data(b"z" * 40_000)
    assert writer.status_code == 101
    assert writer.body_bytes == 3 + 40_000
    assert counted == [3, 40_000]
    decoded = [frames.HttpResponse.FromString(m).WhichOneof("message") for m in call.sent]
    assert decoded == ["header", "data", "trailer", "upgradeData"]


def test_both_sinks_implement_the_protocol() -> None:
    sinks: list[WorkerMetrics] = [NoMetrics(), RuntimeMetrics(CollectorRegistry())]
    for sink in sinks:
        sink.connection_attempt("ns/a", "Connect", "OK")
        sink.tunnel_request_done("ns/a", "MakeRequest", "200", 0.1)
        sink.bytes_received("ns/a", 10)
        sink.bytes_sent("ns/a", 20)
