"""A scripted stand-in worker for manager tests: records what the manager asked of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from agent_runtime.environment import WorkerEnvironment
from agent_runtime.secret import Secret
from agent_runtime.spec import Phase, WorkerSnapshot, WorkerSpec


@dataclass
class Behaviour:
    """How the workers of one id behave."""

    crash_after: float | None = None
    """run() raises RuntimeError after this many seconds."""
    stop_hangs: bool = False
    """stop() never returns (the manager must time it out)."""


@dataclass
class ScriptedWorker:
    spec: WorkerSpec
    behaviour: Behaviour
    tokens: list[Secret] = field(default_factory=list)
    stop_graces: list[float] = field(default_factory=list)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    callbacks: list[Callable[[WorkerSnapshot], None]] = field(default_factory=list)
    _snapshot: WorkerSnapshot | None = None

    @property
    def snapshot(self) -> WorkerSnapshot:
        return self._snapshot or WorkerSnapshot(id=self.spec.id, phase=Phase.CONNECTING)

    def publish(self, snapshot: WorkerSnapshot) -> None:
        self._snapshot = snapshot
        for callback in list(self.callbacks):
            callback(snapshot)

    def subscribe(self, callback: Callable[[WorkerSnapshot], None]) -> Callable[[], None]:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)

    def update_token(self, token: Secret) -> None:
        self.tokens.append(token)

    async def run(self) -> None:
        self.running.set()
        self.publish(WorkerSnapshot(id=self.spec.id, phase=Phase.CONNECTED))
        try:
            if self.behaviour.crash_after is not None:
                await asyncio.sleep(self.behaviour.crash_after)
                raise RuntimeError("scripted crash")
            await self.stopped.wait()
        finally:
            self.finished = True

    async def stop(self, grace: float) -> None:
        self.stop_graces.append(grace)
        if self.behaviour.stop_hangs:
            await asyncio.Event().wait()
        self.stopped.set()


class Factory:
    """Builds ScriptedWorkers and remembers every one it built, per id."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.built: dict[str, list[ScriptedWorker]] = {}

    def __call__(self, spec: WorkerSpec, env: WorkerEnvironment) -> ScriptedWorker:
        worker = ScriptedWorker(spec, self.behaviours.get(spec.id, Behaviour()))
        self.built.setdefault(spec.id, []).append(worker)
        return worker

    def latest(self, worker_id: str) -> ScriptedWorker:
        return self.built[worker_id][-1]
