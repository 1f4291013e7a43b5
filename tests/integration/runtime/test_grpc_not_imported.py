"""A runtime running an agent over the default transport never imports grpc (about 8.6 MiB per process);
with GAO_KAS_TRANSPORT=grpc it does, lazily, and works the same.

The runtime runs in a child process (this one has grpc loaded for the fake kas): the agent connects,
registers, gets its configuration and serves a request through its tunnel, and only then does the child
say whether grpc is in sys.modules.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.integration.runtime.fake_kas import FakeKas, http

ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import asyncio, json, sys

from agent_runtime.kube import load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.runtime import Runtime, RuntimeSettings
from agent_runtime.secret import Secret
from agent_runtime.spec import Phase, WorkerSpec


async def main(kubeconfig: str, kas: str, token: str) -> None:
    kube = load_kube_access(kubeconfig)
    settings = RuntimeSettings(observability_address=None, stop_grace=1.0, policy=PERMISSIVE_POLICY)
    runtime = Runtime(kube, settings)
    await runtime.start()
    runtime.apply(WorkerSpec(id="test/lean", kas_address=kas, token=Secret(token)))
    async with asyncio.timeout(60):
        while True:
            lean = runtime.snapshots().get("test/lean")
            if lean and lean.phase is Phase.CONNECTED and lean.registered and lean.tunnels_idle:
                break
            await asyncio.sleep(0.05)
    print("connected", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the request went through
    print(json.dumps({"grpc": "grpc" in sys.modules, "phase": runtime.snapshots()["test/lean"].phase.value}))
    await runtime.stop(1.0)
    await kube.close()


asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize(("transport", "imported"), [("h2", False), ("grpc", True)])
async def test_grpc_is_imported_only_on_the_grpc_path(
    kas: FakeKas, admin_kubeconfig: Path, transport: str, imported: bool
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GAO_KAS_TRANSPORT": transport}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(admin_kubeconfig),
        kas.address,
        kas.token,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        async with asyncio.timeout(90):
            assert await child.stdout.readline() == b"connected\n"
            result = await http(kas, "GET", "/version")
            assert result.status == 200
            child.stdin.write(b"go\n")
            report = json.loads(await child.stdout.readline())
            assert await child.wait() == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert report == {"grpc": imported, "phase": "Connected"}
