"""kas's max connection age under load: GOAWAY and the age context rotate the agent's connection every
few seconds while requests keep flowing through the tunnel, and not one of them fails (PROTOCOL.md §3.6).

kas runs with max_connection_age = 3 s: GOAWAY after ~0.6 s, idle tunnels end OK after ~0.9 s, in-flight
calls may run ~1.95 s after GOAWAY. For about 10 s a sequential client, a few concurrent clients and
short watches (server-side timeout 1 s, well inside the grace) go through the kas proxy.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from agent_runtime.runtime import Runtime
from agent_runtime.spec import Phase, WorkerSnapshot
from kas.agent_server.connections import AgentConnection
from kas.server import KasServer
from tests.integration.system.conftest import (
    Certs,
    agent_spec,
    ci_headers,
    proxy_ssl,
    started_kas,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

_MAX_AGE_S = 3.0
_LOAD_S = 10.0
_CONCURRENT_CLIENTS = 3
_WATCHERS = 2
_MAX_REQUESTS_PER_CLIENT = 2000
"""Upper bound on the loops (they normally stop on time long before this)."""
_REQUEST_TIMEOUT_S = 30.0


def registered(snapshot: WorkerSnapshot) -> bool:
    return snapshot.phase is Phase.CONNECTED and snapshot.registered


class ConnectionCounter:
    """Counts agent connections kas accepts (wraps its connection table's `add`)."""

    def __init__(self, kas: KasServer) -> None:
        self.accepted = 0
        table = kas.connections
        original = table.add

        def add(port: int, conn: AgentConnection) -> None:
            self.accepted += 1
            original(port, conn)

        table.add = add  # type: ignore[method-assign,assignment]  # instruments the reference kas


def config_streams_ended_ok(kas: KasServer) -> float:
    """GetConfiguration calls kas ended with OK (the age context is the only way they end here)."""
    service, _, method = kas.names.get_configuration_path.lstrip("/").rpartition("/")
    labels = {"grpc_service": service, "grpc_method": method, "grpc_code": "OK"}
    return kas.metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0


def attempt_codes(runtime: Runtime, worker_id: str) -> set[str]:
    """gRPC codes of the worker's ended GetConfiguration/Register/Connect attempts (its own metrics)."""
    return {
        sample.labels["code"]
        for family in runtime.registry.collect()
        if family.name == "agentk_kas_rpc_attempts"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["agent"] == worker_id and sample.value > 0
    }


class Load:
    """Bounded request loops against kas's proxy; records every failure with its details."""

    def __init__(self, session: aiohttp.ClientSession, base: str, namespace: str, certs: Certs) -> None:
        self._session = session
        self._base = base.rstrip("/")
        self._ns = namespace
        self._ssl = proxy_ssl(certs)
        self.ok: Counter[str] = Counter()
        self.failures: list[str] = []
        self._deadline = 0.0

    async def _get(self, kind: str, path: str) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                async with self._session.get(self._base + path, ssl=self._ssl) as response:
                    body = await response.read()
            if response.status != 200:
                self.failures.append(f"{kind}: HTTP {response.status}: {body[:300]!r}")
                return
            self._check_body(kind, body)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            self.failures.append(f"{kind}: {type(e).__name__}: {e}")

    def _check_body(self, kind: str, body: bytes) -> None:
        if kind == "watch":
            lines = [line for line in body.splitlines() if line.strip()]
            events = [json.loads(line) for line in lines]
            if not any(e.get("type") == "ADDED" for e in events):
                self.failures.append(f"watch: no ADDED event in {body[:300]!r}")
                return
        else:
            json.loads(body)  # a complete, well-formed document
        self.ok[kind] += 1

    async def _loop(self, kind: str, path: str) -> None:
        for _ in range(_MAX_REQUESTS_PER_CLIENT):
            if time.monotonic() >= self._deadline:
                return
            await self._get(kind, path)

    async def run(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds
        ns = self._ns
        get = f"/api/v1/namespaces/{ns}/configmaps/rotation-probe"
        listing = f"/api/v1/namespaces/{ns}/configmaps"
        watch = f"/api/v1/namespaces/{ns}/configmaps?watch=1&timeoutSeconds=1"
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._loop("sequential", get), name="rotation-sequential")
            for n in range(_CONCURRENT_CLIENTS):
                tg.create_task(self._loop("concurrent", listing), name=f"rotation-concurrent-{n}")
            for n in range(_WATCHERS):
                tg.create_task(self._loop("watch", watch), name=f"rotation-watch-{n}")


@pytest.mark.parametrize("scheme", ["grpc", "ws"])
async def test_requests_survive_connection_rotation(
    scheme: str, runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str
) -> None:
    overrides = {"agent": {"listen": {"max_connection_age": _MAX_AGE_S}}}
    async with started_kas(tmp_path / "kas", certs, overrides=overrides) as kas:
        counter = ConnectionCounter(kas)
        spec = agent_spec(kas, scheme, certs)
        runtime.apply(spec)
        # Not `connected`: idle streams live < 0.9 s here, shorter than the 1 s after which the worker
        # counts one as established, so tunnels_idle stays 0 while the tunnels work fine.
        await wait_for(runtime, spec.id, registered)
        assert kas.proxy_url is not None
        async with aiohttp.ClientSession(headers=ci_headers()) as session:
            async with session.post(
                f"{kas.proxy_url.rstrip('/')}/api/v1/namespaces/{namespace}/configmaps",
                json={"metadata": {"name": "rotation-probe"}, "data": {"k": "v"}},
                ssl=proxy_ssl(certs),
            ) as create:
                assert create.status == 201, await create.text()
            load = Load(session, kas.proxy_url, namespace, certs)
            await load.run(_LOAD_S)

        assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:10]}"
        assert load.ok["sequential"] >= 5
        assert load.ok["concurrent"] >= 5
        assert load.ok["watch"] >= 2 * _WATCHERS
        # ~10 s with a 3 s age: the agent's connection was replaced several times ...
        assert counter.accepted >= 5, f"only {counter.accepted} agent connections accepted"
        # ... and the age context ended the idle streams OK (GetConfiguration ends no other way here).
        assert config_streams_ended_ok(kas) >= 3
        # Rotation is routine, never an error: every attempt on the way ended OK (no backoff either).
        assert attempt_codes(runtime, spec.id) == {"OK"}
        # The worker is still healthy afterwards.
        snapshot = await wait_for(runtime, spec.id, registered)
        assert snapshot.last_error is None, snapshot.last_error
        await runtime.remove(spec.id)
