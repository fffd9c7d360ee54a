"""Retry budget (Linkerd's and Finagle's): retries may add at most `ratio` x requests plus a reserve.

Owns one route's budget: over a sliding 10 s window (ten one-second buckets, so every call is O(1)),
retries <= ratio x logical requests + min_per_second x 10, and at most `max_concurrent` retries in
flight. Must not sleep, schedule, or know what a request is: the retry loop calls `record_request` once
per logical request, `try_acquire_retry` before each retry and `release_retry` when that retry attempt
ends. Time comes from the injected `Clock`; per worker process, like every policy core.
"""

from __future__ import annotations

import enum
from typing import Final

from proxy.clock import Clock
from proxy.config.model import RetryBudgetConfig

WINDOW_SECONDS: Final = 10
# Linkerd's ServiceProfile ttl is 10 s; one-second buckets keep the window's edge error under 10 %.
_BUCKETS: Final = WINDOW_SECONDS


class BudgetDecision(enum.Enum):
    """`.value` for the two refusals is the `result` label of `sidecar_retries_total`."""

    ALLOWED = "retried"
    BUDGET_EXHAUSTED = "budget_exhausted"
    LIMIT_EXCEEDED = "limit_exceeded"


# Module aliases: `BudgetDecision.ALLOWED` is an Enum class attribute lookup, slow on the request path.
_ALLOWED: Final = BudgetDecision.ALLOWED
_BUDGET_EXHAUSTED: Final = BudgetDecision.BUDGET_EXHAUSTED
_LIMIT_EXCEEDED: Final = BudgetDecision.LIMIT_EXCEEDED


class RetryBudget:
    """Sliding-window retry budget with an in-flight cap; one per route (per worker)."""

    __slots__ = ("_clock", "_in_flight", "_request_total", "_requests", "_reserve", "_retries", "_retry_total",
                 "_second", "max_concurrent", "min_per_second", "ratio")

    def __init__(self, ratio: float, min_per_second: float, max_concurrent: int, clock: Clock) -> None:
        if ratio < 0 or min_per_second < 0 or max_concurrent < 0:
            raise ValueError("retry budget settings cannot be negative")
        self.ratio = ratio
        self.min_per_second = min_per_second
        # max_concurrent 0 means what it says: no retry may be in flight, i.e. retries are off.
        self.max_concurrent = max_concurrent
        self._clock = clock
        self._reserve = min_per_second * WINDOW_SECONDS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._request_total = 0
        self._retry_total = 0
        # The whole second (clock seconds, floored) the newest bucket belongs to.
        self._second = int(clock.now())
        self._in_flight = 0

    @classmethod
    def from_config(cls, config: RetryBudgetConfig, clock: Clock) -> RetryBudget:
        return cls(config.ratio, config.min_per_second, config.max_concurrent, clock)

    def _roll(self) -> int:
        """Expire buckets older than the window; return the current bucket's index. At most 10 steps."""
        second = int(self._clock.now())
        elapsed = second - self._second
        if elapsed > 0:
            if elapsed >= _BUCKETS:
                for i in range(_BUCKETS):
                    self._requests[i] = 0
                    self._retries[i] = 0
                self._request_total = 0
                self._retry_total = 0
            else:
                for step in range(1, elapsed + 1):
                    i = (self._second + step) % _BUCKETS
                    self._request_total -= self._requests[i]
                    self._retry_total -= self._retries[i]
                    self._requests[i] = 0
                    self._retries[i] = 0
            self._second = second
        # A clock that steps back (never with a monotonic clock) keeps writing the newest bucket.
        return self._second % _BUCKETS

    def record_request(self) -> None:
        """One logical request (not a retry) deposits into the budget."""
        i = self._roll()
        self._requests[i] += 1
        self._request_total += 1

    def try_acquire_retry(self) -> BudgetDecision:
        """May one more retry start now? On ALLOWED the caller owes one `release_retry`."""
        # The in-flight cap is checked first: it is the instantaneous limit, and a refusal by it takes
        # nothing from the window.
        if self._in_flight >= self.max_concurrent:
            return _LIMIT_EXCEEDED
        i = self._roll()
        if self._retry_total + 1 > self.ratio * self._request_total + self._reserve:
            return _BUDGET_EXHAUSTED
        self._retries[i] += 1
        self._retry_total += 1
        self._in_flight += 1
        return _ALLOWED

    def release_retry(self) -> None:
        """A retry attempt allowed by `try_acquire_retry` has finished (any outcome)."""
        # Never below zero: a double release must not grant extra concurrency later.
        if self._in_flight > 0:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def requests_in_window(self) -> int:
        self._roll()
        return self._request_total

    @property
    def retries_in_window(self) -> int:
        self._roll()
        return self._retry_total
