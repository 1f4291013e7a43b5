"""Leader election on a coordination.k8s.io/v1 Lease, as agentk's leader runner (PROTOCOL.md §12.4, §17.8).

Lease `agent-<agent id>-lock` in the operator pod's namespace, holder identity the pod's name, so two
operator replicas, or an agentk of the same agent beside the operator, never both run the Flux module.
Like client-go's elector: a lease held by someone else counts as expired only when its record has not
changed for `leaseDurationSeconds` by our own clock (clocks of different nodes are never compared); the
leader renews every retry period and steps down when it could not renew within the renew deadline; on
a clean stop it releases the lease (empty holder, duration 1 s) so a successor need not wait.

Requests use the process's own credentials (the operator's ServiceAccount needs get, create and update
on leases in its namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp

from agent_runtime.clock import Clock
from agent_runtime.kube import KubeAccess

log = logging.getLogger(__name__)

_TIMEOUT_S: Final = 5.0
"""Bound on one Lease request (client-go bounds each by the renew deadline)."""


class LeaseError(Exception):
    """The Lease cannot be read or written (RBAC, API server), with the API server's reason."""


def lease_name(agent_id: int) -> str:
    """agentk's lock name for an agent."""
    return f"agent-{agent_id}-lock"


def _micro_time(now: datetime) -> str:
    """A Kubernetes MicroTime."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseTiming:
    """client-go's three durations, in seconds."""

    duration: float
    renew_deadline: float
    retry_period: float


@dataclass
class _Observed:
    record: str
    """The Lease's spec as JSON: a change of it (a renewal) restarts the expiry clock."""
    since: float
    """Monotonic time at which `record` was first seen."""


class LeaseElector:
    """Campaigns for one Lease; `lead(body, on_standby)` runs `body` only while holding it."""

    def __init__(
        self,
        kube: KubeAccess,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming,
        clock: Clock,
    ) -> None:
        self._kube = kube
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self._namespace = namespace
        self._name = name
        self._identity = identity
        self._timing = timing
        self._clock = clock
        self._observed: _Observed | None = None
        self._held: dict[str, Any] | None = None
        self.holder: str = ""
        """The holder last seen ("" when none)."""

    async def lead(
        self,
        body: Callable[[], Coroutine[Any, Any, None]],
        on_standby: Callable[[str], None],
        on_error: Callable[[str], None],
    ) -> None:
        """Run `body` whenever this identity holds the Lease, until cancelled; the Lease is released then.

        `on_standby(holder)` is called while another identity holds it, `on_error(text)` when the Lease
        cannot be read or written."""
        try:
            while True:
                await self._acquire(on_standby, on_error)
                await self._lead_once(body)
        finally:
            with contextlib.suppress(LeaseError, aiohttp.ClientError, TimeoutError, asyncio.CancelledError):
                await asyncio.shield(self._release())

    async def _acquire(self, on_standby: Callable[[str], None], on_error: Callable[[str], None]) -> None:
        while True:
            try:
                if await self._try_acquire_or_renew():
                    log.info("acquired lease %s/%s", self._namespace, self._name)
                    return
                on_standby(self.holder)
            except LeaseError as e:
                on_error(str(e))
            await asyncio.sleep(self._timing.retry_period)

    async def _lead_once(self, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `body` and renew; return when the Lease is lost (body cancelled) or body returns."""
        async with asyncio.TaskGroup() as tg:
            work = tg.create_task(body(), name=f"lease-body:{self._name}")
            renewer = tg.create_task(self._renew_until_lost(), name=f"lease-renew:{self._name}")
            await asyncio.wait({work, renewer}, return_when=asyncio.FIRST_COMPLETED)
            for task in (work, renewer):
                task.cancel()
        log.info("stopped leading on lease %s/%s", self._namespace, self._name)

    async def _renew_until_lost(self) -> None:
        last_renewed = self._clock.now()
        while True:
            await asyncio.sleep(self._timing.retry_period)
            try:
                renewed = await self._try_acquire_or_renew()
            except LeaseError as e:
                log.warning("cannot renew lease %s/%s: %s", self._namespace, self._name, e)
            else:
                if not renewed:
                    log.warning("lease %s/%s was taken by %s", self._namespace, self._name, self.holder)
                    return
                last_renewed = self._clock.now()
                continue
            if self._clock.now() - last_renewed > self._timing.renew_deadline:
                return

    # --- one round, as client-go's tryAcquireOrRenew ----------------------------------------------------
    async def _try_acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        status, lease = await self._request("GET", self._path)
        if status == 404:
            spec = self._spec(now, acquire=now, transitions=0)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self._name, "namespace": self._namespace},
                "spec": spec,
            }
            status, created = await self._request("POST", self._collection, body)
            if status == 409:
                return False  # someone else created it first
            self._expect(status, created, (201,))
            self._held, self.holder = created, self._identity
            return True
        self._expect(status, lease, (200,))
        spec = dict(lease.get("spec") or {})
        holder = str(spec.get("holderIdentity") or "")
        self.holder = holder
        record = json.dumps(spec, sort_keys=True)
        monotonic = self._clock.now()
        if self._observed is None or self._observed.record != record:
            self._observed = _Observed(record, monotonic)
        duration = float(spec.get("leaseDurationSeconds") or self._timing.duration)
        if holder and holder != self._identity and monotonic < self._observed.since + duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self._identity:
            acquire = spec.get("acquireTime") or _micro_time(now)
            new_spec = {**self._spec(now, acquire=None, transitions=transitions), "acquireTime": acquire}
        else:
            new_spec = self._spec(now, acquire=now, transitions=transitions + 1)
        updated = {**lease, "spec": new_spec}
        status, answer = await self._request("PUT", self._path, updated)
        if status == 409:
            return False  # changed meanwhile (another candidate won); look again next round
        self._expect(status, answer, (200,))
        self._held, self.holder = answer, self._identity
        self._observed = _Observed(json.dumps(answer.get("spec") or {}, sort_keys=True), self._clock.now())
        return True

    async def _release(self) -> None:
        held = self._held
        if held is None or self.holder != self._identity:
            return
        now = _micro_time(datetime.now(UTC))
        spec = {
            **(held.get("spec") or {}),
            "holderIdentity": "",
            "leaseDurationSeconds": 1,
            "acquireTime": now,
            "renewTime": now,
        }
        status, _ = await self._request("PUT", self._path, {**held, "spec": spec})
        if status == 200:
            log.info("released lease %s/%s", self._namespace, self._name)
        self._held = None

    def _spec(self, now: datetime, *, acquire: datetime | None, transitions: int) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self._identity,
            "leaseDurationSeconds": round(self._timing.duration),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }
        if acquire is not None:
            spec["acquireTime"] = _micro_time(acquire)
        return spec

    @staticmethod
    def _expect(status: int, answer: dict[str, Any], ok: tuple[int, ...]) -> None:
        if status not in ok:
            message = str(answer.get("message") or "")[:300] if isinstance(answer, dict) else ""
            raise LeaseError(f"HTTP {status}: {message}" if message else f"HTTP {status}")

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        kube = self._kube
        headers = {**kube.auth_headers(), "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        try:
            async with kube.session.request(
                method,
                kube.url(path),
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S),
            ) as response:
                text = await response.text()
                if response.status == 401:
                    kube.invalidate_credentials()
                try:
                    decoded = json.loads(text) if text else {}
                except ValueError:
                    decoded = {}
                return response.status, decoded if isinstance(decoded, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as e:
            raise LeaseError(f"{type(e).__name__}: {e}") from e
