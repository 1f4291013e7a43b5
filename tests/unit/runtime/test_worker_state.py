"""WorkerState: how module reports become the phase and the last error."""

from __future__ import annotations

from agent_runtime.spec import ErrorReason, Phase, WorkerError, WorkerSnapshot
from agent_runtime.worker_state import Component, WorkerState

UNREACHABLE = WorkerError(ErrorReason.KAS_UNREACHABLE, "cannot connect to kas at 127.0.0.1:1")
REJECTED = WorkerError(ErrorReason.CONFIGURATION_REJECTED, "invalid configuration")


def _phase(state: WorkerState) -> Phase:
    """Read afresh at each call (a property read twice would be narrowed by mypy)."""
    return state.snapshot.phase


def _state() -> tuple[WorkerState, list[WorkerSnapshot]]:
    published: list[WorkerSnapshot] = []
    return WorkerState(WorkerSnapshot(id="ns/a", phase=Phase.CONNECTING), published.append), published


def test_reaching_kas_again_refutes_every_component_s_unreachable_error() -> None:
    """kas restarted: the GetConfiguration stream broke ("unreachable") and GitLab's kas sends no new
    configuration while it cannot read the project, but the tunnels are back: Connected, no error."""
    state, _ = _state()
    state.ok(Component.TUNNELS)
    state.ok(Component.CONFIGURATION)
    state.failed(Component.TUNNELS, UNREACHABLE)
    state.failed(Component.CONFIGURATION, UNREACHABLE)
    assert _phase(state) is Phase.CONNECTING
    assert state.snapshot.last_error == UNREACHABLE

    state.ok(Component.TUNNELS)
    assert _phase(state) is Phase.CONNECTED
    assert state.snapshot.last_error is None


def test_other_errors_stay_and_unreachable_comes_back_on_the_next_failure() -> None:
    state, _ = _state()
    state.failed(Component.CONFIGURATION, REJECTED)
    state.failed(Component.REGISTRAR, UNREACHABLE)
    state.ok(Component.TUNNELS)
    assert _phase(state) is Phase.DEGRADED
    assert state.snapshot.last_error == REJECTED  # not about reaching kas: still true

    state.failed(Component.REGISTRAR, UNREACHABLE)  # still cannot reach it on its own attempt
    state.failed(Component.CONFIGURATION, WorkerError(ErrorReason.KAS_UNREACHABLE, "stream removed"))
    assert _phase(state) is Phase.DEGRADED
    assert state.snapshot.last_error is not None
    assert state.snapshot.last_error.reason is ErrorReason.KAS_UNREACHABLE


def test_a_repeated_ok_publishes_nothing_new() -> None:
    state, published = _state()
    state.ok(Component.TUNNELS)
    count = len(published)
    state.ok(Component.TUNNELS)
    assert len(published) == count
    assert published[-1].phase is Phase.CONNECTED


def test_tunnel_counts_move_alone_and_keep_the_derived_phase() -> None:
    """Every request moves the counts twice without deriving the phase again (issue 11): the published
    snapshots still carry the phase, error and connection time the health gives, and a later health
    change keeps the counts."""
    state, published = _state()
    state.tunnel_counts(2, 0)
    assert _phase(state) is Phase.CONNECTING
    state.ok(Component.TUNNELS)
    state.failed(Component.CONFIGURATION, UNREACHABLE)
    degraded = published[-1]
    assert degraded.phase is Phase.DEGRADED
    assert degraded.connected_since is not None

    state.tunnel_counts(1, 1)
    assert published[-1] == WorkerSnapshot(
        id="ns/a",
        phase=Phase.DEGRADED,
        connected_since=degraded.connected_since,
        tunnels_idle=1,
        tunnels_active=1,
        last_error=UNREACHABLE,
    )
    count = len(published)
    state.tunnel_counts(1, 1)
    assert len(published) == count  # no change, nothing published

    state.ok(Component.CONFIGURATION)
    connected = published[-1]
    assert connected.phase is Phase.CONNECTED
    assert connected.last_error is None
    assert (connected.tunnels_idle, connected.tunnels_active) == (1, 1)
