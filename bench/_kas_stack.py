"""`--kas python|gitlab` and `--scheme grpc|ws` for the fleet benchmarks: an apiserver and the kas that
N agents dial, either the reference kas (its own process) or GitLab's own (bench/_gitlab_side.py)."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from _fleet import FleetAgent
from _gitlab_side import gitlab_side
from _procs import KasProcess, bench_agents
from _stack import local_cluster

from tests.support.k8s_cluster import LocalCluster


@dataclass(frozen=True)
class KasStack:
    """The apiserver and the kas the agents dial, with the agents that kas knows."""

    cluster: LocalCluster
    agents: Sequence[FleetAgent]
    agent_url: str
    """How the agents dial the kas."""


def add_kas_arguments(parser: argparse.ArgumentParser) -> None:
    """`--kas` and `--scheme`, read by `kas_stack`."""
    parser.add_argument(
        "--kas",
        choices=["python", "gitlab"],
        default="python",
        help="the reference kas (default) or GitLab's own, built by scripts/gitlab-peers",
    )
    parser.add_argument(
        "--scheme", choices=["grpc", "ws"], default="grpc", help="how the agents dial kas (ws: --kas gitlab)"
    )


@asynccontextmanager
async def kas_stack(args: argparse.Namespace, agents: int, work_dir: Path) -> AsyncIterator[KasStack]:
    """A fresh apiserver and the kas of `args.kas`, which knows `agents` agents."""
    if args.kas == "gitlab":
        async with gitlab_side(work_dir) as side:
            known = [side.new_agent(f"bench-{i}") for i in range(agents)]
            yield KasStack(side.cluster, known, side.kas.agent_url(args.scheme))
        return
    if args.scheme != "grpc":
        raise SystemExit("--scheme ws needs --kas gitlab (the reference kas is dialled over grpc:// here)")
    async with local_cluster() as cluster:
        kas = KasProcess(work_dir / "kas", bench_agents(agents))
        await kas.start()
        try:
            yield KasStack(cluster, kas.agents, kas.agent_url)
        finally:
            kas.stop()
