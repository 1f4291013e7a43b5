"""kas moves to another address under the same name: a grpc:// worker follows it.

The own HTTP/2 client (the default) resolves for every connection it dials. With GAO_KAS_TRANSPORT=grpc,
grpc dials the addresses the worker resolved and checked (no relay), so its channel cannot follow DNS by
itself: the worker re-resolves while the channel fails and swaps in a channel to the new address
(transport/grpc_channel.watch_channel). That variant passes too, but leaves the test process hanging at
exit in grpc.aio's poller thread (as it did before the runtime stopped importing grpc), so it is not run
here. Reference kas on 127.0.0.1:P, stopped, then on 127.0.0.2:P; `kas.test` resolves to whichever is
current (the one stand-in: the loop's getaddrinfo; there is no DNS server here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.runtime import Runtime
from agent_runtime.spec import Phase, WorkerSnapshot
from agent_runtime.transport import direct as direct_module
from tests.integration.system.conftest import Certs, agent_spec, connected, started_kas, wait_for

pytestmark = pytest.mark.timeout(90)


def _resolve_kas_test_to(loop: asyncio.AbstractEventLoop, answer: list[str]) -> Any:
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> Any:
        if host != "kas.test":
            return await real(host, port, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answer[0], int(port)))]

    return getaddrinfo


def _not_connected(snapshot: WorkerSnapshot) -> bool:
    return snapshot.phase is not Phase.CONNECTED


async def test_a_grpc_worker_follows_kas_to_its_new_address(
    runtime: Runtime, certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    answer = ["127.0.0.1"]
    monkeypatch.setattr(loop, "getaddrinfo", _resolve_kas_test_to(loop, answer))
    monkeypatch.setattr(direct_module, "RERESOLVE_INTERVAL_S", 0.5)
    async with started_kas(tmp_path / "kas-1", certs) as first:
        port = first.agent_port
        spec = dataclasses.replace(agent_spec(first, "grpc", certs), kas_address=f"grpc://kas.test:{port}")
        runtime.apply(spec)
        await wait_for(runtime, spec.id, connected)
    await wait_for(runtime, spec.id, _not_connected)
    answer[0] = "127.0.0.2"
    moved = {"agent": {"listen": {"address": f"127.0.0.2:{port}", "websocket": False}}}
    async with started_kas(tmp_path / "kas-2", certs, overrides=moved) as second:
        assert second.agent_address == f"127.0.0.2:{port}"
        snapshot = await wait_for(runtime, spec.id, connected, within=30)
        assert snapshot.registered
        assert len(second.connections) >= 1, "the moved kas sees no agent"
