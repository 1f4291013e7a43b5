"""A live Worker against the loopback fake kas, on an event loop of its own thread.

Hypothesis drives sync tests; each example runs a coroutine on this loop (`run()`), so one worker (and one
fake kas) serves every example of a test, as one worker serves every request kas sends it.
The worker acts as a ServiceAccount without any rights: whatever a fuzzed request asks for, the API server
refuses it, so fuzzing never changes the shared cluster.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.kube import KubeAccess, load_kube_access
from agent_runtime.policy import PERMISSIVE_POLICY
from agent_runtime.secret import Secret
from agent_runtime.spec import ServiceAccountRef, WorkerSpec
from agent_runtime.worker import Worker
from tests.integration.runtime.fake_kas import FakeKas

T = TypeVar("T")


class LiveWorker:
    """FakeKas + Worker on a private loop thread; `start()`, then `run(coro)` per example, `close()`."""

    def __init__(self, kubeconfig: Path, namespace: str, kas: FakeKas | None = None) -> None:
        self._kubeconfig = kubeconfig
        self._namespace = namespace
        self.kas = kas or FakeKas()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-worker-loop", daemon=True)
        self.worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None
        self._kube: KubeAccess | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run `coro` on the worker's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> LiveWorker:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        await self.kas.start()
        self._kube = await asyncio.to_thread(load_kube_access, str(self._kubeconfig))
        spec = WorkerSpec(
            id="fuzz/agent",
            kas_address=self.kas.address,
            token=Secret(self.kas.token),
            identity=ServiceAccountRef(self._namespace, "fuzz-nobody"),
        )
        self.worker = Worker(spec, WorkerEnvironment(kube=self._kube, policy=PERMISSIVE_POLICY))
        self._task = asyncio.create_task(self.worker.run(), name="fuzzed-worker")

    def close(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        if self.worker is not None and self._task is not None:
            await self.worker.stop(1.0)
            await asyncio.wait_for(self._task, 10)
        await self.kas.stop()
        if self._kube is not None:
            await self._kube.close()
