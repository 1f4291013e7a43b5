"""The Runtime's /metrics after real traffic through the tunnel: attempts by RPC and code, requests by
HTTP status class, body bytes both ways; labels stay bounded and no token ever shows up."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_runtime.kube import KubeAccess
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import FluxState
from tests.integration.system.conftest import (
    AGENT,
    JOB_TOKEN,
    Certs,
    agent_spec,
    ci_headers,
    proxy_ssl,
    started_kas,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

BAD_TOKEN = "revoked-agent-token-" + "r" * 40
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_ALLOWED_LABELS = {"agent", "code_class", "rpc", "code", "direction", "version", "commit", "state", "result"}
_CODE_CLASSES = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"} | {code.name for code in grpc.StatusCode}


@pytest.fixture
async def observed_runtime(kube: KubeAccess) -> AsyncIterator[Runtime]:
    rt = Runtime(
        kube, RuntimeSettings(observability_address="127.0.0.1:0", stop_grace=2.0, policy=PERMISSIVE_POLICY)
    )
    await rt.start()
    try:
        yield rt
    finally:
        async with asyncio.timeout(30):
            await rt.stop(2.0)


async def scrape(runtime: Runtime) -> tuple[str, Samples]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{runtime.observability_port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_metric(runtime: Runtime, name: str, minimum: float, **labels: str) -> Samples:
    samples: Samples = {}
    for _ in range(300):  # bounded: 30 s
        _, samples = await scrape(runtime)
        if value(samples, name, **labels) >= minimum:
            return samples
        await asyncio.sleep(0.1)
    pytest.fail(f"{name}{labels} never reached {minimum}: {value(samples, name, **labels)}")


async def test_metrics_follow_real_tunnel_traffic(
    observed_runtime: Runtime, certs: Certs, tmp_path: Path, namespace: str
) -> None:
    runtime = observed_runtime
    # A short connection age so that GetConfiguration and idle Connect streams also end (OK) in time.
    overrides = {"agent": {"listen": {"max_connection_age": 5}}}
    async with started_kas(tmp_path / "kas", certs, overrides=overrides) as kas:
        spec = agent_spec(kas, "grpc", certs)
        bad = dataclasses.replace(spec, id="e2e/revoked", token=Secret(BAD_TOKEN))
        runtime.apply(spec)
        runtime.apply(bad)
        await wait_for(runtime, spec.id, lambda s: s.registered)
        assert kas.proxy_url is not None
        base = f"{kas.proxy_url.rstrip('/')}/api/v1/namespaces/{namespace}/configmaps"

        sent = received = 0
        statuses: list[int] = []
        async with aiohttp.ClientSession(headers=ci_headers()) as session:
            tls = proxy_ssl(certs)

            async def call(method: str, url: str, body: bytes | None = None) -> None:
                nonlocal sent, received
                headers = {"Content-Type": "application/json"} if body else {}
                async with session.request(method, url, data=body, ssl=tls, headers=headers) as response:
                    received += len(await response.read())
                    statuses.append(response.status)
                sent += len(body or b"")

            document = {"metadata": {"name": "metered"}, "data": {"payload": "x" * 5000}}
            await call("POST", base, json.dumps(document).encode())
            for _ in range(5):
                await call("GET", f"{base}/metered")
            await call("GET", base)
            await call("GET", f"{base}/does-not-exist")
            assert statuses == [201, 200, 200, 200, 200, 200, 200, 404]
            agent = spec.id
            # A request is counted once it has ended on the worker (just after the client got it all).
            done = await wait_metric(
                runtime, "agentk_tunnel_requests_total", 1, agent=agent, code_class="4xx"
            )
            # Requests by HTTP status class, with their time.
            assert value(done, "agentk_tunnel_requests_total", agent=agent, code_class="2xx") == 7
            assert value(done, "agentk_tunnel_requests_total", agent=agent, code_class="4xx") == 1
            assert value(done, "agentk_tunnel_request_seconds_total", agent=agent) > 0
            # Body bytes: exactly what the client sent and received.
            assert value(done, "agentk_tunnel_bytes_total", agent=agent, direction="in") == sent
            assert value(done, "agentk_tunnel_bytes_total", agent=agent, direction="out") == received

            # Bytes of a request still running (a watch) are counted as they pass, not at its end.
            async with session.get(f"{base}?watch=1&timeoutSeconds=30", ssl=tls) as watch:
                first_event = await watch.content.readline()
                assert b'"ADDED"' in first_event
                during = await wait_metric(
                    runtime,
                    "agentk_tunnel_bytes_total",
                    received + len(first_event),
                    agent=agent,
                    direction="out",
                )
                assert value(during, "agentk_tunnel_requests_total", agent=agent, code_class="2xx") == 7
        # The client left mid-watch: kas cancels the call, counted by that gRPC code.
        await wait_metric(runtime, "agentk_tunnel_requests_total", 1, agent=agent, code_class="CANCELLED")

        await wait_metric(
            runtime, "agentk_kas_rpc_attempts_total", 1, agent=agent, rpc="GetConfiguration", code="OK"
        )
        await wait_metric(
            runtime, "agentk_kas_rpc_attempts_total", 1, agent=bad.id, rpc="Register", code="UNAUTHENTICATED"
        )
        text, samples = await scrape(runtime)

    # Attempts of every RPC by code: served tunnels end OK, Register succeeded, the bad token was refused.
    assert value(samples, "agentk_kas_rpc_attempts_total", agent=agent, rpc="Connect", code="OK") >= 8
    assert value(samples, "agentk_kas_rpc_attempts_total", agent=agent, rpc="Register", code="OK") >= 1
    assert (
        value(samples, "agentk_kas_rpc_attempts_total", agent=agent, rpc="GetConfiguration", code="OK") >= 1
    )
    assert (
        value(samples, "agentk_kas_rpc_attempts_total", agent=bad.id, rpc="Register", code="UNAUTHENTICATED")
        >= 1
    )

    # Bounded labels: only known label names, agent = a worker id, small closed value sets.
    for (name, labels), _ in samples.items():
        if not name.startswith("agentk_"):
            continue
        label_map = dict(labels)
        assert set(label_map) <= _ALLOWED_LABELS, (name, label_map)
        if "agent" in label_map:
            assert label_map["agent"] in {agent, bad.id}, (name, label_map)
        if "code_class" in label_map:
            assert label_map["code_class"] in _CODE_CLASSES, (name, label_map)
        if "state" in label_map:  # the Flux module's state: an enum, one series per agent
            assert label_map["state"] in {state.value for state in FluxState}, (name, label_map)
        if "result" in label_map:
            assert label_map["result"] in {"ok", "failed"}, (name, label_map)
        if "rpc" in label_map:
            assert label_map["rpc"] in {"GetConfiguration", "Register", "Connect", "other"}, (name, label_map)
    # No secret in the output.
    for secret in (AGENT.token, BAD_TOKEN, JOB_TOKEN):
        assert secret not in text
