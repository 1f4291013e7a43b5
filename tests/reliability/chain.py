"""The chain most reliability scenarios drive: CI client → reference kas's Kubernetes API proxy → tunnel →
a Runtime's worker → the real kube-apiserver, with a FaultProxy between the worker and kas's agent port.

Requests go through kas's proxy as GitLab CI jobs (tests/integration/system/conftest.py's agent and job)
and are classified: 200, a clean error (a Kubernetes `Status` with a 5xx code), or unclean (anything
else: a hang past the deadline, a cut connection, a body that is not a Status).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agent_runtime.runtime import Runtime
from agent_runtime.spec import WorkerSpec
from kas.server import KasServer
from tests.integration.system.conftest import (
    Certs,
    agent_spec,
    ci_headers,
    connected,
    proxy_ssl,
    started_kas,
    wait_for,
)
from tests.support.fault_proxy import FaultProxy

REQUEST_DEADLINE_S = 60.0
"""A request that has not ended after this long counts as hung (kas's own keepalive gives up at ~21 s)."""


@dataclass
class Outcome:
    """How one request through the tunnel ended."""

    started: float
    ended: float
    status: int | None
    """HTTP status, None when the request did not get one (hung, cut)."""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def clean_error(self) -> bool:
        return self.status is not None and self.status >= 500 and self.detail.startswith("Status")


@dataclass
class Chain:
    kas: KasServer
    proxy: FaultProxy
    runtime: Runtime
    spec: WorkerSpec
    session: aiohttp.ClientSession
    ssl_context: ssl.SSLContext
    namespace: str
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def base(self) -> str:
        assert self.kas.proxy_url is not None
        return self.kas.proxy_url.rstrip("/")

    async def get(self, path: str | None = None) -> Outcome:
        """One GET through kas's proxy as the CI job; never raises, always ends within the deadline."""
        url = self.base + (path or f"/api/v1/namespaces/{self.namespace}")
        started = time.monotonic()
        try:
            async with asyncio.timeout(REQUEST_DEADLINE_S):
                async with self.session.get(url, ssl=self.ssl_context) as response:
                    body = await response.read()
                    outcome = Outcome(started, time.monotonic(), response.status, _describe(body))
        except TimeoutError:
            outcome = Outcome(started, time.monotonic(), None, "hung")
        except aiohttp.ClientError as err:
            outcome = Outcome(started, time.monotonic(), None, f"{type(err).__name__}: {err}")
        self.outcomes.append(outcome)
        return outcome

    async def open_watch(self) -> aiohttp.ClientResponse:
        """A watch on the namespace's ConfigMaps, its response header received (in flight from now on)."""
        url = f"{self.base}/api/v1/namespaces/{self.namespace}/configmaps?watch=1"
        response = await self.session.get(url, ssl=self.ssl_context)
        assert response.status == 200, await response.text()
        return response

    async def wait_connected(self, within: float = 30) -> None:
        await wait_for(self.runtime, self.spec.id, connected, within=within)


async def watch_end(response: aiohttp.ClientResponse, within: float) -> str:
    """Read a watch until it ends; how it ended ("eof" or the error), or "hung"."""
    try:
        async with asyncio.timeout(within):
            while await response.content.readany():
                pass
    except TimeoutError:
        return "hung"
    except aiohttp.ClientError as err:
        return type(err).__name__
    finally:
        response.release()
    return "eof"


def _describe(body: bytes) -> str:
    try:
        document: Any = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"
    if isinstance(document, dict) and document.get("kind") == "Status":
        return f"Status {document.get('reason')}: {document.get('message')}"
    return str(document.get("kind")) if isinstance(document, dict) else "JSON"


@asynccontextmanager
async def fault_chain(
    runtime: Runtime,
    certs: Certs,
    work: Path,
    namespace: str,
    *,
    scheme: str = "grpc",
    kas_overrides: dict[str, Any] | None = None,
) -> AsyncIterator[Chain]:
    """The reference kas, a FaultProxy in front of its agent port, and one connected agent through it."""
    async with started_kas(work, certs, overrides=kas_overrides) as kas:
        kas_port = urlsplit(kas.agent_url(scheme)).port
        assert kas_port is not None
        proxy = await FaultProxy("127.0.0.1", kas_port).start()
        try:
            spec = agent_spec(kas, scheme, certs)
            spec = dataclasses.replace(spec, kas_address=f"{scheme}://127.0.0.1:{proxy.port}")
            runtime.apply(spec)
            async with aiohttp.ClientSession(headers=ci_headers()) as session:
                chain = Chain(kas, proxy, runtime, spec, session, proxy_ssl(certs), namespace)
                await chain.wait_connected()
                try:
                    yield chain
                finally:
                    await runtime.remove(spec.id)
        finally:
            await proxy.close()
