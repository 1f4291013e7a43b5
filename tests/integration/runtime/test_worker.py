"""The Worker end to end: fake kas on loopback ⇄ Worker ⇄ real kube-apiserver."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from asyncio import selector_events

import grpc
import pytest
from google.protobuf.message import DecodeError
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # grpc.aio raises this class; no stubs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_proto.flavor import ImpersonationConfig
from agent_proto.gitlab.agent.grpctool import grpctool_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from agent_runtime.constants import AGENTK_PROTOCOL_VERSION
from agent_runtime.rpc_status import StatusCode
from agent_runtime.spec import ErrorReason, Phase, ServiceAccountRef
from agent_runtime.transport.channel import KasTransport
from agent_runtime.transport.h2.frames import Flag, FrameType
from tests.integration.runtime.conftest import BOTH_TRANSPORTS, WorkerFactory, eventually
from tests.integration.runtime.fake_kas import (
    AGENT_ID,
    WIRE,
    FakeKas,
    http,
    http_request_frames,
    read_response,
    start_request,
)
from tests.support.k8s_cluster import LocalCluster


@BOTH_TRANSPORTS
async def test_connects_registers_and_reports(
    kas: FakeKas, start_worker: WorkerFactory, transport: KasTransport
) -> None:
    worker = start_worker(transport=transport)
    await eventually(lambda: worker.snapshot.agent_id == AGENT_ID and worker.snapshot.registered)
    snap = worker.snapshot
    assert snap.phase is Phase.CONNECTED
    assert snap.config_commit == "c0ffee"
    assert snap.kubernetes_version
    assert snap.kubernetes_version.startswith("v1.")
    assert snap.agent_version == AGENTK_PROTOCOL_VERSION
    reg = kas.registers[-1]
    assert reg.agent_meta.version == AGENTK_PROTOCOL_VERSION
    assert reg.agent_meta.commit_id.startswith("gao-")
    assert reg.agent_meta.kubernetes_version.git_version == snap.kubernetes_version
    assert 0 <= reg.pod_id < 2**63
    cfg = kas.config_requests[0]
    assert cfg.skip_register
    assert cfg.commit_id == ""
    assert cfg.agent_meta.HasField("kubernetes_version")
    assert not cfg.agent_meta.kubernetes_version.git_version
    await eventually(lambda: worker.snapshot.tunnels_idle == 2)


async def test_make_request_reaches_apiserver(
    kas: FakeKas, start_worker: WorkerFactory, k8s_cluster: LocalCluster, namespace: str
) -> None:
    start_worker()
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm1"},
        "data": {"k": "v" * 100_000},
    }
    created = await http(
        kas,
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        header={"Content-Type": ["application/json"], "Accept": ["application/json"]},
        body=json.dumps(body).encode(),
    )
    assert created.status == 201, created.body[:300]
    got = await http(
        kas, "GET", f"/api/v1/namespaces/{namespace}/configmaps/cm1", header={"Accept": ["application/json"]}
    )
    assert got.status == 200
    assert got.error is None
    assert json.loads(got.body)["data"]["k"] == "v" * 100_000
    assert any("gitlab-agent/" in v for v in got.header["Via"])


async def test_watch_stays_open_and_streams(
    kas: FakeKas, start_worker: WorkerFactory, k8s_cluster: LocalCluster, namespace: str
) -> None:
    start_worker()
    tunnel = await start_request(
        kas, http_request_frames("GET", f"/api/v1/namespaces/{namespace}/configmaps", query={"watch": ["1"]})
    )
    header = await tunnel.recv()
    assert header is not None
    assert header.WhichOneof("msg") == "header"
    seen = b""
    for i in range(3):
        status, _ = await asyncio.to_thread(
            k8s_cluster.request,
            "POST",
            f"/api/v1/namespaces/{namespace}/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"w{i}"}},
        )
        assert status == 201
        while f'"w{i}"'.encode() not in seen:
            frame = await asyncio.wait_for(tunnel.recv(), 10)
            assert frame is not None
            assert frame.WhichOneof("msg") == "message"
            r = grpctool_pb2.HttpResponse.FromString(frame.message.data)
            seen += r.data.data if r.WhichOneof("message") == "data" else b""
    tunnel.finish()  # the client goes away: kas ends the call


async def test_hundred_concurrent_requests(kas: FakeKas, start_worker: WorkerFactory) -> None:
    worker = start_worker()
    results = await asyncio.wait_for(
        asyncio.gather(*(http(kas, "GET", "/version") for _ in range(100))), timeout=120
    )
    assert all(r.status == 200 for r in results)
    await eventually(lambda: worker.snapshot.tunnels_active == 0)


@BOTH_TRANSPORTS
async def test_unknown_method_is_unimplemented(
    kas: FakeKas, start_worker: WorkerFactory, transport: KasTransport
) -> None:
    start_worker(transport=transport)
    tunnel = await start_request(kas, [], method="/gitlab.agent.nope.rpc.Nope/Do")
    result = await read_response(tunnel)
    assert result.error is not None
    assert result.error[0] == StatusCode.UNIMPLEMENTED


async def test_service_account_rbac(
    kas: FakeKas, start_worker: WorkerFactory, k8s_cluster: LocalCluster, namespace: str
) -> None:
    def admin(method: str, path: str, body: object) -> None:
        status, answer = k8s_cluster.request(method, path, body)
        assert status in (200, 201), answer

    await asyncio.to_thread(
        admin,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "agent"}},
    )
    start_worker(identity=ServiceAccountRef(namespace, "agent"))
    denied = await http(kas, "GET", f"/api/v1/namespaces/{namespace}/secrets")
    assert denied.status == 403
    assert f"system:serviceaccount:{namespace}:agent" in json.loads(denied.body)["message"]
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    await asyncio.to_thread(
        admin,
        "POST",
        f"{rbac}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "read-secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    )
    await asyncio.to_thread(
        admin,
        "POST",
        f"{rbac}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "agent-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": namespace}],
        },
    )
    # The API server's RBAC authorizer reads bindings from its own cache: a binding just created may take
    # a moment to count (seen under CI load).
    async with asyncio.timeout(10):
        while (allowed := await http(kas, "GET", f"/api/v1/namespaces/{namespace}/secrets")).status == 403:  # noqa: ASYNC110 - polling the API server's view, bounded
            await asyncio.sleep(0.1)
    assert allowed.status == 200, allowed.body[:300]
    # kas asks for CI impersonation the ServiceAccount may not do: our own 403 says why
    ci = ImpersonationConfig(username="gitlab:ci_job:1", groups=["gitlab:ci_job"])
    refused = await http(kas, "GET", f"/api/v1/namespaces/{namespace}/secrets", imp=ci)
    assert refused.status == 403
    assert "may not impersonate user" in json.loads(refused.body)["message"]


@BOTH_TRANSPORTS
async def test_wrong_token_fails_without_retry_storm(
    kas: FakeKas, start_worker: WorkerFactory, transport: KasTransport
) -> None:
    worker = start_worker(token="bad-token", transport=transport)
    await eventually(lambda: worker.snapshot.phase is Phase.FAILED)
    err = worker.snapshot.last_error
    assert err is not None
    assert err.reason is ErrorReason.UNAUTHENTICATED
    assert "invalid or revoked" in err.hint
    assert "bad-token" not in repr(worker.snapshot)
    before = kas.rejected
    await asyncio.sleep(3)
    assert kas.rejected - before <= 4  # gated: no storm while the backoff runs
    from agent_runtime.secret import Secret

    worker.update_token(Secret("good-token"))
    await eventually(lambda: worker.snapshot.phase is Phase.CONNECTED and worker.snapshot.registered)
    result = await http(kas, "GET", "/version")
    assert result.status == 200


async def test_graceful_stop_lets_inflight_finish(
    kas: FakeKas, start_worker: WorkerFactory, k8s_cluster: LocalCluster, namespace: str
) -> None:
    """An in-flight watch keeps being served after the stop begins, until the API server ends it.

    A watch, not a quick GET: a GET ends before the stop starts, so it passed with no drain at all.
    The ConfigMap is created only after stop() began; its event arrives only if the tunnel still runs.
    """
    worker = start_worker()
    watch = f"/api/v1/namespaces/{namespace}/configmaps"
    query = {"watch": ["true"], "timeoutSeconds": ["3"]}
    tunnel = await start_request(kas, http_request_frames("GET", watch, query=query))
    # Stop only once the worker has taken the request: a request kas pushes onto an idle tunnel in the
    # very instant the worker drains is lost (as with GitLab's agentk), which is not what this tests.
    async with asyncio.timeout(10):
        while worker.snapshot.tunnels_active < 1:  # noqa: ASYNC110 - observing from outside, no event
            await asyncio.sleep(0.01)
    stop = asyncio.create_task(worker.stop(10.0), name="stop")
    await asyncio.sleep(0.2)  # the worker is draining now
    assert not stop.done()
    created = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "made-while-draining"}}
    status, answer = await asyncio.to_thread(k8s_cluster.request, "POST", watch, created)
    assert status == 201, answer
    result = await asyncio.wait_for(read_response(tunnel), 15)
    assert result.error is None, result.error
    assert result.status == 200
    assert b'"made-while-draining"' in result.body
    await asyncio.wait_for(stop, 15)


FRAME = st.one_of(st.binary(max_size=30), st.sampled_from(["info", "msg", "close"]))


def _generated_frame_lists() -> list[list[bytes | str]]:
    """Hypothesis-generated frame sequences (collected up front: the worker is one long-lived object)."""
    collected: list[list[bytes | str]] = []

    @settings(max_examples=12, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(FRAME, min_size=1, max_size=5))
    def collect(frames: list[bytes | str]) -> None:
        collected.append(frames)

    collect()
    return collected


async def test_malformed_frames_never_crash_the_worker(kas: FakeKas, start_worker: WorkerFactory) -> None:
    worker = start_worker()
    named = {
        "info": tunnel_rpc.ConnectResponse(request_info=tunnel_rpc.RequestInfo(method_name="/x.Y/Z")),
        "msg": tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=b"\xff")),
        "close": tunnel_rpc.ConnectResponse(close_send=tunnel_rpc.CloseSend()),
    }
    allowed_codes = {grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.UNIMPLEMENTED.value[0]}
    out_of_order: list[bytes | str] = [b"\x1a\x00\x12\x00"]  # close_send, then message
    for frames in [out_of_order, *_generated_frame_lists()]:
        tunnel = await asyncio.wait_for(kas.tunnels.get(), 60)
        back: list[tunnel_rpc.ConnectRequest] = []
        try:
            for f in frames:
                await tunnel.send(named[f] if isinstance(f, str) else f)
            while (r := await asyncio.wait_for(tunnel.recv(), 0.5)) is not None:
                back.append(r)
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError, cygrpc.ExecuteBatchError):
            # The agent may wait for more, or may have ended the stream already (grpc.aio's server raises
            # ExecuteBatchError for a write after the client's RST_STREAM).
            pass
        tunnel.finish()
        errors = [r.error.status.code for r in back if r.WhichOneof("msg") == "error"]
        assert all(code in allowed_codes for code in errors), errors
        if frames is out_of_order:
            assert errors == [grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    result = await http(kas, "GET", "/version")
    assert result.status == 200
    assert worker.snapshot.phase in (Phase.CONNECTED, Phase.DEGRADED)


async def test_response_header_goes_out_with_the_first_response_message(
    kas: FakeKas, start_worker: WorkerFactory, namespace: str
) -> None:
    """The tunnel's (empty) gRPC header is sent with the first response message, in the same send, as
    agentk's grpc server sends it: nothing goes to kas while the API server has not answered."""
    start_worker()
    tunnel = await asyncio.wait_for(kas.tunnels.get(), 30)
    info = tunnel_rpc.RequestInfo(method_name=WIRE.make_request_path)
    await tunnel.send(tunnel_rpc.ConnectResponse(request_info=info))
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "early"}}).encode()
    request = prototool_pb2.HttpRequest(method="POST", url_path=f"/api/v1/namespaces/{namespace}/configmaps")
    head = grpctool_pb2.HttpRequest(
        header=grpctool_pb2.HttpRequest.Header(request=request, content_length=-1)
    )
    await tunnel.send(tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=head.SerializeToString())))
    # The body has not ended, so the apiserver cannot have answered: nothing comes back yet.
    reading = asyncio.create_task(tunnel.recv(), name="first-frame")
    done, _ = await asyncio.wait({reading}, timeout=0.5)
    assert not done
    data = grpctool_pb2.HttpRequest(data=grpctool_pb2.HttpRequest.Data(data=body))
    await tunnel.send(tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=data.SerializeToString())))
    await tunnel.send(tunnel_rpc.ConnectResponse(close_send=tunnel_rpc.CloseSend()))
    first = await asyncio.wait_for(reading, 10)
    assert first is not None
    assert first.WhichOneof("msg") == "header"
    second = await asyncio.wait_for(tunnel.recv(), 10)
    assert second is not None
    assert second.WhichOneof("msg") == "message"
    response = grpctool_pb2.HttpResponse.FromString(second.message.data)
    assert response.header.response.status_code == 201


REQUESTS = 10
"""GETs of the one-send test."""


def _tunnel_messages_by_send(sends: list[bytes]) -> dict[int, list[tuple[int, str]]]:
    """Per stream, each gRPC message the runtime sent on it as (index of the send that completed it, its
    ConnectRequest kind), and (index, "end") for its END_STREAM. Every stream is read as a tunnel; one that
    is not (Register, GetConfiguration) shows no trailer."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    pending: dict[int, bytes] = {}
    out: dict[int, list[tuple[int, str]]] = {}
    for index, send in enumerate(sends):
        offset = len(preface) if send.startswith(preface) else 0
        while offset + 9 <= len(send):
            length_high, length_low, kind, flags, stream_id = struct.unpack_from(">BHBBI", send, offset)
            length = length_high << 16 | length_low
            payload = send[offset + 9 : offset + 9 + length]
            offset += 9 + length
            if kind != FrameType.DATA:
                continue
            buffer = pending.get(stream_id, b"") + payload
            while len(buffer) >= 5 and len(buffer) >= 5 + int.from_bytes(buffer[1:5], "big"):
                size = int.from_bytes(buffer[1:5], "big")
                try:
                    kind_of_message = tunnel_rpc.ConnectRequest.FromString(buffer[5 : 5 + size]).WhichOneof(
                        "msg"
                    )
                except DecodeError:
                    kind_of_message = None  # another call's message
                out.setdefault(stream_id, []).append((index, kind_of_message or ""))
                buffer = buffer[5 + size :]
            pending[stream_id] = buffer
            if flags & Flag.END_STREAM:
                out.setdefault(stream_id, []).append((index, "end"))
    return out


async def test_a_small_answer_and_the_end_of_its_stream_leave_in_one_send(
    kas: FakeKas, start_worker: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler's last message, the tunnel's trailer and END_STREAM go to kas in one socket send, as
    agentk's do: queued a turn of the loop later, they cost kas one read more per request
    (TunnelAttempt._invoke). Counted on the runtime's own writes to the fake kas's port, decoded frame by
    frame. Not every request: the handler's cleanup (aiohttp's response context) may yield to the loop
    before the tunnel's final frames are queued, and its pending flush goes first; that is the exception,
    so most must ride together, and none did when the final frames were queued by the attempt's task."""
    sends: list[bytes] = []
    # asyncio's TCP transport class: private, so not in the type stubs.
    socket_transport: type[asyncio.Transport] = vars(selector_events)["_SelectorSocketTransport"]
    write = socket_transport.write

    def counting_write(transport: asyncio.Transport, data: bytes) -> None:
        peer = transport.get_extra_info("peername")
        if peer is not None and peer[1] == kas.port:
            sends.append(bytes(data))
        write(transport, data)

    monkeypatch.setattr(socket_transport, "write", counting_write)
    start_worker()
    for _ in range(REQUESTS):
        assert (await http(kas, "GET", "/version")).status == 200
    await asyncio.sleep(0.2)  # the last request's final frames are written
    answered = {
        stream_id: messages
        for stream_id, messages in _tunnel_messages_by_send(sends).items()
        if any(kind == "trailer" for _, kind in messages)
    }
    assert len(answered) == REQUESTS, answered
    together = [stream_id for stream_id, messages in answered.items() if _final_frames_together(messages)]
    assert len(together) >= REQUESTS // 2, answered


def _final_frames_together(messages: list[tuple[int, str]]) -> bool:
    """The last response message, the tunnel's trailer and END_STREAM were in the same send."""
    last_message = max(index for index, kind in messages if kind == "message")
    trailer = next(index for index, kind in messages if kind == "trailer")
    end = next(index for index, kind in messages if kind == "end")
    return last_message == trailer == end


@BOTH_TRANSPORTS
async def test_kas_ending_a_call_mid_response_is_no_error(
    kas: FakeKas, start_worker: WorkerFactory, transport: KasTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """kas ends a call while the worker still writes the answer (its client went away): the worker stops
    that answer quietly, logs no error, and goes on serving."""
    worker = start_worker(transport=transport)
    for _ in range(10):
        tunnel = await start_request(kas, http_request_frames("GET", "/openapi/v2"))  # megabytes of JSON
        for _ in range(3):
            assert await asyncio.wait_for(tunnel.recv(), 30) is not None
        tunnel.cancel()  # kas's side of the call ends while the answer streams
    result = await asyncio.wait_for(http(kas, "GET", "/version"), 30)
    assert result.status == 200
    assert worker.snapshot.phase is Phase.CONNECTED
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
