"""A runtime Worker against a kas whose per-token limit is exhausted: RateLimited, and it backs off."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent_runtime.runtime import Runtime
from agent_runtime.spec import ErrorReason, WorkerSnapshot
from kas.rate_limit import RATE_LIMITED_MESSAGE
from kas.server import KasServer
from tests.integration.system.conftest import Certs, agent_spec, started_kas, wait_for

OBSERVED_SECONDS = 3.0
MAX_REFUSALS_OBSERVED = 30
"""A worker retrying without backoff makes hundreds of refused calls in the observed window."""


def _refusals(kas: KasServer) -> float:
    value = kas.metrics.registry.get_sample_value("agent_server_rate_limited_total")
    assert value is not None, "kas exports no agent_server_rate_limited_total"  # else the delta is 0 - 0
    return value


def _rate_limited(snapshot: WorkerSnapshot) -> bool:
    return snapshot.last_error is not None and snapshot.last_error.reason is ErrorReason.RATE_LIMITED


async def test_worker_shows_rate_limited_and_backs_off(
    runtime: Runtime, certs: Certs, tmp_path: Path
) -> None:
    limited = {"agent": {"listen": {"connections_per_token_per_minute": 2}}}
    async with started_kas(tmp_path / "kas", certs, overrides=limited) as kas:
        spec = agent_spec(kas, "grpc", certs)
        runtime.apply(spec)
        snapshot = await wait_for(runtime, spec.id, _rate_limited)
        assert snapshot.last_error is not None
        assert RATE_LIMITED_MESSAGE in snapshot.last_error.message
        assert snapshot.last_error.hint

        before = _refusals(kas)
        assert before >= 1, "RateLimited without a refusal counted: the delta below would measure nothing"
        await asyncio.sleep(OBSERVED_SECONDS)
        refused = _refusals(kas) - before
        assert refused <= MAX_REFUSALS_OBSERVED, f"{refused} refused RPCs in {OBSERVED_SECONDS}s: no backoff"
        await runtime.remove(spec.id)
