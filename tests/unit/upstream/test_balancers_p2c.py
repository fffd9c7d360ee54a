"""Weighted round robin, least request and peak EWMA on a ManualClock: the shares they give, how peak EWMA's
estimate moves (peak, decay, failure penalty), and the skip rules every balancer keeps (draining, ejected,
breaker-open and tried endpoints)."""

from __future__ import annotations

from collections import Counter

import pytest

from proxy.clock import ManualClock
from proxy.resilience.classify import classify_cancelled, classify_status
from proxy.upstream.balancer import (
    DEFAULT_RTT,
    Balancer,
    LeastRequest,
    PeakEwma,
    RoundRobin,
    WeightedRoundRobin,
    smooth_schedule,
)
from proxy.upstream.endpoint import DRAINING, Endpoint
from tests.unit.upstream.test_balancer import make_endpoints, open_breaker, picks

OK = classify_status(200)


def shares(balancer: Balancer, times: int) -> Counter[str | None]:
    return Counter(picks(balancer, times))


def test_smooth_schedule_interleaves_by_weight() -> None:
    assert smooth_schedule((3, 1)) == (0, 0, 1, 0)
    assert smooth_schedule((2, 2, 2)) == (0, 1, 2)  # divided by the gcd
    assert smooth_schedule(()) == ()
    assert Counter(smooth_schedule((5, 3, 2))) == {0: 5, 1: 3, 2: 2}


async def test_round_robin_turns_weighted_when_weights_differ() -> None:
    endpoints = make_endpoints(ManualClock(), 2)
    assert type(RoundRobin(()).rebuild(endpoints)) is RoundRobin
    endpoints[0].weight = 3
    balancer = RoundRobin(()).rebuild(endpoints)
    assert isinstance(balancer, WeightedRoundRobin)
    assert picks(balancer, 8) == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1"] * 2


async def test_weighted_round_robin_skips_unavailable_endpoints() -> None:
    endpoints = make_endpoints(ManualClock(), 3)
    endpoints[0].weight = 2
    endpoints[1].ejected = True
    balancer = WeightedRoundRobin(endpoints)
    assert set(picks(balancer, 8)) == {"10.0.0.1", "10.0.0.3"}


async def test_least_request_prefers_fewer_in_flight() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 2)
    endpoints[0].in_flight = 5
    assert shares(LeastRequest(endpoints, clock), 100) == {"10.0.0.2": 100}


async def test_least_request_spreads_evenly_when_idle_and_divides_by_weight() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 3)
    counts = shares(LeastRequest(endpoints, clock), 3000)
    assert all(900 < counts[f"10.0.0.{i}"] < 1100 for i in (1, 2, 3))
    endpoints[0].weight = 4
    endpoints[0].in_flight = 3  # cost 1.0 against 1.0: a tie keeps the first candidate
    endpoints[1].in_flight = 1  # cost 2.0
    counts = shares(LeastRequest(endpoints, clock), 3000)
    assert counts["10.0.0.2"] < counts["10.0.0.1"]


async def test_peak_ewma_starts_at_the_default_rtt_and_takes_peaks_at_once() -> None:
    clock = ManualClock()
    endpoint = make_endpoints(clock, 1)[0]
    balancer = PeakEwma((endpoint,), clock)
    assert balancer.estimate(endpoint, clock.now()) == DEFAULT_RTT
    balancer.observe(endpoint, OK, 0.5)
    assert endpoint.rtt == 0.5
    endpoint.in_flight = 2
    assert balancer.cost(endpoint, clock.now()) == pytest.approx(1.5)


async def test_peak_ewma_lower_samples_pull_slowly_and_reads_decay_toward_zero() -> None:
    clock = ManualClock()
    endpoint = make_endpoints(clock, 1)[0]
    balancer = PeakEwma((endpoint,), clock)
    balancer.observe(endpoint, OK, 1.0)
    clock.advance(1.0)
    balancer.observe(endpoint, OK, 0.0)  # 1 s of a 10 s time constant: ~9.5% of the way
    assert endpoint.rtt == pytest.approx(0.905, abs=0.001)
    clock.advance(10.0)
    assert balancer.estimate(endpoint, clock.now()) == pytest.approx(0.905 * 0.3679, abs=0.001)


async def test_peak_ewma_penalises_failures_and_counts_cancels_only_as_peaks() -> None:
    clock = ManualClock()
    endpoint = make_endpoints(clock, 1)[0]
    balancer = PeakEwma((endpoint,), clock)
    balancer.observe(endpoint, OK, 0.1)
    balancer.observe(endpoint, classify_status(503), 0.001)  # a fast error: twice the estimate
    assert endpoint.rtt == pytest.approx(0.2)
    balancer.observe(endpoint, classify_cancelled(), 0.05)
    assert endpoint.rtt == pytest.approx(0.2)
    balancer.observe(endpoint, classify_cancelled(), 0.4)
    assert endpoint.rtt == pytest.approx(0.4)


async def test_peak_ewma_sends_a_slow_endpoint_less() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 2)
    balancer = PeakEwma(endpoints, clock)
    for _ in range(2000):
        picked = balancer.pick(None, None)
        assert picked is not None
        endpoint = picked[0]
        balancer.observe(endpoint, OK, 0.2 if endpoint is endpoints[0] else 0.02)
        clock.advance(0.01)
    slow = sum(1 for host in picks(balancer, 1000) if host == "10.0.0.1")
    assert slow < 100


async def test_peak_ewma_estimate_survives_a_rebuild() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 2)
    balancer = PeakEwma(endpoints, clock)
    balancer.observe(endpoints[0], OK, 0.3)
    rebuilt = balancer.rebuild(endpoints[:1])
    assert rebuilt.estimate(endpoints[0], clock.now()) == pytest.approx(0.3)


def p2c(kind: str, endpoints: tuple[Endpoint, ...], clock: ManualClock) -> Balancer:
    return LeastRequest(endpoints, clock) if kind == "least_request" else PeakEwma(endpoints, clock)


@pytest.mark.parametrize("kind", ["least_request", "peak_ewma", "weighted"])
async def test_every_balancer_skips_draining_ejected_breaker_open_and_tried(kind: str) -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 4, breakers=True)
    endpoints[1].state = DRAINING
    endpoints[2].ejected = True
    open_breaker(endpoints[3])
    if kind == "weighted":
        endpoints[0].weight = 2
        balancer = WeightedRoundRobin(endpoints)
    else:
        balancer = p2c(kind, endpoints, clock)
    assert set(picks(balancer, 50)) == {"10.0.0.1"}
    # The only available endpoint was tried: it may still take the retry (the fallback).
    assert set(picks(balancer, 5, tried=[endpoints[0]])) == {"10.0.0.1"}
    endpoints[2].ejected = False
    assert set(picks(balancer, 50, tried=[endpoints[0]])) == {"10.0.0.3"}
    endpoints[0].ejected = True
    endpoints[2].ejected = True
    assert set(picks(balancer, 5)) == {None}


@pytest.mark.parametrize("kind", ["least_request", "peak_ewma"])
async def test_p2c_with_one_or_no_endpoint(kind: str) -> None:
    clock = ManualClock()
    assert p2c(kind, (), clock).pick(None, None) is None
    assert picks(p2c(kind, make_endpoints(clock, 1), clock), 3) == ["10.0.0.1"] * 3
