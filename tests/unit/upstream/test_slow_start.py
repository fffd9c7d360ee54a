"""Slow start: an endpoint added to a running set ramps from 10 % of its weight to full over the window
(round robin passes its turn on, the P2C balancers scale its cost); the first set starts at full weight."""

from __future__ import annotations

from collections import Counter

import pytest

from proxy.clock import ManualClock
from proxy.upstream.balancer import MIN_RAMP, LeastRequest, RoundRobin, WeightedRoundRobin, ramp
from tests.unit.upstream.test_balancer import make_endpoints, picks
from tests.unit.upstream.test_cluster import make_cluster


async def test_ramp_rises_linearly_from_the_floor_and_clears_when_warm() -> None:
    clock = ManualClock()
    endpoint = make_endpoints(clock, 1)[0]
    assert ramp(endpoint, clock.now()) == 1.0
    endpoint.ramp_window = 30.0
    endpoint.warm_at = clock.now() + 30.0
    assert ramp(endpoint, clock.now()) == MIN_RAMP
    assert ramp(endpoint, clock.now() + 15.0) == pytest.approx(0.5)
    assert ramp(endpoint, clock.now() + 30.0) == 1.0
    assert endpoint.warm_at == 0.0


@pytest.mark.parametrize("weighted", [False, True])
async def test_round_robin_gives_a_ramping_endpoint_its_ramp_of_the_turns(weighted: bool) -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 2)
    endpoints[1].ramp_window = 30.0
    endpoints[1].warm_at = clock.now() + 30.0
    if weighted:
        endpoints[0].weight = 3
        endpoints[1].weight = 2
    balancer = WeightedRoundRobin(endpoints, clock) if weighted else RoundRobin(endpoints, clock)
    share = Counter(picks(balancer, 4000))["10.0.0.2"] / 4000
    full = 0.4 if weighted else 0.5
    assert share == pytest.approx(full * MIN_RAMP, abs=0.02)
    clock.advance(30.0)
    assert Counter(picks(balancer, 4000))["10.0.0.2"] / 4000 == pytest.approx(full, abs=0.01)


async def test_least_request_scales_a_ramping_endpoints_cost() -> None:
    clock = ManualClock()
    endpoints = make_endpoints(clock, 2)
    endpoints[1].ramp_window = 30.0
    endpoints[1].warm_at = clock.now() + 30.0
    balancer = LeastRequest(endpoints, clock)
    endpoints[0].in_flight = 4  # cost 5 against the newcomer's 1 / 0.1 = 10
    assert set(picks(balancer, 50)) == {"10.0.0.1"}
    clock.advance(24.0)  # ramp 0.8: 1.25 against 5
    assert set(picks(balancer, 50)) == {"10.0.0.2"}


async def test_only_endpoints_added_to_a_running_set_ramp() -> None:
    clock = ManualClock()
    cluster = make_cluster(clock, slow_start="30s")
    cluster.set_endpoints([("10.0.0.1", 80)])
    assert cluster.endpoints[0].warm_at == 0.0
    cluster.set_endpoints([("10.0.0.1", 80), ("10.0.0.2", 80)])
    assert cluster.endpoints[0].warm_at == 0.0
    assert cluster.endpoints[1].warm_at == clock.now() + 30.0
    assert make_cluster(clock).config.slow_start is None
