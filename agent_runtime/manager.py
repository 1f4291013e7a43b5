"""WorkerManager: the set of running workers, diffed by id, each isolated under its own supervisor.

`apply(spec)` compares the desired spec with the one running: equal → nothing; only the token differs →
`worker.update_token()` (reconnect in place); anything else → the old worker drains, a new one starts.
`remove(id)` drains one worker, `stop(grace)` drains all. Every worker runs in its own supervisor task:
a worker whose `run()` raises is reported as Failed and restarted with backoff, and a worker that is slow
to stop only delays its own supervisor. `apply()` never waits for a worker.

Snapshots flow out as latest-value-per-worker: `subscribe(callback)` or `async for s in updates()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Final, Protocol

from agent_runtime.backoff import Backoff, BackoffPolicy
from agent_runtime.environment import WorkerEnvironment
from agent_runtime.secret import Secret
from agent_runtime.spec import ErrorReason, Phase, WorkerError, WorkerSnapshot, WorkerSpec
from agent_runtime.telemetry.logs import worker_context, worker_logger
from agent_runtime.worker import Worker

log = logging.getLogger(__name__)

SnapshotCallback = Callable[[WorkerSnapshot], None]

RESTART_BACKOFF: Final = BackoffPolicy(initial=1.0, cap=60.0, factor=2.0, jitter=0.2, reset_after=300.0)
"""Our choice: how a crashed worker (its run() raised or returned by itself) is restarted."""

STOP_MARGIN_S: Final = 2.0
"""After `stop(grace)` returned or timed out, how long run() may take to return before it is cancelled."""

_MAX_ERROR_TEXT: Final = 300


class ManagedWorker(Protocol):
    """What the manager needs from a worker (agent_runtime.worker.Worker implements it)."""

    @property
    def snapshot(self) -> WorkerSnapshot: ...

    def subscribe(self, callback: SnapshotCallback) -> Callable[[], None]: ...

    def update_token(self, token: Secret) -> None: ...

    async def run(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


WorkerFactory = Callable[[WorkerSpec, WorkerEnvironment], ManagedWorker]


def _default_factory(spec: WorkerSpec, env: WorkerEnvironment) -> ManagedWorker:
    return Worker(spec, env)


def _crash_snapshot(worker_id: str, exc: BaseException | None) -> WorkerSnapshot:
    what = f"{type(exc).__name__}: {exc}" if exc is not None else "run() returned without being stopped"
    return WorkerSnapshot(
        id=worker_id,
        phase=Phase.FAILED,
        last_error=WorkerError(
            ErrorReason.INTERNAL,
            f"the worker stopped unexpectedly ({what})"[:_MAX_ERROR_TEXT],
            "this is a bug in the agent runtime; it restarts the worker with backoff; see the operator log",
        ),
    )


class _Supervisor:
    """Owns one worker id: runs the current worker, applies spec changes, restarts after crashes."""

    def __init__(
        self,
        spec: WorkerSpec,
        factory: WorkerFactory,
        env: WorkerEnvironment,
        publish: SnapshotCallback,
        stop_grace: float,
        restart_backoff: BackoffPolicy,
    ) -> None:
        self.worker_id = spec.id
        self.desired: WorkerSpec | None = spec
        self.stop_grace = stop_grace
        self.closed = False
        """Set synchronously when the supervisor will not look at `desired` again."""
        self.done = asyncio.Event()
        self._factory = factory
        self._env = env
        self._publish = publish
        self._restart_backoff = restart_backoff
        self._wake = asyncio.Event()
        self._stopping = False
        self._log = worker_logger(log, spec.id)

    def want(self, spec: WorkerSpec | None, grace: float | None = None) -> None:
        self.desired = spec
        if grace is not None:
            self.stop_grace = grace
        self._wake.set()

    async def run(self) -> None:
        restart = Backoff(self._restart_backoff)
        try:
            while (spec := self.desired) is not None:
                if await self._run_one(spec):
                    await restart.sleep(self._wake)
                    self._wake.clear()
            self.closed = True
        finally:
            self.closed = True
            self.done.set()

    async def _run_one(self, spec: WorkerSpec) -> bool:
        """Run one worker until the spec changes (False) or the worker crashes (True)."""
        try:
            worker = self._factory(spec, self._env)
        except Exception as exc:  # noqa: BLE001 - isolation boundary: one worker never hurts the others
            self._log.exception("could not create the worker")
            self._publish(_crash_snapshot(spec.id, exc))
            return True
        unsubscribe = worker.subscribe(self._publish)
        self._publish(worker.snapshot)
        try:
            async with asyncio.TaskGroup() as tg:
                run_task = tg.create_task(self._guarded_run(worker), name=f"worker:{spec.id}")
                return await self._follow(worker, spec, run_task)
        finally:
            unsubscribe()

    async def _follow(self, worker: ManagedWorker, spec: WorkerSpec, run_task: asyncio.Task[bool]) -> bool:
        current = spec
        while True:
            await self._wake.wait()
            self._wake.clear()
            if run_task.done():
                return True  # crashed or returned by itself: already reported by _guarded_run
            desired = self.desired
            if desired == current:
                continue
            if desired is not None and current.same_connection_as(desired):
                try:
                    worker.update_token(desired.token)
                except Exception:  # noqa: BLE001 - isolation boundary, logged with traceback
                    self._log.exception("update_token failed; restarting the worker instead")
                else:
                    self._log.info("token changed: reconnecting in place")
                    current = desired
                    continue
            await self._stop(worker, run_task)
            return False

    async def _guarded_run(self, worker: ManagedWorker) -> bool:
        """worker.run(), with failures turned into a Failed snapshot instead of an exception."""
        try:
            await worker.run()
        except Exception as exc:  # noqa: BLE001 - isolation boundary, logged with traceback
            self._log.exception("worker crashed")
            self._publish(_crash_snapshot(self.worker_id, exc))
            return False
        else:
            if not self._stopping:
                self._log.error("worker returned without being stopped")
                self._publish(_crash_snapshot(self.worker_id, None))
            return True
        finally:
            self._wake.set()

    async def _stop(self, worker: ManagedWorker, run_task: asyncio.Task[bool]) -> None:
        grace = self.stop_grace
        self._stopping = True
        try:
            try:
                async with asyncio.timeout(grace + STOP_MARGIN_S):
                    await worker.stop(grace)
            except TimeoutError:
                self._log.warning("worker did not stop within its grace period; cancelling it")
            except Exception:  # noqa: BLE001 - isolation boundary, logged with traceback
                self._log.exception("worker.stop() failed; cancelling it")
            if not run_task.done():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_MARGIN_S):
                        await asyncio.shield(run_task)
            run_task.cancel()
        finally:
            self._stopping = False


class _UpdateQueue:
    """Latest snapshot per worker, not yet taken by one `updates()` consumer."""

    def __init__(self) -> None:
        self.pending: dict[str, WorkerSnapshot] = {}
        self.ready = asyncio.Event()

    def put(self, snapshot: WorkerSnapshot) -> None:
        self.pending.pop(snapshot.id, None)  # re-insert: the oldest change is delivered first
        self.pending[snapshot.id] = snapshot
        self.ready.set()

    def drop(self, worker_id: str) -> None:
        self.pending.pop(worker_id, None)


class WorkerManager:
    """Runs one supervisor per worker id inside its own TaskGroup (`run()` until `stop()`)."""

    def __init__(
        self,
        env: WorkerEnvironment,
        *,
        worker_factory: WorkerFactory | None = None,
        stop_grace: float = 10.0,
        restart_backoff: BackoffPolicy = RESTART_BACKOFF,
    ) -> None:
        self._env = env
        self._restart_backoff = restart_backoff
        self._factory = worker_factory or _default_factory
        self._stop_grace = stop_grace
        self._supervisors: dict[str, _Supervisor] = {}
        self._latest: dict[str, WorkerSnapshot] = {}
        self._callbacks: list[SnapshotCallback] = []
        self._removed_callbacks: list[Callable[[str], None]] = []
        self._queues: list[_UpdateQueue] = []
        self._tg: asyncio.TaskGroup | None = None
        self._started = asyncio.Event()
        self._closing = asyncio.Event()
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Own the supervisors until `stop()` drained them (or until cancelled: hard stop)."""
        if self._started.is_set():
            raise RuntimeError("WorkerManager.run() was already called")
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._started.set()
                await self._closing.wait()
        finally:
            self._tg = None
            self._closed = True
            for queue in self._queues:
                queue.ready.set()

    async def wait_started(self) -> None:
        """Return once `run()` accepts apply()."""
        await self._started.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Drain every worker (each gets `grace` seconds), then let `run()` return."""
        supervisors = list(self._supervisors.values())
        for supervisor in supervisors:
            supervisor.want(None, grace)
        for supervisor in supervisors:
            await supervisor.done.wait()
        self._closing.set()

    # --- desired state -----------------------------------------------------------------------------
    def apply(self, spec: WorkerSpec) -> None:
        """Make `spec` the desired state of worker `spec.id`; returns at once (the supervisor acts)."""
        tg = self._tg
        if tg is None or self._closing.is_set():
            raise RuntimeError("the worker manager is not running")
        supervisor = self._supervisors.get(spec.id)
        if supervisor is not None and not supervisor.closed:
            if supervisor.desired != spec:
                supervisor.want(spec)
            return
        supervisor = _Supervisor(
            spec, self._factory, self._env, self._publish, self._stop_grace, self._restart_backoff
        )
        self._supervisors[spec.id] = supervisor
        with worker_context(spec.id):  # the supervisor's task and everything below it log the id
            tg.create_task(self._supervise(supervisor), name=f"worker-supervisor:{spec.id}")

    async def remove(self, worker_id: str, grace: float | None = None) -> None:
        """Drain worker `worker_id` (no-op when unknown); returns when it has stopped."""
        supervisor = self._supervisors.get(worker_id)
        if supervisor is None:
            return
        supervisor.want(None, grace)
        await supervisor.done.wait()

    def worker_ids(self) -> frozenset[str]:
        """Ids of the workers that are running or draining."""
        return frozenset(self._supervisors)

    def desired(self, worker_id: str) -> WorkerSpec | None:
        """The spec last applied for `worker_id` (None when removed or unknown)."""
        supervisor = self._supervisors.get(worker_id)
        return supervisor.desired if supervisor is not None else None

    async def _supervise(self, supervisor: _Supervisor) -> None:
        try:
            await supervisor.run()
        except Exception:
            log.exception("worker supervisor failed", extra={"worker": supervisor.worker_id})
        finally:
            if self._supervisors.get(supervisor.worker_id) is supervisor:
                del self._supervisors[supervisor.worker_id]
                self._forget(supervisor.worker_id)

    # --- snapshots ---------------------------------------------------------------------------------
    def snapshot(self, worker_id: str) -> WorkerSnapshot | None:
        """The latest snapshot of a worker, or None."""
        return self._latest.get(worker_id)

    def snapshots(self) -> dict[str, WorkerSnapshot]:
        """The latest snapshot of every worker."""
        return dict(self._latest)

    def subscribe(self, callback: SnapshotCallback) -> Callable[[], None]:
        """Call `callback(snapshot)` on every change (on the event loop); returns an unsubscribe function."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def subscribe_removed(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(worker_id)` once a removed worker has stopped; returns an unsubscribe function."""
        self._removed_callbacks.append(callback)
        return lambda: self._removed_callbacks.remove(callback)

    async def updates(self) -> AsyncGenerator[WorkerSnapshot, None]:
        """Latest-value-per-worker stream: a slow consumer skips intermediate snapshots, never a worker.

        Starts with the current snapshot of every worker; ends when the manager has stopped.
        """
        queue = _UpdateQueue()
        for snapshot in self._latest.values():
            queue.put(snapshot)
        self._queues.append(queue)
        try:
            while True:
                if not queue.pending:
                    if self._closed:
                        return
                    queue.ready.clear()
                    await queue.ready.wait()
                    continue
                worker_id = next(iter(queue.pending))
                yield queue.pending.pop(worker_id)
        finally:
            self._queues.remove(queue)

    def _publish(self, snapshot: WorkerSnapshot) -> None:
        supervisor = self._supervisors.get(snapshot.id)
        if supervisor is None or supervisor.closed:
            return  # a late snapshot of a removed worker
        self._latest[snapshot.id] = snapshot
        for queue in self._queues:
            queue.put(snapshot)
        for callback in list(self._callbacks):
            try:
                callback(snapshot)
            except Exception:
                log.exception("snapshot subscriber failed", extra={"worker": snapshot.id})

    def _forget(self, worker_id: str) -> None:
        self._latest.pop(worker_id, None)
        for queue in self._queues:
            queue.drop(worker_id)
        for callback in list(self._removed_callbacks):
            try:
                callback(worker_id)
            except Exception:
                log.exception("removal subscriber failed", extra={"worker": worker_id})
