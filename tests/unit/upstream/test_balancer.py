"""Balancers: round robin order; the rules every balancer keeps (skip draining, ejected and breaker-refused
endpoints, prefer untried ones with a fallback to a tried one, ask only the chosen endpoint's breaker, so no
other half-open trial slot is taken); rebuilding over a new snapshot."""

from __future__ import annotations

import pytest

from proxy.clock import ManualClock
from proxy.resilience.breaker import BreakerState, CircuitBreaker
from proxy.resilience.classify import classify_status
from proxy.upstream.balancer import Balancer, RoundRobin, pick_from
from proxy.upstream.endpoint import DRAINING, NO_BREAKER, Endpoint
from proxy.upstream.pool import PoolSettings


def make_endpoints(clock: ManualClock, count: int = 3, breakers: bool = False) -> tuple[Endpoint, ...]:
    made = []
    for index in range(count):
        endpoint = Endpoint("test", f"10.0.0.{index + 1}", 8080, PoolSettings(), clock)
        if breakers:
            # Trips on one failure; half-open after 30 s with one trial slot.
            endpoint.breaker = CircuitBreaker(min_requests=1, failure_ratio=1.0, interval=10.0, open_timeout=30.0,
                                              half_open_requests=1, clock=clock)
        made.append(endpoint)
    return tuple(made)


def open_breaker(endpoint: Endpoint) -> None:
    assert endpoint.breaker is not None
    token = endpoint.breaker.allow()
    assert token is not None
    endpoint.breaker.record(token, True)
    assert endpoint.breaker.state is BreakerState.OPEN


def picks(balancer: Balancer, times: int, tried: list[Endpoint] | None = None,
          hash_key: int | None = None) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(times):
        picked = balancer.pick(tried, hash_key)
        out.append(None if picked is None else picked[0].host)
    return out


async def test_round_robin_offers_each_endpoint_in_turn() -> None:
    balancer = RoundRobin(make_endpoints(ManualClock()))
    assert picks(balancer, 7) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 2 + ["10.0.0.1"]


async def test_round_robin_ignores_the_hash_key() -> None:
    balancer = RoundRobin(make_endpoints(ManualClock()))
    assert picks(balancer, 3, hash_key=42) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


async def test_no_endpoints_no_pick() -> None:
    assert RoundRobin(()).pick(None, None) is None
    assert RoundRobin(()).pick([], None) is None


async def test_without_a_breaker_the_token_is_no_breaker() -> None:
    endpoints = make_endpoints(ManualClock(), 1)
    assert RoundRobin(endpoints).pick(None, None) == (endpoints[0], NO_BREAKER)


async def test_ejected_endpoints_are_skipped_and_the_turn_moves_on() -> None:
    endpoints = make_endpoints(ManualClock())
    endpoints[1].ejected = True
    # The pick that would have started at the ejected endpoint takes the next one.
    assert picks(RoundRobin(endpoints), 4) == ["10.0.0.1", "10.0.0.3", "10.0.0.3", "10.0.0.1"]


async def test_draining_endpoints_get_no_picks() -> None:
    endpoints = make_endpoints(ManualClock())
    endpoints[0].state = DRAINING
    assert "10.0.0.1" not in picks(RoundRobin(endpoints), 9)
    for endpoint in endpoints:
        endpoint.state = DRAINING
    assert picks(RoundRobin(endpoints), 3) == [None, None, None]
    # Not even as the fallback of a retry.
    assert picks(RoundRobin(endpoints), 3, tried=[endpoints[0]]) == [None, None, None]


async def test_breaker_refused_endpoints_are_skipped() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, breakers=True)
    open_breaker(endpoints[1])
    assert picks(RoundRobin(endpoints), 4) == ["10.0.0.1", "10.0.0.3", "10.0.0.3", "10.0.0.1"]
    endpoints = make_endpoints(clock, breakers=True)
    for endpoint in endpoints:
        open_breaker(endpoint)
    assert picks(RoundRobin(endpoints), 3) == [None, None, None]


async def test_the_token_is_the_admitting_breakers_generation() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 1, breakers=True)
    picked = RoundRobin(endpoints).pick(None, None)
    assert picked is not None
    endpoint, token = picked
    endpoint.report(token, classify_status(200))  # the token is the one the breaker expects back
    assert endpoint.breaker is not None and endpoint.breaker.counts.total_successes == 1


async def test_tried_endpoints_are_avoided_while_another_admits() -> None:
    endpoints = make_endpoints(ManualClock())
    tried = [endpoints[0]]
    assert picks(RoundRobin(endpoints), 4, tried) == ["10.0.0.2", "10.0.0.2", "10.0.0.3", "10.0.0.2"]
    tried.append(endpoints[1])
    assert picks(RoundRobin(endpoints), 3, tried) == ["10.0.0.3"] * 3


async def test_a_tried_endpoint_is_the_fallback_when_no_untried_one_admits() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, breakers=True)
    open_breaker(endpoints[0])
    open_breaker(endpoints[2])
    # A retry after 10.0.0.2 failed to answer well: the others are refused, so 10.0.0.2 again beats no retry.
    assert picks(RoundRobin(endpoints), 3, [endpoints[1]]) == ["10.0.0.2"] * 3
    # Every endpoint tried: the first in this pick's order that admits... is the first tried one met.
    endpoints = make_endpoints(clock)
    assert picks(RoundRobin(endpoints), 3, list(endpoints)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


async def test_the_fallback_is_the_first_tried_endpoint_in_the_picks_order() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, breakers=True)
    open_breaker(endpoints[0])
    # Everything tried; the pick starting at 10.0.0.1 meets it first, so it is the only fallback asked, and
    # its breaker refuses: no pick (the other tried endpoints are not asked in turn).
    assert pick_from(endpoints, 0, list(endpoints)) is None
    picked = pick_from(endpoints, 1, list(endpoints))
    assert picked is not None and picked[0] is endpoints[1]


async def test_only_the_chosen_endpoints_breaker_is_asked_so_no_other_trial_slot_is_taken() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, breakers=True)
    first, second, _third = endpoints
    open_breaker(first)
    clock.advance(30.5)  # half-open, one trial slot
    assert first.breaker is not None and first.breaker.state is BreakerState.HALF_OPEN
    # A retry that already tried `first`: the pick starts at it, skips it as tried without asking its breaker,
    # and takes `second`. The half-open trial slot of `first` is still free.
    picked = pick_from(endpoints, 0, [first])
    assert picked is not None and picked[0] is second
    assert first.breaker.would_allow()
    # A first try: `first` is chosen and admitted, taking its one trial slot ...
    picked = pick_from(endpoints, 0, None)
    assert picked is not None and picked[0] is first
    assert not first.breaker.would_allow()
    # ... so the next pick that starts at it moves on, and asking took nothing from `second`'s breaker either.
    picked = pick_from(endpoints, 0, None)
    assert picked is not None and picked[0] is second


async def test_pick_from_wraps_round_from_any_start() -> None:
    endpoints = make_endpoints(ManualClock())
    for start in range(3):
        picked = pick_from(endpoints, start, [endpoints[start]])
        assert picked is not None and picked[0] is endpoints[(start + 1) % 3]


async def test_rebuild_makes_a_new_balancer_over_the_new_snapshot_and_leaves_the_old_one() -> None:
    endpoints = make_endpoints(ManualClock())
    old = RoundRobin(endpoints)
    assert picks(old, 1) == ["10.0.0.1"]
    new = old.rebuild(endpoints[1:])
    assert isinstance(new, RoundRobin) and new is not old
    assert new.endpoints == endpoints[1:] and old.endpoints == endpoints
    assert picks(new, 3) == ["10.0.0.2", "10.0.0.3", "10.0.0.2"]
    assert picks(old, 1) == ["10.0.0.2"]


async def test_round_robin_learns_nothing_from_outcomes() -> None:
    endpoints = make_endpoints(ManualClock())
    balancer = RoundRobin(endpoints)
    balancer.observe(endpoints[0], classify_status(503), 0.25)
    assert picks(balancer, 3) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


async def test_endpoints_carry_a_weight_and_a_state() -> None:
    endpoint = make_endpoints(ManualClock(), 1)[0]
    assert endpoint.weight == 1
    assert endpoint.snapshot()["state"] == "ready" and endpoint.snapshot()["weight"] == 1
    assert endpoint.available()
    endpoint.state = DRAINING
    assert not endpoint.available() and endpoint.snapshot()["state"] == "draining"
    heavy = Endpoint("test", "10.0.0.9", 80, PoolSettings(), ManualClock(), weight=5)
    assert heavy.weight == 5
    with pytest.raises(ValueError, match="weight"):
        Endpoint("test", "10.0.0.9", 80, PoolSettings(), ManualClock(), weight=0)
