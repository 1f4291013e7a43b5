"""The API server's CPU per GitLabAgent status write, for what the operator sends and how.

    .venv/bin/python bench/status_write_cost.py [--agents 400] [--rounds 2]

Issue 20's bring-up is bound by the API server on a small machine: a thousand status writes, each a
merge patch of a Connected agent's whole status (eleven conditions). This measures the kube-apiserver's
own CPU time (from /proc) per status PATCH, with two watchers of GitLabAgents open as the operator and a
user would have, for each variant, in a fresh cluster each:

- `operator`: the committed CRD (conditions an atomic list) and the operator's Accept header (metadata
  only, kube_api.METADATA_ONLY): what the operator does now;
- `map list`: the conditions a map keyed by type, as before session 10;
- `full answer`: the answer asks for the whole object, as before session 10;
- `small status`: phase, connectedSince, observedGeneration and agentId only (how much the status's
  size weighs, not something the operator could send).

Each variant writes the status of every agent `--rounds` times over (the first round adds the status,
the later ones replace it, as a restart of the operator does); printed per round, in ms of API server CPU
per write, and as a ratio against the `operator` variant of the same round. Bounded: every request has a
timeout and the counts are fixed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import _bootstrap
import aiohttp
import yaml
from _stack import direct_endpoint, local_cluster, machine_description
from _stats import ratio, table

from agent_operator.api import API_VERSION, PLURAL
from agent_operator.kube_api import MERGE_PATCH, METADATA_ONLY
from agent_operator.status_mapping import AgentFacts, compute_status
from agent_runtime.spec import FluxState, FluxStatus, Phase, WorkerSnapshot
from agent_runtime.version import AGENT_VERSION
from tests.support.k8s_cluster import LocalCluster

IN_FLIGHT = 8
"""Writes at once, as the operator's status writer (WRITES_IN_FLIGHT)."""
WATCHERS = 2
_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass(frozen=True)
class Variant:
    name: str
    list_type: str
    accept: str
    status: Callable[[int], dict[str, Any]]


def connected_status(round_: int) -> dict[str, Any]:
    """A Connected agent's status as the operator computes it; each round connected at another time."""
    since = datetime(2026, 12, 6, 12, 0, round_, tzinfo=UTC)
    snapshot = WorkerSnapshot(
        id="bench/agent",
        phase=Phase.CONNECTED,
        connected_since=since,
        agent_id=42,
        config_commit="abc123",
        kas_version="v16.5.7",
        agent_version=AGENT_VERSION,
        kubernetes_version="v1.37.2",
        registered=True,
        configuration_received=True,
        tunnels_idle=2,
        flux=FluxStatus(FluxState.WATCHING, "2 GitRepositories of 1 project(s)", watched=2, projects=1),
    )
    facts = AgentFacts(
        generation=1,
        kas_address="grpc://127.0.0.1:8150",
        cluster_version="v1.37.2",
        service_account="bench/agent",
        service_account_found=True,
    )
    return compute_status(facts, snapshot, None, since).to_merge_patch()


def small_status(round_: int) -> dict[str, Any]:
    full = connected_status(round_)
    return {k: full[k] for k in ("phase", "connectedSince", "observedGeneration", "agentId")}


VARIANTS = (
    Variant("operator", "atomic", METADATA_ONLY, connected_status),
    Variant("map list", "map", METADATA_ONLY, connected_status),
    Variant("full answer", "atomic", "application/json", connected_status),
    Variant("small status", "atomic", METADATA_ONLY, small_status),
)


def _crd(list_type: str) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(
        (_bootstrap.REPO_ROOT / "crds" / "gitlabagents.agentk.dev.yaml").read_text()
    )
    for version in crd["spec"]["versions"]:
        conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
        conditions["x-kubernetes-list-type"] = list_type
        if list_type == "map":
            conditions["x-kubernetes-list-map-keys"] = ["type"]
    return crd


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115 - one read
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _measure(cluster: LocalCluster, variant: Variant, agents: int, rounds: int) -> list[float]:
    """ms of API server CPU per status write, per round."""
    status, info = cluster.request(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", _crd(variant.list_type)
    )
    if status != 201:
        raise RuntimeError(f"installing the CRD: {status} {info}")
    cluster.create_namespace("bench")
    endpoint = direct_endpoint(cluster)
    base = f"{endpoint.base_url}/apis/{API_VERSION}/namespaces/bench/{PLURAL}"
    connector = aiohttp.TCPConnector(ssl=endpoint.ssl, limit=IN_FLIGHT + WATCHERS)
    async with aiohttp.ClientSession(headers=endpoint.headers, connector=connector) as session:
        await _create_agents(session, base, agents)
        watchers = [asyncio.create_task(_watch(session, base), name=f"watcher-{n}") for n in range(WATCHERS)]
        await asyncio.sleep(2.0)
        per_round = []
        slots = asyncio.Semaphore(IN_FLIGHT)
        pid = cluster.apiserver_pid()
        for round_ in range(rounds):
            body = json.dumps({"status": variant.status(round_)})

            async def write(name: str, body: str = body) -> None:
                async with (
                    slots,
                    session.patch(
                        f"{base}/{name}/status",
                        data=body,
                        headers={"Content-Type": MERGE_PATCH, "Accept": variant.accept},
                        timeout=_TIMEOUT,
                    ) as answer,
                ):
                    if answer.status != 200:
                        raise RuntimeError(f"status write: {answer.status} {await answer.text()}")
                    await answer.read()

            before = _cpu_seconds(pid)
            await asyncio.gather(*(write(f"agent-{i}") for i in range(agents)))
            per_round.append(1000 * (_cpu_seconds(pid) - before) / agents)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return per_round


async def _create_agents(session: aiohttp.ClientSession, base: str, agents: int) -> None:
    deadline = time.monotonic() + 30
    while True:  # the CRD is served a moment after it is created
        async with session.get(base, timeout=_TIMEOUT) as answer:
            if answer.status == 200:
                break
        if time.monotonic() > deadline:
            raise RuntimeError("the GitLabAgent CRD was never served")
        await asyncio.sleep(0.2)
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def create(i: int) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": "GitLabAgent",
            "metadata": {"name": f"agent-{i}"},
            "spec": {"kasAddress": "grpc://127.0.0.1:8150", "tokenSecretRef": {"name": f"token-{i}"}},
        }
        async with slots, session.post(base, json=body, timeout=_TIMEOUT) as answer:
            if answer.status != 201:
                raise RuntimeError(f"creating a GitLabAgent: {answer.status} {await answer.text()}")

    await asyncio.gather(*(create(i) for i in range(agents)))


async def _watch(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(f"{base}?watch=1", timeout=aiohttp.ClientTimeout(total=None)) as answer:
        async for _ in answer.content.iter_any():
            pass


async def _run(args: argparse.Namespace) -> None:
    print(f"machine: {machine_description()}")
    results: dict[str, list[float]] = {}
    async with asyncio.timeout(60 + 60 * len(VARIANTS) * args.rounds * max(1, args.agents // 200)):
        for variant in VARIANTS:
            async with local_cluster() as cluster:
                results[variant.name] = await _measure(cluster, variant, args.agents, args.rounds)
    reference = results[VARIANTS[0].name]
    header = [
        "variant",
        *(f"round {r + 1} ms" for r in range(args.rounds)),
        *(f"round {r + 1} ratio" for r in range(args.rounds)),
    ]
    rows = [
        (name, *values, *(ratio(v, b) for v, b in zip(values, reference, strict=True)))
        for name, values in results.items()
    ]
    print(
        f"kube-apiserver CPU per GitLabAgent status write, N = {args.agents}, {IN_FLIGHT} at once, "
        f"{WATCHERS} watchers; ratio: against `{VARIANTS[0].name}` in the same round"
    )
    print(table(header, rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--agents", type=int, default=400, help="GitLabAgents written per round (default 400)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="writes of every status (default 2)")
    asyncio.run(_run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
