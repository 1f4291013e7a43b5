"""The operator as a process, GitLabAgent resources, and a watch that timestamps their phase changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import _bootstrap
import aiohttp
from _stack import Endpoint

from tests.support import process
from tests.support.ports import free_port

GLA_PATH = "/apis/agentk.dev/v1alpha1/namespaces/{ns}/gitlabagents"
CREATE_CONCURRENCY = 24


async def install_crd(kubeconfig: Path) -> None:
    """`kubectl apply -k crds/` (server-side) and wait until the CRD is Established."""
    kubectl = str(Path(sys.executable).parent / "kubectl")
    for args in (
        ["apply", "--server-side", "--force-conflicts", "-k", str(_bootstrap.REPO_ROOT / "crds")],
        ["wait", "--for=condition=Established", "--timeout=30s", "crd/gitlabagents.agentk.dev"],
    ):
        proc = await asyncio.create_subprocess_exec(
            kubectl,
            f"--kubeconfig={kubeconfig}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {args[0]}: {err.decode(errors='replace')}")


class OperatorProcess:
    """`python -m agent_operator` watching one namespace, with admin credentials."""

    def __init__(
        self, work_dir: Path, kubeconfig: Path, namespace: str, traced: Path | None = None, frames: int = 0
    ) -> None:
        self.work_dir = work_dir
        self.traced = traced
        """When set, run under bench/_traced_operator.py: SIGUSR1 dumps malloc_info (and a snapshot) here."""
        self.frames = frames
        """tracemalloc frames per trace when `traced` (0: tracemalloc off)."""
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.port = free_port()
        self.log_path = work_dir / "operator.log"
        self._proc: Any = None

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    async def start(self, time_limit: float = 60.0) -> None:
        os.environ.setdefault("POD_NAME", "bench-operator")  # inherited: the operator's identity
        entry = ["-m", "agent_operator"]
        if self.traced is not None:
            entry = [str(Path(__file__).with_name("_traced_operator.py")), str(self.traced), str(self.frames)]
        self._proc = process.start(
            [
                sys.executable,
                *entry,
                f"--kubeconfig={self.kubeconfig}",
                f"--namespace={self.namespace}",
                f"--observability-address=127.0.0.1:{self.port}",
                "--drain-grace=1",
                "--log-level=WARNING",
                "--max-agents-per-namespace=0",  # the fleets are up to 1000 agents in one namespace
                "--max-inflight-requests-per-namespace=100000",  # ... each with its minIdle streams
                # The bench kas listens on loopback, in plain text: what the default policy refuses.
                "--allow-private-kas",
                "--allow-plaintext-kas",
            ],
            self.log_path,
            cwd=_bootstrap.REPO_ROOT,
        )
        await self._wait_for("liveness", time_limit)

    async def wait_ready(self, time_limit: float = 60.0) -> None:
        """Return once /readiness answers 200: started, and every agent it runs is Connected or failed."""
        await self._wait_for("readiness", time_limit)

    async def _wait_for(self, endpoint: str, time_limit: float) -> None:
        async with asyncio.timeout(time_limit), aiohttp.ClientSession() as session:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"operator exited: {process.log_tail(self.log_path)}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"http://127.0.0.1:{self.port}/{endpoint}") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)

    def dump_memory(self) -> None:
        """Ask the traced operator for glibc's malloc_info and a tracemalloc snapshot (see `traced`)."""
        if self.traced is not None:
            self._proc.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        process.stop(self._proc, grace=30.0)
        self._proc = None


def secret(namespace: str, name: str, token: str, agent: str) -> dict[str, Any]:
    """A token Secret that opted in to the GitLabAgent `agent` (docs/security.md)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"agentk.dev/allowed-agents": agent},
        },
        "type": "Opaque",
        "stringData": {"token": token},
    }


def gitlab_agent(namespace: str, name: str, kas_address: str, secret_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "agentk.dev/v1alpha1",
        "kind": "GitLabAgent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"kasAddress": kas_address, "tokenSecretRef": {"name": secret_name}},
    }


async def create_all(
    session: aiohttp.ClientSession,
    direct: Endpoint,
    items: Sequence[tuple[str, dict[str, Any]]],
    answered: dict[str, float] | None = None,
) -> dict[str, float]:
    """POST every (collection path, object), CREATE_CONCURRENCY at a time; name -> monotonic POST start.

    `answered`, if given, receives name -> monotonic time the POST was answered.
    """
    started: dict[str, float] = {}
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def creator() -> None:
        while not queue.empty():
            path, body = queue.get_nowait()
            started[body["metadata"]["name"]] = time.monotonic()
            async with session.post(
                direct.base_url + path, json=body, ssl=direct.ssl, headers=direct.headers
            ) as r:
                if r.status != 201:
                    what = f"{body['kind']} {body['metadata']['name']}"
                    raise RuntimeError(f"creating {what}: {r.status} {await r.text()}")
            if answered is not None:
                answered[body["metadata"]["name"]] = time.monotonic()

    async with asyncio.TaskGroup() as group:
        for n in range(min(CREATE_CONCURRENCY, len(items))):
            group.create_task(creator(), name=f"create-{n}")
    return started


@dataclass
class PhaseWatch:
    """Watches GitLabAgents in a namespace; per name, when each phase was first seen, and the event count."""

    direct: Endpoint
    namespace: str
    first_seen: dict[str, dict[str, float]] = field(default_factory=dict)
    modified: dict[str, int] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    added: dict[str, float] = field(default_factory=dict)
    """When the watch delivered each resource's ADDED event."""
    finalized: dict[str, float] = field(default_factory=dict)
    """When the watch first saw each resource with a finalizer (the operator's, added by kopf)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    restarts: int = 0
    """Times the watch ended (the apiserver closes watchers that fall behind) and was resumed."""
    relists: int = 0
    """Times the resource version was too old and a LIST resynchronised the state."""

    async def run(self) -> None:
        """Watch until cancelled; resume from the last resource version, re-LIST when it is gone."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        base = self.direct.base_url + GLA_PATH.format(ns=self.namespace)
        version: str | None = None
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(1000):  # bounded: each round is one watch request
                if version is None:
                    version = await self._list(session, base)
                url = f"{base}?watch=1&allowWatchBookmarks=true&resourceVersion={version}"
                async with session.get(url, ssl=self.direct.ssl, headers=self.direct.headers) as response:
                    if response.status != 200:
                        raise RuntimeError(f"watch answered {response.status}")
                    self.ready.set()
                    async for line in response.content:
                        event = json.loads(line)
                        if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old
                            version = None
                            break
                        version = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._observe(event["type"], event["object"], time.monotonic())
                self.restarts += 1
        raise RuntimeError("the watch was restarted 1000 times")

    async def _list(self, session: aiohttp.ClientSession, base: str) -> str:
        """LIST the resources (state as of now) and return the list's resource version."""
        async with session.get(base, ssl=self.direct.ssl, headers=self.direct.headers) as response:
            if response.status != 200:
                raise RuntimeError(f"LIST answered {response.status}")
            body = await response.json()
        now = time.monotonic()
        for obj in body["items"]:
            self._observe("LISTED", obj, now)
        self.relists += 1
        return str(body["metadata"]["resourceVersion"])

    def _observe(self, kind: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        if kind in ("ADDED", "LISTED"):
            self.added.setdefault(name, now)
        if kind == "MODIFIED":
            self.modified[name] = self.modified.get(name, 0) + 1
        if obj["metadata"].get("finalizers"):
            self.finalized.setdefault(name, now)
        phase = (obj.get("status") or {}).get("phase")
        if phase:
            self.phases[name] = phase
            self.first_seen.setdefault(name, {}).setdefault(phase, now)
        self.changed.set()

    async def wait_all(self, names: Sequence[str], phase: str, time_limit: float) -> bool:
        """True once every name has been seen in `phase` (and is in it now); False after the limit."""
        try:
            async with asyncio.timeout(time_limit):
                while not all(self.phases.get(n) == phase for n in names):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True


class FleetAgent(Protocol):
    """An agent kas knows: the reference kas's TestAgent or an agent of the GitLab Rails stand-in."""

    @property
    def id(self) -> int: ...

    @property
    def token(self) -> str: ...


def fleet_objects(
    namespace: str, agents: Sequence[FleetAgent], kas_address: str
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """(secrets, gitlabagents) as (collection path, body) pairs, one of each per agent."""
    secrets = [
        (
            f"/api/v1/namespaces/{namespace}/secrets",
            secret(namespace, f"token-{a.id}", a.token, f"agent-{a.id}"),
        )
        for a in agents
    ]
    glas = [
        (
            GLA_PATH.format(ns=namespace),
            gitlab_agent(namespace, f"agent-{a.id}", kas_address, f"token-{a.id}"),
        )
        for a in agents
    ]
    return secrets, glas
