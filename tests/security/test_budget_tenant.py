"""Hostile kas with many agents: one tenant's agents together stay within the tenant's caps (tenancy.py).

Per-agent budgets alone let a tenant multiply its share by its number of agents (up to
--max-agents-per-namespace): here 4 agents, each allowed 10 streams, gave one tenant 40 stuck requests.
With the tenant caps its kas gets at most `max_inflight_requests` streams from all of them, the bytes
they hold stop at the tenant's budget, and an agent of another tenant in the same process is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import pytest

from agent_proto.gitlab.agent.reverse_tunnel.rpc import rpc_pb2 as tunnel_rpc
from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY, TenantBudget, TenantPolicy, TunnelBudget
from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, TunnelSettings, WorkerSpec
from agent_runtime.worker import Worker
from tests.integration.runtime.fake_kas import WIRE, FakeKas, FakeTunnel, http
from tests.security.budget_support import (
    agent,
    data_frame,
    drain_responses,
    eventually,
    kube,
    push_until_blocked,
    request_header_frame,
)

pytestmark = pytest.mark.integration
__all__ = ["agent", "kube"]  # fixtures

KiB = 1024
AGENTS = 4
"""Agents of the hostile tenant, all connected to its kas."""
AGENT_BUDGET = TunnelBudget(max_inflight_requests=10, max_buffered_bytes=4 * 1024 * KiB)
"""Per agent: 10 streams, 4 MiB (so 40 streams and 16 MiB for the tenant without tenant caps)."""
TENANT_BUDGET = TenantBudget(max_inflight_requests=8, max_buffered_bytes=1024 * KiB)
"""Per tenant: 8 streams (each agent's min_idle of 1 reserved, 4 shared), 1 MiB."""
FRAME = 200 * KiB
"""A body chunk from kas (under the 256 KiB message limit)."""
NO_MORE_AFTER_S = 3.0
"""kas stops waiting for another stream of the tenant after this long without one."""


@contextlib.asynccontextmanager
async def running_workers(env: WorkerEnvironment, specs: list[WorkerSpec]) -> AsyncIterator[list[Worker]]:
    """`specs` running as workers of one process (`env`)."""
    workers = [Worker(spec, env) for spec in specs]
    tasks = [asyncio.create_task(w.run(), name=f"worker {w.spec.id}") for w in workers]
    try:
        yield workers
    finally:
        await asyncio.gather(*(w.stop(1.0) for w in workers))
        await asyncio.wait_for(asyncio.gather(*tasks), 20)


def _spec(
    tenant: str, name: str, kas: FakeKas, tunnels: TunnelSettings, identity: ServiceAccountRef
) -> WorkerSpec:
    return WorkerSpec(
        id=f"{tenant}/{name}",
        kas_address=kas.address,
        token=Secret(FakeKas.token),
        tunnels=tunnels,
        tenant=tenant,
        identity=identity,
    )


async def _stuck_request(tunnel: FakeTunnel, path: str) -> asyncio.Task[None] | None:
    """A long watch whose 1 GiB body the API server never reads, pushed until the agent stops reading."""
    info = tunnel_rpc.RequestInfo(method_name=WIRE.make_request_path)
    await tunnel.send(tunnel_rpc.ConnectResponse(request_info=info))
    header = request_header_frame("GET", path, content_length=1 << 30, query={"watch": "true"})
    await tunnel.send(tunnel_rpc.ConnectResponse(message=tunnel_rpc.Message(data=header)))
    _, waiting = await push_until_blocked(tunnel, data_frame(FRAME), limit=200, stall=1.0)
    return waiting


async def _flood(kas: FakeKas, path: str) -> tuple[list[FakeTunnel], list[asyncio.Task[None] | None]]:
    """Turn every stream the tenant's agents offer into a stuck request, until no new one comes (or 60).
    Returns the streams held at once and, per stream, the write kas is still waiting for."""
    held: list[FakeTunnel] = []
    attacks: list[asyncio.Task[asyncio.Task[None] | None]] = []
    while len(held) < 60:
        try:
            tunnel = await asyncio.wait_for(kas.tunnels.get(), NO_MORE_AFTER_S)
        except TimeoutError:
            break
        held.append(tunnel)
        attacks.append(asyncio.create_task(_stuck_request(tunnel, path), name=f"stuck-{len(held)}"))
    return held, list(await asyncio.gather(*attacks))


async def test_many_agents_of_one_tenant_stay_within_its_caps_and_another_tenant_is_served(
    kube: KubeAccess, namespace: str, agent: ServiceAccountRef
) -> None:
    """4 agents of tenant A (kas: A itself) get every stream they offer turned into a stuck watch with an
    unread 1 GiB body. Their kas gets 8 streams in all (40 before the tenant caps), the bytes they hold
    reach the tenant's 1 MiB and stop there (plus one chunk per stream being read), and kas is pushed
    back on every stream; meanwhile tenant B's agent in the same process creates a ConfigMap at once."""
    env = WorkerEnvironment(
        kube=kube,
        policy=TenantPolicy(
            destinations=PERMISSIVE_POLICY.destinations, budget=AGENT_BUDGET, tenant_budget=TENANT_BUDGET
        ),
    )
    hostile, victim = FakeKas(), FakeKas()
    await hostile.start()
    await victim.start()
    tenant_a, tenant_b = f"tenant-a-{secrets.token_hex(3)}", f"tenant-b-{secrets.token_hex(3)}"
    specs = [
        _spec(tenant_a, f"agent-{i}", hostile, TunnelSettings(min_idle=1, max=500), agent)
        for i in range(AGENTS)
    ]
    specs.append(_spec(tenant_b, "agent", victim, TunnelSettings(), agent))
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    held: list[FakeTunnel] = []
    waiting: list[asyncio.Task[None] | None] = []
    readers: list[asyncio.Task[None]] = []
    try:
        async with running_workers(env, specs) as workers:
            await eventually(lambda: all(w.snapshot.tunnels_idle >= 1 for w in workers))
            held, waiting = await _flood(hostile, path)
            readers = [asyncio.create_task(drain_responses(t), name="hostile-reader") for t in held]
            share = env.tenants.get(tenant_a)
            assert share is not None

            assert len(held) <= TENANT_BUDGET.max_inflight_requests, f"kas got {len(held)} streams"
            assert share.tunnels.peak_open <= TENANT_BUDGET.max_inflight_requests
            assert all(w is not None for w in waiting), "kas was not pushed back on every stream"
            limit = TENANT_BUDGET.max_buffered_bytes
            assert limit <= share.buffered.peak <= limit + len(held) * (FRAME + KiB)
            async with asyncio.timeout(10):  # tenant A is saturated: tenant B does not wait for it
                created = await http(
                    victim,
                    "POST",
                    path,
                    header={"Content-Type": ["application/json"]},
                    body=b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"from-b"}}',
                )
            assert (created.status, created.error) == (201, None)
            assert len(held) == share.tunnels.open  # every stream of tenant A is still stuck meanwhile
    finally:
        for task in [*readers, *(w for w in waiting if w is not None)]:
            task.cancel()
        for tunnel in held:
            tunnel.finish()
        await hostile.stop()
        await victim.stop()
    assert env.tenants.get(tenant_a) is None  # dropped with the tenant's last worker
