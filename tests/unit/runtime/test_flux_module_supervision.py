"""The Flux module survives its own bugs: logged, reported, started over (agent_runtime/modules/flux)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from agent_proto.gitlab.agent.agentcfg import agentcfg_pb2
from agent_runtime.flux_settings import FluxTuning
from agent_runtime.latest import LatestValue
from agent_runtime.modules.flux import module as flux_module
from agent_runtime.spec import FluxState, FluxStatus


class _BrokenInformers:
    def __init__(self) -> None:
        self.calls = 0

    async def wait_started(self) -> None:
        return None

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise RuntimeError("a bug")


async def test_a_failing_run_is_logged_reported_and_restarted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(flux_module, "RESTART_AFTER_S", 0.05)
    states: list[FluxStatus] = []
    informers = _BrokenInformers()
    config = agentcfg_pb2.AgentConfiguration(agent_id=5, gitlab_external_url="https://gitlab.example.com")
    ctx: Any = SimpleNamespace(
        informers=informers,
        configuration=LatestValue(config),
        state=SimpleNamespace(flux=states.append),
        logger=logging.getLogger("test-flux"),
        worker_id="ns/a",
    )
    module = flux_module.build(ctx, FluxTuning())
    task = asyncio.create_task(module.run(), name="flux-under-test")
    try:
        async with asyncio.timeout(5):
            while informers.calls < 3:  # noqa: ASYNC110 - waiting for the restarts is the point
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    failed = [s for s in states if s.state is FluxState.STREAM_FAILED]
    assert failed
    assert "restarting" in failed[-1].message
    assert "Failed to run module flux" in caplog.text
