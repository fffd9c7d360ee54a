"""Back-off: Envoy's full-jitter exponential (bounds and distribution) and the fixed schedule."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.model import BackoffConfig
from proxy.resilience.backoff import ExponentialBackoff, FixedSchedule, from_config


def ceiling(base: float, cap: float, n: int) -> float:
    return min(cap, float(2**n - 1) * base)


@pytest.mark.parametrize(("n", "upper"), [(1, 0.025), (2, 0.075), (3, 0.175), (4, 0.25), (5, 0.25), (30, 0.25)])
def test_full_jitter_distribution(n: int, upper: float) -> None:
    backoff = ExponentialBackoff(0.025, 0.25, random.Random(7))
    samples = [backoff.delay(n) for _ in range(4000)]
    assert all(0.0 <= s < upper for s in samples)
    # Uniform over [0, upper): the extremes are reached and the mean sits in the middle.
    assert min(samples) < upper * 0.01
    assert max(samples) > upper * 0.99
    assert statistics.fmean(samples) == pytest.approx(upper / 2, rel=0.05)
    # Each decile holds about a tenth of the samples.
    deciles = [0] * 10
    for s in samples:
        deciles[int(s / upper * 10)] += 1
    assert all(300 < count < 500 for count in deciles)


@given(base=st.floats(0.001, 1.0), factor=st.floats(1.0, 100.0), n=st.integers(1, 200),
       seed=st.integers(0, 2**32))
def test_delay_always_within_envoy_bounds(base: float, factor: float, n: int, seed: int) -> None:
    cap = base * factor
    delay = ExponentialBackoff(base, cap, random.Random(seed)).delay(n)
    # <=, not <: random() * c can round up to c for some floats c.
    assert 0.0 <= delay <= ceiling(base, cap, n)


def test_jitter_is_deterministic_with_a_seed() -> None:
    a = ExponentialBackoff(0.025, 0.25, random.Random(3))
    b = ExponentialBackoff(0.025, 0.25, random.Random(3))
    assert [a.delay(n) for n in range(1, 20)] == [b.delay(n) for n in range(1, 20)]


def test_retry_number_below_one_is_the_first_retry() -> None:
    backoff = ExponentialBackoff(0.025, 0.25, random.Random(1))
    assert all(0.0 <= backoff.delay(0) < 0.025 for _ in range(200))


def test_zero_base_means_no_wait() -> None:
    assert ExponentialBackoff(0.0, 0.0, random.Random(1)).delay(3) == 0.0


def test_exponential_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError):
        ExponentialBackoff(0.1, 0.05, random.Random())
    with pytest.raises(ValueError):
        ExponentialBackoff(-0.1, 0.05, random.Random())


def test_fixed_schedule_is_used_as_written() -> None:
    schedule = FixedSchedule([0.1, 0.5, 1.0, 2.0, 5.0])
    assert [schedule.delay(n) for n in range(1, 9)] == [0.1, 0.5, 1.0, 2.0, 5.0, 5.0, 5.0, 5.0]
    assert schedule.delay(0) == 0.1
    assert FixedSchedule([0.3]).delay(10) == 0.3


def test_fixed_schedule_refuses_empty_and_negative() -> None:
    with pytest.raises(ValueError):
        FixedSchedule([])
    with pytest.raises(ValueError):
        FixedSchedule([0.1, -1.0])


def cfg(**fields: object) -> BackoffConfig:
    return BackoffConfig.model_validate(fields)


def test_from_config_forms() -> None:
    rng = random.Random(0)
    schedule = from_config(cfg(schedule=["100ms", "1s"]), rng)
    assert isinstance(schedule, FixedSchedule) and schedule.delays == (0.1, 1.0)
    both = from_config(cfg(base="10ms", max="1s"), rng)
    assert isinstance(both, ExponentialBackoff) and (both.base, both.max) == (0.01, 1.0)
    # Envoy's defaulting: max = 10 x base; base = 25 ms.
    base_only = from_config(cfg(base="50ms"), rng)
    assert isinstance(base_only, ExponentialBackoff) and (base_only.base, base_only.max) == (0.05, 0.5)
    neither = from_config(cfg(), rng)
    assert isinstance(neither, ExponentialBackoff) and (neither.base, neither.max) == (0.025, 0.25)
    max_only = from_config(cfg(max="2s"), rng)
    assert isinstance(max_only, ExponentialBackoff) and (max_only.base, max_only.max) == (0.025, 2.0)
    small_max = from_config(cfg(max="10ms"), rng)
    assert isinstance(small_max, ExponentialBackoff) and (small_max.base, small_max.max) == (0.01, 0.01)
