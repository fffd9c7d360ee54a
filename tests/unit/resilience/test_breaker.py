"""Circuit breaker: gobreaker's semantics in virtual time, plus a model-based property test.

The reference model at the bottom is written straight from gobreaker.go (beforeRequest, afterRequest,
onSuccess, onFailure, currentState, setState, toNewGeneration), Go-style, with a zero time for "no
expiry", independently of the implementation; the one extension it shares is `cancel` (see
docs/decisions/0004-circuit-breaker.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from proxy.clock import ManualClock
from proxy.config.model import CircuitBreakerConfig
from proxy.resilience.breaker import BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def make(clock: ManualClock, *, min_requests: int = 3, failure_ratio: float = 0.6, interval: float = 10.0,
         open_timeout: float = 30.0, half_open_requests: int = 3,
         transitions: list[tuple[BreakerState, BreakerState]] | None = None) -> CircuitBreaker:
    hook = None if transitions is None else (lambda a, b: transitions.append((a, b)))
    return CircuitBreaker(min_requests=min_requests, failure_ratio=failure_ratio, interval=interval,
                          open_timeout=open_timeout, half_open_requests=half_open_requests, clock=clock,
                          on_transition=hook)


def run(breaker: CircuitBreaker, *failures: bool) -> None:
    """Admit and complete one request per entry (True = failure), in order."""
    for failure in failures:
        token = breaker.allow()
        assert token is not None
        breaker.record(token, failure)


def trip(breaker: CircuitBreaker) -> None:
    run(breaker, True, True, True)
    assert breaker.state is OPEN


def test_state_values_and_labels() -> None:
    assert [(s.value, s.label) for s in BreakerState] == [(0, "closed"), (1, "open"), (2, "half_open")]


def test_trips_on_ratio_once_min_requests_reached() -> None:
    clock = ManualClock()
    breaker = make(clock)
    run(breaker, True, True)  # 2 failures, but requests < 3
    assert breaker.state is CLOSED
    run(breaker, False)  # 2/3 = 0.67 >= 0.6, but ReadyToTrip runs only on a failure
    assert breaker.state is CLOSED
    run(breaker, True)  # 3/4 >= 0.6
    assert breaker.state is OPEN


def test_ratio_is_exact_at_the_threshold() -> None:
    clock = ManualClock()
    breaker = make(clock, min_requests=5, failure_ratio=0.6)
    run(breaker, False, False, True, True, True)  # 3/5 = 0.6: trips (>=), despite float 0.6 * 5 > 3
    assert breaker.state is OPEN


def test_below_ratio_stays_closed() -> None:
    clock = ManualClock()
    breaker = make(clock, min_requests=3, failure_ratio=0.6)
    run(breaker, False, True, False, True, False)  # 2/5 = 0.4
    assert breaker.state is CLOSED
    assert breaker.counts.total_failures == 2 and breaker.counts.requests == 5


def test_in_flight_requests_count_toward_min_requests() -> None:
    # gobreaker's Requests counts admissions, so ReadyToTrip sees requests still in flight.
    clock = ManualClock()
    breaker = make(clock, min_requests=3, failure_ratio=0.3)
    first, _, _ = breaker.allow(), breaker.allow(), breaker.allow()
    assert first is not None and breaker.counts.requests == 3
    breaker.record(first, True)  # 1 failure / 3 requests >= 0.3
    assert breaker.state is OPEN


def test_interval_resets_counts_and_ignores_older_results() -> None:
    clock = ManualClock()
    breaker = make(clock, interval=10.0)
    run(breaker, True, True)
    straggler = breaker.allow()
    assert straggler is not None
    clock.advance(10.0)  # expiry.Before(now) is strict: not yet a new interval
    assert breaker.counts.requests == 3
    clock.advance(0.001)
    assert breaker.state is CLOSED and breaker.counts.requests == 0
    breaker.record(straggler, True)  # started in the previous interval: ignored
    assert breaker.counts.total_failures == 0
    run(breaker, True, True)
    assert breaker.state is CLOSED
    run(breaker, True)
    assert breaker.state is OPEN


def test_interval_zero_never_resets() -> None:
    clock = ManualClock()
    breaker = make(clock, interval=0.0)
    run(breaker, True, False, False)
    clock.advance(1e6)
    run(breaker, True, True)  # 3/5
    assert breaker.state is OPEN


def test_open_fails_fast_then_half_open_after_timeout() -> None:
    clock = ManualClock()
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker = make(clock, open_timeout=30.0, transitions=transitions)
    trip(breaker)
    assert breaker.allow() is None
    clock.advance(30.0)  # strictly after expiry, as gobreaker's expiry.Before(now)
    assert breaker.allow() is None and breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert transitions == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_half_open_admits_at_most_n_counted_when_admitted() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_requests=3)
    trip(breaker)
    clock.advance(31)
    tokens = [breaker.allow() for _ in range(3)]
    assert None not in tokens
    assert breaker.allow() is None  # no free trial slot
    assert tokens[0] is not None
    breaker.record(tokens[0], False)
    assert breaker.state is HALF_OPEN
    assert breaker.allow() is None  # a finished trial does not give its slot back


def test_half_open_closes_after_n_consecutive_successes() -> None:
    clock = ManualClock()
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker = make(clock, half_open_requests=3, transitions=transitions)
    trip(breaker)
    clock.advance(31)
    tokens = [breaker.allow() for _ in range(3)]
    for token in tokens[:2]:
        assert token is not None
        breaker.record(token, False)
    assert breaker.state is HALF_OPEN
    assert tokens[2] is not None
    breaker.record(tokens[2], False)
    assert breaker.state is CLOSED
    assert transitions[-1] == (HALF_OPEN, CLOSED)
    assert breaker.counts.requests == 0  # a fresh generation
    assert breaker.allow() is not None


def test_half_open_reopens_on_any_failure() -> None:
    clock = ManualClock()
    transitions: list[tuple[BreakerState, BreakerState]] = []
    breaker = make(clock, half_open_requests=3, transitions=transitions)
    trip(breaker)
    clock.advance(31)
    first, second = breaker.allow(), breaker.allow()
    assert first is not None and second is not None
    breaker.record(first, False)
    breaker.record(second, True)
    assert breaker.state is OPEN
    assert transitions[-1] == (HALF_OPEN, OPEN)
    assert breaker.allow() is None
    clock.advance(30.001)  # a full open_timeout again
    assert breaker.state is HALF_OPEN


def test_results_from_an_older_generation_are_ignored() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_requests=1)
    slow = breaker.allow()
    run(breaker, True, True)  # 2 failures of 3 admitted (the slow one still in flight)
    assert breaker.state is OPEN
    clock.advance(31)
    trial = breaker.allow()
    assert slow is not None and trial is not None and slow != trial
    breaker.record(slow, True)  # from the closed generation: must not re-open the half-open breaker
    assert breaker.state is HALF_OPEN
    breaker.record(trial, False)
    assert breaker.state is CLOSED


def test_cancel_counts_as_neither_and_frees_its_admission() -> None:
    clock = ManualClock()
    breaker = make(clock, min_requests=3, failure_ratio=0.6)
    run(breaker, True, True)
    token = breaker.allow()
    assert token is not None and breaker.counts.requests == 3
    breaker.cancel(token)
    assert breaker.counts == (2, 0, 2, 0, 2)
    assert breaker.state is CLOSED


def test_cancelled_half_open_trial_does_not_wedge_the_breaker() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_requests=1)
    trip(breaker)
    clock.advance(31)
    trial = breaker.allow()
    assert trial is not None and breaker.allow() is None
    breaker.cancel(trial)
    again = breaker.allow()
    assert again is not None
    breaker.record(again, False)
    assert breaker.state is CLOSED


def test_stale_cancel_is_ignored() -> None:
    clock = ManualClock()
    breaker = make(clock, half_open_requests=2)
    old = breaker.allow()
    run(breaker, True, True)
    assert breaker.state is OPEN
    clock.advance(31)
    assert breaker.allow() is not None
    assert old is not None
    breaker.cancel(old)
    assert breaker.counts.requests == 1


def test_open_timeout_zero_goes_half_open_at_the_next_instant() -> None:
    clock = ManualClock()
    breaker = make(clock, open_timeout=0.0)
    trip(breaker)
    assert breaker.allow() is None
    clock.advance(1e-6)
    assert breaker.allow() is not None and breaker.state is HALF_OPEN


def test_from_config() -> None:
    clock = ManualClock()
    seen: list[tuple[BreakerState, BreakerState]] = []
    config = CircuitBreakerConfig.model_validate({"min_requests": 2, "failure_ratio": 1, "interval": "5s",
                                                  "open_timeout": "1s", "half_open_requests": 2})
    breaker = CircuitBreaker.from_config(config, clock, on_transition=lambda a, b: seen.append((a, b)))
    assert (breaker.min_requests, breaker.failure_ratio, breaker.interval, breaker.open_timeout,
            breaker.half_open_requests) == (2, 1.0, 5.0, 1.0, 2)
    run(breaker, True, True)
    assert seen == [(CLOSED, OPEN)]


@pytest.mark.parametrize("kwargs", [{"min_requests": 0}, {"half_open_requests": 0}, {"failure_ratio": 0.0},
                                    {"failure_ratio": 1.5}, {"interval": -1.0}, {"open_timeout": -1.0}])
def test_refuses_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        make(ManualClock(), **kwargs)  # type: ignore[arg-type]


# -- the reference model: gobreaker.go's state table, transcribed -------------------------------------


@dataclass
class Counts:
    requests: int = 0
    total_successes: int = 0
    total_failures: int = 0
    consecutive_successes: int = 0
    consecutive_failures: int = 0


@dataclass
class Gobreaker:
    max_requests: int
    interval: float
    timeout: float
    min_requests: int
    failure_ratio: float
    state: str = "closed"
    generation: int = 0
    counts: Counts = field(default_factory=Counts)
    expiry: float | None = None  # None is Go's zero time.Time
    changes: list[tuple[str, str]] = field(default_factory=list)

    def ready_to_trip(self) -> bool:
        c = self.counts
        return c.requests >= self.min_requests and c.total_failures / c.requests >= self.failure_ratio

    def before_request(self, now: float) -> int | None:
        state, generation = self.current_state(now)
        if state == "open":
            return None  # ErrOpenState
        if state == "half-open" and self.counts.requests >= self.max_requests:
            return None  # ErrTooManyRequests
        self.counts.requests += 1
        return generation

    def after_request(self, before: int, success: bool, now: float) -> None:
        state, generation = self.current_state(now)
        if generation != before:
            return
        if success:
            self.on_success(state, now)
        else:
            self.on_failure(state, now)

    def cancel(self, before: int, now: float) -> None:
        # The extension: undo counts.onRequest() for a request without a verdict, same generation only.
        _, generation = self.current_state(now)
        if generation == before:
            self.counts.requests -= 1

    def on_success(self, state: str, now: float) -> None:
        if state == "closed":
            self.counts.total_successes += 1
            self.counts.consecutive_successes += 1
            self.counts.consecutive_failures = 0
        elif state == "half-open":
            self.counts.total_successes += 1
            self.counts.consecutive_successes += 1
            self.counts.consecutive_failures = 0
            if self.counts.consecutive_successes >= self.max_requests:
                self.set_state("closed", now)

    def on_failure(self, state: str, now: float) -> None:
        if state == "closed":
            self.counts.total_failures += 1
            self.counts.consecutive_failures += 1
            self.counts.consecutive_successes = 0
            if self.ready_to_trip():
                self.set_state("open", now)
        elif state == "half-open":
            self.set_state("open", now)

    def current_state(self, now: float) -> tuple[str, int]:
        if self.state == "closed":
            if self.expiry is not None and self.expiry < now:
                self.to_new_generation(now)
        elif self.state == "open":
            assert self.expiry is not None
            if self.expiry < now:
                self.set_state("half-open", now)
        return self.state, self.generation

    def set_state(self, state: str, now: float) -> None:
        if self.state == state:
            return
        prev = self.state
        self.state = state
        self.to_new_generation(now)
        self.changes.append((prev, state))

    def to_new_generation(self, now: float) -> None:
        self.generation += 1
        self.counts = Counts()
        if self.state == "closed":
            self.expiry = None if self.interval == 0 else now + self.interval
        elif self.state == "open":
            self.expiry = now + self.timeout
        else:
            self.expiry = None


NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half-open"}


class BreakerMatchesGobreaker(RuleBasedStateMachine):
    """Random allow/record/cancel/advance sequences: same states, admissions, tokens and transitions."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(start=0.0)
        self.seen: list[tuple[str, str]] = []
        self.breaker: CircuitBreaker | None = None
        self.model: Gobreaker | None = None
        # Outstanding admissions as (implementation token, model token).
        self.outstanding: list[tuple[int, int]] = []

    @initialize(min_requests=st.integers(1, 4), failure_ratio=st.sampled_from([0.25, 0.5, 0.6, 1.0]),
                interval=st.sampled_from([0.0, 1.0, 2.5]), timeout=st.sampled_from([0.0, 1.0, 3.0]),
                max_requests=st.integers(1, 3))
    def setup(self, min_requests: int, failure_ratio: float, interval: float, timeout: float,
              max_requests: int) -> None:
        self.breaker = CircuitBreaker(
            min_requests=min_requests, failure_ratio=failure_ratio, interval=interval, open_timeout=timeout,
            half_open_requests=max_requests, clock=self.clock,
            on_transition=lambda a, b: self.seen.append((NAMES[a], NAMES[b])))
        self.model = Gobreaker(max_requests=max_requests, interval=interval, timeout=timeout,
                               min_requests=min_requests, failure_ratio=failure_ratio)
        self.model.to_new_generation(self.clock.now())

    def parts(self) -> tuple[CircuitBreaker, Gobreaker]:
        assert self.breaker is not None and self.model is not None
        return self.breaker, self.model

    @rule()
    def allow(self) -> None:
        breaker, model = self.parts()
        token = breaker.allow()
        expected = model.before_request(self.clock.now())
        assert (token is None) == (expected is None)
        if token is not None and expected is not None:
            self.outstanding.append((token, expected))

    @rule(pick=st.integers(0, 1000), failure=st.booleans())
    def record(self, pick: int, failure: bool) -> None:
        if not self.outstanding:
            return
        breaker, model = self.parts()
        token, expected = self.outstanding.pop(pick % len(self.outstanding))
        breaker.record(token, failure)
        model.after_request(expected, not failure, self.clock.now())

    @rule(pick=st.integers(0, 1000))
    def cancel(self, pick: int) -> None:
        if not self.outstanding:
            return
        breaker, model = self.parts()
        token, expected = self.outstanding.pop(pick % len(self.outstanding))
        breaker.cancel(token)
        model.cancel(expected, self.clock.now())

    @rule(seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def same_state(self) -> None:
        if self.breaker is None:
            return
        breaker, model = self.parts()
        state = breaker.state
        expected, generation = model.current_state(self.clock.now())
        assert NAMES[state] == expected
        assert breaker.generation == generation
        counts = breaker.counts
        assert (counts.requests, counts.total_successes, counts.total_failures, counts.consecutive_successes,
                counts.consecutive_failures) == (
            model.counts.requests, model.counts.total_successes, model.counts.total_failures,
            model.counts.consecutive_successes, model.counts.consecutive_failures)
        assert self.seen == model.changes


BreakerMatchesGobreaker.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestBreakerMatchesGobreaker = BreakerMatchesGobreaker.TestCase
