"""The reverse-tunnel module: a TunnelPool whose attempts are Connect calls (§8).

It ignores configuration and starts at once; a new token recycles idle streams; draining lets active
requests finish.
"""

from __future__ import annotations

import asyncio

from agent_runtime import constants as c
from agent_runtime.backoff import TUNNEL_BACKOFF
from agent_runtime.environment import NoMetrics, WorkerMetrics
from agent_runtime.module_context import ModuleContext
from agent_runtime.modules.reverse_tunnel.budget import ByteBudget
from agent_runtime.modules.reverse_tunnel.connection import TunnelAttempt
from agent_runtime.modules.reverse_tunnel.pool import Outcome, PoolSettings, Slot, TunnelPool
from agent_runtime.tenancy import TunnelSeat


class ReverseTunnelModule:
    """Runs the pool until cancelled, or until the worker drains and every request finished."""

    def __init__(self, ctx: ModuleContext, settings: PoolSettings, metrics: WorkerMetrics) -> None:
        self._ctx = ctx
        self._metrics = metrics
        self.budget = ByteBudget(ctx.policy.budget.max_buffered_bytes, parent=ctx.tenant.buffered)
        """Request bytes from kas held by this agent's tunnels (`--max-buffered-bytes-per-agent`), charged
        to its tenant's budget too (`--max-buffered-bytes-per-namespace`)."""
        self._floor = min(settings.min_idle, settings.max)
        self._seat: TunnelSeat | None = None
        """This agent's place in its tenant's cap on open tunnels, while run() runs."""
        self.pool = TunnelPool(
            self._attempt,
            settings,
            clock=ctx.clock,
            report=ctx.state.tunnel_counts,
            before_attempt=ctx.auth_gate.wait_open,
            name=f"{ctx.worker_id}/tunnel",
        )

    async def _attempt(self, slot: Slot) -> Outcome:
        # The stream counts against the tenant's cap from before it opens until it ended; a slot waiting
        # here is idle to the pool, so the pool does not open more slots meanwhile.
        assert self._seat is not None, "the pool runs inside run()"
        async with self._ctx.tenant.tunnels.stream(self._seat):
            return await TunnelAttempt(self._ctx, slot, self._metrics, self.budget).run()

    async def run(self) -> None:
        """Run the pool; token changes recycle idle streams, draining stops it gracefully."""
        shared = self._ctx.tenant.tunnels
        self._seat = shared.join(self._floor)
        try:
            async with asyncio.TaskGroup() as tg:
                pool = tg.create_task(self.pool.run(), name=f"{self._ctx.worker_id}/tunnel-pool")
                tg.create_task(self._follow_signals(pool), name=f"{self._ctx.worker_id}/tunnel-signals")
        finally:
            shared.leave(self._seat)

    async def _follow_signals(self, pool: asyncio.Task[None]) -> None:
        draining = asyncio.create_task(self._ctx.draining.wait(), name=f"{self._ctx.worker_id}/tunnel-drain")
        try:
            while not pool.done():
                reconnect = asyncio.create_task(
                    self._ctx.reconnect.event().wait(), name=f"{self._ctx.worker_id}/tunnel-reconnect"
                )
                try:
                    await asyncio.wait({pool, draining, reconnect}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    reconnect.cancel()
                if draining.done():
                    self.pool.drain()
                    return
                self.pool.recycle_idle()
        finally:
            draining.cancel()


def build(ctx: ModuleContext, metrics: WorkerMetrics | None = None) -> ReverseTunnelModule:
    """Factory used by the composition root; pool shape from the spec, timings from §8.

    At most `--max-inflight-requests-per-agent` streams are open at once (idle or serving), and at most
    `--max-inflight-requests-per-namespace` over all the agents of its tenant, so kas, which routes a
    request only to an idle stream, never has more of them served at once; the rest wait in kas for a
    stream. `metrics` counts Connect attempts by outcome (and calls to methods
    nobody serves)."""
    settings = PoolSettings(
        min_idle=ctx.tunnels.min_idle,
        max=min(ctx.tunnels.max, ctx.policy.budget.max_inflight_requests, ctx.tenant.tunnels.limit),
        scale_up_step=c.TUNNEL_SCALE_UP_STEP,
        max_idle_s=c.TUNNEL_MAX_IDLE_S,
        backoff=TUNNEL_BACKOFF,
    )
    return ReverseTunnelModule(ctx, settings, metrics if metrics is not None else NoMetrics())
