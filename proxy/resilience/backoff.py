"""Retry back-off: how long to wait before retry n (1-based).

Owns the two forms of `retries.backoff`: Envoy's full-jitter exponential (`ExponentialBackoff`) and the
fixed schedule used as written (`FixedSchedule`), both with `delay(retry_number) -> seconds`, and
`from_config` to compile a `BackoffConfig` once. Must not sleep, read the clock or know about
Retry-After (the retry loop takes the larger of the two); randomness comes from the injected `Random`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final, Protocol

from proxy.config.model import BackoffConfig

# Envoy's defaults: base 25 ms, max 10 x base.
DEFAULT_BASE: Final = 0.025
MAX_TO_BASE: Final = 10.0
# Past this many doublings (2^n - 1) * base exceeds any sane max; stop computing powers.
_MAX_SHIFT: Final = 62


class BackoffStrategy(Protocol):
    def delay(self, retry_number: int) -> float: ...


class ExponentialBackoff:
    """Full jitter, exactly Envoy's router back-off: retry n waits U[0, min((2^n - 1) * base, max)).

    With base 25 ms: retry 1 waits 0-25 ms, retry 2 0-75 ms, retry 3 0-175 ms, then capped at max.
    """

    __slots__ = ("_random", "base", "max")

    def __init__(self, base: float, max: float, rng: random.Random) -> None:
        # Envoy insists on base > 0; a zero base here simply means "retry at once" (the schema allows 0ms).
        if base < 0:
            raise ValueError(f"backoff base cannot be negative (got {base})")
        if max < base:
            raise ValueError(f"backoff max ({max}) must be at least base ({base})")
        self.base = base
        self.max = max
        self._random = rng.random

    def delay(self, retry_number: int) -> float:
        if retry_number >= _MAX_SHIFT:
            ceiling = self.max
        else:
            # n < 1 is a caller bug; treat it as the first retry rather than wait a negative time.
            ceiling = ((1 << max(retry_number, 1)) - 1) * self.base
            if ceiling > self.max:
                ceiling = self.max
        return self._random() * ceiling


class FixedSchedule:
    """The seed's fixed schedule, used as written: retry n waits delays[min(n, len) - 1]; no jitter."""

    __slots__ = ("_last", "delays")

    def __init__(self, delays: Sequence[float]) -> None:
        if not delays:
            raise ValueError("a backoff schedule needs at least one delay")
        if any(d < 0 for d in delays):
            raise ValueError("backoff delays cannot be negative")
        self.delays: tuple[float, ...] = tuple(delays)
        self._last = len(self.delays) - 1

    def delay(self, retry_number: int) -> float:
        index = retry_number - 1
        if index > self._last:
            index = self._last
        elif index < 0:
            index = 0
        return self.delays[index]


def from_config(config: BackoffConfig, rng: random.Random) -> ExponentialBackoff | FixedSchedule:
    """Compile a `BackoffConfig`. Envoy's defaulting: no base -> 25 ms (or max, if smaller); no max -> 10 x base."""
    if config.schedule is not None:
        return FixedSchedule(config.schedule)
    base = config.base
    ceiling = config.max
    if base is None:
        base = DEFAULT_BASE if ceiling is None else min(DEFAULT_BASE, ceiling)
    if ceiling is None:
        ceiling = base * MAX_TO_BASE
    return ExponentialBackoff(base, ceiling, rng)
