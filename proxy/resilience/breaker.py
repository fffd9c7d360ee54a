"""Per-endpoint circuit breaker with sony/gobreaker's semantics, transcribed state for state.

Owns one endpoint's closed/open/half-open gate: `allow()` before an attempt (a generation token, or
None to fail fast), `record(token, failure)` or `cancel(token)` after it. The transcription of gobreaker
(`beforeRequest`, `afterRequest`, `onSuccess`, `onFailure`, `currentState`, `setState`,
`toNewGeneration`) keeps its names in comments so the two can be read side by side; see
docs/decisions/0004-circuit-breaker.md for why we own it and the one extension (`cancel`).
Must not classify results (the classifier's verdict says failure or not), schedule timers (state is
evaluated lazily against the injected clock, as gobreaker does), or emit metrics itself (the
`on_transition` hook does). Single event loop per worker, so no locks.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Final, NamedTuple

from proxy.clock import Clock
from proxy.config.model import CircuitBreakerConfig


class BreakerState(enum.IntEnum):
    """The value is the `sidecar_circuit_breaker_state` gauge value; `label` the transitions' `to`."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS: Final = {BreakerState.CLOSED: "closed", BreakerState.OPEN: "open", BreakerState.HALF_OPEN: "half_open"}

_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
# gobreaker's zero `expiry` ("never"): with +inf, "expiry.Before(now)" is one float comparison.
_NEVER: Final = math.inf

TransitionHook = Callable[[BreakerState, BreakerState], None]


class BreakerCounts(NamedTuple):
    """gobreaker's `Counts`, for /clusters and tests."""

    requests: int
    total_successes: int
    total_failures: int
    consecutive_successes: int
    consecutive_failures: int


class CircuitBreaker:
    """gobreaker's `CircuitBreaker` with ReadyToTrip = requests >= min_requests and failure ratio >= failure_ratio."""

    __slots__ = ("_clock", "_consecutive_failures", "_consecutive_successes", "_expiry", "_generation",
                 "_on_transition", "_requests", "_state", "_total_failures", "_total_successes",
                 "failure_ratio", "half_open_requests", "interval", "min_requests", "open_timeout")

    def __init__(self, *, min_requests: int, failure_ratio: float, interval: float, open_timeout: float,
                 half_open_requests: int, clock: Clock, on_transition: TransitionHook | None = None) -> None:
        if min_requests < 1 or half_open_requests < 1:
            raise ValueError("min_requests and half_open_requests must be at least 1")
        if not 0 < failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if interval < 0 or open_timeout < 0:
            raise ValueError("interval and open_timeout cannot be negative")
        self.min_requests = min_requests
        self.failure_ratio = failure_ratio
        # 0 = never reset the closed-state counts (gobreaker's Interval <= 0).
        self.interval = interval
        # Unlike gobreaker (Timeout <= 0 -> 60 s), 0 means what it says: half-open at the next instant.
        self.open_timeout = open_timeout
        self.half_open_requests = half_open_requests  # gobreaker's MaxRequests
        self._clock = clock
        self._on_transition = on_transition
        self._state = _CLOSED
        self._generation = 0
        self._expiry = _NEVER
        self._requests = 0
        self._total_successes = 0
        self._total_failures = 0
        self._consecutive_successes = 0
        self._consecutive_failures = 0
        self._to_new_generation(clock.now())

    @classmethod
    def from_config(cls, config: CircuitBreakerConfig, clock: Clock,
                    on_transition: TransitionHook | None = None) -> CircuitBreaker:
        return cls(min_requests=config.min_requests, failure_ratio=config.failure_ratio,
                   interval=config.interval, open_timeout=config.open_timeout,
                   half_open_requests=config.half_open_requests, clock=clock, on_transition=on_transition)

    # -- the request path ------------------------------------------------------------------------------

    def allow(self) -> int | None:
        """beforeRequest: the generation token to hand back to `record`/`cancel`, or None to fail fast
        (open, or half-open with every trial slot taken this half-open period)."""
        state = self._current_state(self._clock.now())
        if state is _OPEN:
            return None
        if state is _HALF_OPEN and self._requests >= self.half_open_requests:
            return None
        # Counted when admitted: a half-open trial holds its slot until the period ends, finished or not.
        self._requests += 1
        return self._generation

    def would_allow(self) -> bool:
        """Would `allow()` admit an attempt now? Asks without taking a half-open trial slot."""
        state = self._current_state(self._clock.now())
        if state is _OPEN:
            return False
        return state is not _HALF_OPEN or self._requests < self.half_open_requests

    def record(self, generation: int, failure: bool) -> None:
        """afterRequest: the attempt admitted with `generation` ended; results from an older generation
        (an earlier interval or state) are ignored."""
        now = self._clock.now()
        state = self._current_state(now)
        if generation != self._generation:
            return
        if failure:
            self._on_failure(state, now)
        else:
            self._on_success(state, now)

    def cancel(self, generation: int) -> None:
        """The attempt admitted with `generation` ended without a verdict (the downstream went away).

        Not in gobreaker: it counts as neither success nor failure and gives its admission back, so
        a client hanging up during the only half-open trial cannot wedge the endpoint in half-open.
        """
        state = self._current_state(self._clock.now())
        if generation == self._generation and state is not _OPEN and self._requests > 0:
            self._requests -= 1

    # -- observation -----------------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """State, evaluated against the clock (may move open -> half-open, or start a new interval)."""
        return self._current_state(self._clock.now())

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def counts(self) -> BreakerCounts:
        return BreakerCounts(self._requests, self._total_successes, self._total_failures,
                             self._consecutive_successes, self._consecutive_failures)

    # -- gobreaker's state machine ---------------------------------------------------------------------

    def _on_success(self, state: BreakerState, now: float) -> None:
        # onSuccess: in the open state there is nothing to count (no live token can match anyway).
        if state is _OPEN:
            return
        self._total_successes += 1
        self._consecutive_successes += 1
        self._consecutive_failures = 0
        if state is _HALF_OPEN and self._consecutive_successes >= self.half_open_requests:
            self._set_state(_CLOSED, now)

    def _on_failure(self, state: BreakerState, now: float) -> None:
        if state is _CLOSED:
            self._total_failures += 1
            self._consecutive_failures += 1
            self._consecutive_successes = 0
            if self._ready_to_trip():
                self._set_state(_OPEN, now)
        elif state is _HALF_OPEN:
            self._set_state(_OPEN, now)

    def _ready_to_trip(self) -> bool:
        # Division, not failures >= ratio * requests: 0.6 * 5 is 3.0000000000000004 in floats.
        requests = self._requests
        return requests >= self.min_requests and self._total_failures / requests >= self.failure_ratio

    def _current_state(self, now: float) -> BreakerState:
        # currentState: gobreaker compares with expiry.Before(now), i.e. strictly later than expiry.
        state = self._state
        if state is _CLOSED:
            if self._expiry < now:
                self._to_new_generation(now)
        elif state is _OPEN and self._expiry < now:
            self._set_state(_HALF_OPEN, now)
        return self._state

    def _set_state(self, state: BreakerState, now: float) -> None:
        if self._state is state:
            return
        previous = self._state
        self._state = state
        self._to_new_generation(now)
        if self._on_transition is not None:
            self._on_transition(previous, state)

    def _to_new_generation(self, now: float) -> None:
        self._generation += 1
        self._requests = 0
        self._total_successes = 0
        self._total_failures = 0
        self._consecutive_successes = 0
        self._consecutive_failures = 0
        state = self._state
        if state is _CLOSED:
            self._expiry = now + self.interval if self.interval > 0 else _NEVER
        elif state is _OPEN:
            self._expiry = now + self.open_timeout
        else:
            self._expiry = _NEVER
