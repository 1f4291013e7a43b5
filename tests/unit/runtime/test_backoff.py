"""Backoff sequences (Kubernetes ExponentialBackoffManager semantics, PROTOCOL.md §8)."""

from __future__ import annotations

import random  # seeded jitter for determinism, not security

from agent_runtime.backoff import CONFIG_BACKOFF, TUNNEL_BACKOFF, Backoff, BackoffPolicy


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


def test_tunnel_sequence_grows_to_cap_with_jitter_bounds() -> None:
    clock = FakeClock()
    b = Backoff(TUNNEL_BACKOFF, clock=clock, rng=random.Random(1))  # noqa: S311
    bases = [min(1.0 * 1.6**n, 20.0) for n in range(10)]
    for base in bases:
        d = b.next_delay()
        assert base <= d < base * 1.2
        clock.t += 1


def test_reset_after_quiet_period() -> None:
    clock = FakeClock()
    b = Backoff(TUNNEL_BACKOFF, clock=clock, rng=random.Random(1))  # noqa: S311
    for _ in range(5):
        b.next_delay()
        clock.t += 1
    clock.t += 26  # > 25 s since the last delay was requested
    assert b.next_delay() < 1.2


def test_config_jitter_factor_one_gives_d_to_2d() -> None:
    b = Backoff(CONFIG_BACKOFF, clock=FakeClock(), rng=random.Random(7))  # noqa: S311
    first = b.next_delay()
    assert 10.0 <= first < 20.0
    delays = [b.next_delay() for _ in range(10)]
    assert all(300.0 <= d < 600.0 for d in delays[-3:])


def test_explicit_reset() -> None:
    b = Backoff(BackoffPolicy(1, 8, 2, 0, 100), clock=FakeClock())
    assert [b.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]
    b.reset()
    assert b.next_delay() == 1
