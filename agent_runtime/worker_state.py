"""What modules report and how a worker's phase follows from it.

Each module reports per component: healthy, not applicable (kas lacks the service), or failed with a
typed WorkerError. The phase is derived, never set directly:
  Failed     some component failed for a reason retrying cannot fix (token, TLS, ...)
  Degraded   something works and something else fails
  Connected  something works and nothing fails
  Connecting nothing has worked yet
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from agent_runtime.errors import FATAL_REASONS
from agent_runtime.spec import ErrorReason, FluxStatus, Phase, WorkerError, WorkerSnapshot


class Component(enum.StrEnum):
    """The parts of a worker that report health."""

    TUNNELS = "tunnels"
    REGISTRAR = "registrar"
    CONFIGURATION = "configuration"


class _Health(enum.Enum):
    OK = "ok"
    NOT_APPLICABLE = "n/a"


class StateReporter(Protocol):
    """How a module tells the worker what happened (implemented by WorkerState)."""

    def ok(self, component: Component) -> None:
        """The component just succeeded talking to kas."""
        ...

    def not_applicable(self, component: Component) -> None:
        """kas does not offer this component's service (UNIMPLEMENTED); not an error."""
        ...

    def failed(self, component: Component, error: WorkerError) -> None:
        """The component's last attempt failed."""
        ...

    def configuration_applied(self, agent_id: int, commit: str) -> None:
        """A configuration was accepted."""
        ...

    def registered(self, ok: bool, kubernetes_version: str | None) -> None:
        """Outcome of the last Register call and the cluster version it carried."""
        ...

    def tunnel_counts(self, idle: int, active: int) -> None:
        """Current numbers of established idle and active tunnel streams."""
        ...

    def flux(self, status: FluxStatus) -> None:
        """The Flux module's latest state (never changes the phase)."""
        ...


Publish = Callable[[WorkerSnapshot], None]
RefineError = Callable[[WorkerError], WorkerError]


class WorkerState:
    """Aggregates module reports into WorkerSnapshots; calls `publish` whenever the snapshot changes."""

    def __init__(self, initial: WorkerSnapshot, publish: Publish, refine: RefineError | None = None) -> None:
        self._snapshot = initial
        self._publish = publish
        self._refine = refine or (lambda e: e)
        self._health: dict[Component, _Health | WorkerError] = {}
        self._override: Phase | None = None
        self._derived = False
        """The snapshot's phase, error and connected-since were derived from `_health` by `_update`."""

    @property
    def snapshot(self) -> WorkerSnapshot:
        """The latest snapshot."""
        return self._snapshot

    def ok(self, component: Component) -> None:
        """See StateReporter."""
        self._set_health(component, _Health.OK)

    def not_applicable(self, component: Component) -> None:
        """See StateReporter."""
        self._set_health(component, _Health.NOT_APPLICABLE)

    def failed(self, component: Component, error: WorkerError) -> None:
        """See StateReporter; a generic "unreachable" is refined with the transport's diagnosis."""
        if error.reason is ErrorReason.KAS_UNREACHABLE:
            error = self._refine(error)
        self._set_health(component, error)

    def configuration_applied(self, agent_id: int, commit: str) -> None:
        """See StateReporter."""
        self._health[Component.CONFIGURATION] = _Health.OK
        self._update(agent_id=agent_id, config_commit=commit, configuration_received=True)

    def registered(self, ok: bool, kubernetes_version: str | None) -> None:
        """See StateReporter."""
        if kubernetes_version is None:
            self._update(registered=ok)
        else:
            self._update(registered=ok, kubernetes_version=kubernetes_version)

    def tunnel_counts(self, idle: int, active: int) -> None:
        """See StateReporter. Every tunnelled request moves the counts twice and nothing else: once a
        snapshot has been derived from the health (phase, error, connected since), which only changes
        through `_update`, the counts are swapped in without deriving it all again."""
        if not self._derived:
            self._update(tunnels_idle=idle, tunnels_active=active)
            return
        snap = self._snapshot
        if snap.tunnels_idle != idle or snap.tunnels_active != active:
            self._snapshot = replace(snap, tunnels_idle=idle, tunnels_active=active)
            self._publish(self._snapshot)

    def flux(self, status: FluxStatus) -> None:
        """See StateReporter."""
        self._update(flux=status)

    def set_kas_version(self, version: str | None) -> None:
        """kas's version as the transport learned it."""
        if version:
            self._update(kas_version=version)

    def set_agent_version(self, version: str) -> None:
        """The protocol version this worker speaks."""
        self._update(agent_version=version)

    def clear_errors(self) -> None:
        """Forget component failures (new token: old failures no longer apply)."""
        self._health = {c: h for c, h in self._health.items() if not isinstance(h, WorkerError)}
        self._update()

    def set_phase_override(self, phase: Phase | None) -> None:
        """Force a phase regardless of health (the worker uses it while stopping); None = derived."""
        self._override = phase
        self._update()

    def _set_health(self, component: Component, health: _Health | WorkerError) -> None:
        if self._health.get(component) == health:
            return  # every tunnelled request reports TUNNELS ok: nothing to derive again
        self._health[component] = health
        if health is _Health.OK:
            self._forget_unreachable()
        self._update()

    def _forget_unreachable(self) -> None:
        """kas was just reached: "cannot reach kas" errors of the other components are refuted. Without
        this, a GetConfiguration stream broken by a kas restart kept the agent Degraded for as long as kas
        sent no configuration (GitLab's kas sends none while it cannot read the agent's project); a
        component that still cannot reach kas reports so again on its next attempt."""
        self._health = {
            c: h
            for c, h in self._health.items()
            if not (isinstance(h, WorkerError) and h.reason is ErrorReason.KAS_UNREACHABLE)
        }

    def _derive(self) -> tuple[Phase, WorkerError | None]:
        errors = [h for c in Component if isinstance(h := self._health.get(c), WorkerError)]
        working = any(self._health.get(c) is _Health.OK for c in Component)
        fatal = [e for e in errors if e.reason in FATAL_REASONS]
        if fatal:
            return Phase.FAILED, fatal[0]
        if working and errors:
            return Phase.DEGRADED, errors[0]
        if working:
            return Phase.CONNECTED, None
        return Phase.CONNECTING, errors[0] if errors else None

    def _update(self, **changes: object) -> None:
        snap = replace(self._snapshot, **changes)  # type: ignore[arg-type]  # typed by WorkerSnapshot
        phase, last_error = self._derive()
        if self._override is not None:
            phase = self._override
        connected = phase in (Phase.CONNECTED, Phase.DEGRADED)
        since = snap.connected_since if connected else None
        if connected and since is None:
            since = datetime.now(UTC)
        snap = replace(snap, phase=phase, last_error=last_error, connected_since=since)
        self._derived = True
        if snap != self._snapshot:
            self._snapshot = snap
            self._publish(snap)
