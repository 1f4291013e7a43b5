"""A Worker driven by the loopback kas double (tests/integration/runtime/fake_kas.py) playing a hostile kas,
for the budget attacks (test_budget_*.py). The worker serves against the real kube-apiserver."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent_proto.gitlab.agent.grpctool import grpctool_pb2
from agent_proto.gitlab.agent.prototool import prototool_pb2
from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY, TenantPolicy, TunnelBudget
from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, TunnelSettings, WorkerSpec
from agent_runtime.worker import Worker
from tests.e2e.harness import Kube
from tests.integration.runtime.fake_kas import WIRE, FakeKas, FakeTunnel


class RecordingMetrics:
    """A WorkerMetrics that keeps how Connect attempts ended."""

    def __init__(self) -> None:
        self.connect_codes: Counter[str] = Counter()

    def tunnel_request_done(self, worker_id: str, method: str, code: str, seconds: float) -> None:
        del worker_id, method, code, seconds

    def connection_attempt(self, worker_id: str, rpc: str, code: str) -> None:
        del worker_id
        if rpc == "Connect":
            self.connect_codes[code] += 1

    def bytes_received(self, worker_id: str, count: int) -> None:
        del worker_id, count

    def bytes_sent(self, worker_id: str, count: int) -> None:
        del worker_id, count


@pytest.fixture
async def kube(operator_credentials: Path) -> AsyncIterator[KubeAccess]:
    """The process's Kubernetes access as the deployed operator has it (manifests/ RBAC)."""
    access = await asyncio.to_thread(load_kube_access, str(operator_credentials))
    yield access
    await access.close()


@pytest.fixture
def agent(deployed_kube: Kube, namespace: str) -> ServiceAccountRef:
    """The agents' ServiceAccount: it may read, watch and create the test namespace's ConfigMaps."""
    meta = {"name": "agent", "namespace": namespace}
    rbac = "rbac.authorization.k8s.io"
    deployed_kube.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create"]}
            ],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "agent"},
            "subjects": [{"kind": "ServiceAccount", **meta}],
        },
    )
    return ServiceAccountRef(namespace, "agent")


@pytest.fixture
async def kas() -> AsyncIterator[FakeKas]:
    server = FakeKas()
    await server.start()
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def running_worker(
    kas: FakeKas | str,
    kube: KubeAccess,
    budget: TunnelBudget,
    *,
    identity: ServiceAccountRef,
    tunnels: TunnelSettings | None = None,
    metrics: RecordingMetrics | None = None,
) -> AsyncIterator[Worker]:
    """A worker of the kas double (or of a kas address, with the double's token) acting as `identity`,
    with `budget` (destinations: loopback allowed, as in the CLI)."""
    policy = TenantPolicy(destinations=PERMISSIVE_POLICY.destinations, budget=budget)
    spec = WorkerSpec(
        id="tenant/hostile",
        kas_address=kas if isinstance(kas, str) else kas.address,
        token=Secret(FakeKas.token),
        tunnels=tunnels or TunnelSettings(),
        identity=identity,
    )
    worker = Worker(spec, WorkerEnvironment(kube=kube, metrics=metrics, policy=policy))
    task = asyncio.create_task(worker.run(), name="worker-under-attack")
    try:
        yield worker
    finally:
        await worker.stop(1.0)
        await asyncio.wait_for(task, 20)


def request_header_frame(method: str, path: str, *, content_length: int, query: dict[str, str]) -> bytes:
    """One grpctool.HttpRequest header, serialized."""
    request = prototool_pb2.HttpRequest(
        method=method,
        url_path=path,
        header={"Accept": prototool_pb2.Values(value=["application/json"])},
        query={k: prototool_pb2.Values(value=[v]) for k, v in query.items()},
    )
    header = grpctool_pb2.HttpRequest.Header(request=request, content_length=content_length)
    return grpctool_pb2.HttpRequest(header=header).SerializeToString()


def data_frame(size: int) -> bytes:
    """A ConnectResponse carrying one HttpRequest.data of `size` bytes, serialized once for reuse."""
    data = grpctool_pb2.HttpRequest(data=grpctool_pb2.HttpRequest.Data(data=b"x" * size)).SerializeToString()
    return tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=data)).SerializeToString()


async def open_request(kas: FakeKas, header: bytes, *, within: float = 30.0) -> FakeTunnel:
    """Take an idle tunnel (waiting for one, as kas does) and send request_info and the header frame."""
    tunnel = await asyncio.wait_for(kas.tunnels.get(), within)
    info = tunnel_rpc.RequestInfo(method_name=WIRE.make_request_path)
    await tunnel.send(tunnel_rpc.ConnectResponse(request_info=info))
    await tunnel.send(tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=header)))
    return tunnel


async def end_request(tunnel: FakeTunnel) -> None:
    """The request body is over: HttpRequest.trailer, then close_send."""
    trailer = grpctool_pb2.HttpRequest(trailer=grpctool_pb2.HttpRequest.Trailer()).SerializeToString()
    await tunnel.send(tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=trailer)))
    await tunnel.send(tunnel_rpc.ConnectResponse(close_send=tunnel_rpc.CloseSend()))


async def push_until_blocked(
    tunnel: FakeTunnel, frame: bytes, *, limit: int, stall: float
) -> tuple[int, asyncio.Task[None] | None]:
    """Send `frame` up to `limit` times; stop at the first write that does not complete within `stall`
    seconds (the agent stopped reading: flow control pushes back). Returns the frames accepted and the
    write still waiting, which the caller cancels at the end."""
    for sent in range(limit):
        write = asyncio.create_task(tunnel.send(frame), name="hostile-kas-write")
        done, _ = await asyncio.wait({write}, timeout=stall)
        if not done:
            return sent, write
        if write.exception() is not None:
            return sent, None
    return limit, None


async def drain_responses(tunnel: FakeTunnel) -> None:
    """Read what the agent answers until the call ends (so its writes never wait for us)."""
    with contextlib.suppress(Exception):
        while await tunnel.recv() is not None:
            pass


async def eventually(predicate: Callable[[], bool], within: float = 15.0) -> None:
    """Poll `predicate` until true; bounded in time."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling a snapshot is the point here
            await asyncio.sleep(0.05)
