"""Injected time and randomness.

Owns the one `Clock` abstraction every policy core uses, so tests can drive virtual time.
Must not hold per-request state or import anything above the core layer.
"""

from __future__ import annotations

import random
import time


class Clock:
    """Monotonic seconds plus a seeded random source; subclass or replace in tests."""

    __slots__ = ("random",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self.random = rng if rng is not None else random.Random()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class ManualClock(Clock):
    """A clock that only moves when told to: virtual time for unit tests."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 1000.0, rng: random.Random | None = None) -> None:
        super().__init__(rng if rng is not None else random.Random(0))
        self._now = start

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
