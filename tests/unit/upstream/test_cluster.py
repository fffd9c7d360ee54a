"""Cluster: endpoint-set changes (endpoints that stay keep their state, removed ones turn DRAINING, the balancer
is rebuilt over the new snapshot), the request path's `pick` and `report` (to the endpoint's breaker and to the
balancer, with the attempt's latency), and the injected clock reaching breakers and the bulkhead."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

import proxy.upstream.balancer
from proxy.clock import ManualClock
from proxy.config.model import ClusterConfig
from proxy.discovery.snapshot import DiscoveredEndpoint
from proxy.errors import FailureKind
from proxy.resilience.classify import Verdict, classify_cancelled, classify_failure, classify_status
from proxy.resilience.limits import LimitDecision
from proxy.telemetry.metrics import Metrics
from proxy.upstream.balancer import Balancer, RoundRobin
from proxy.upstream.cluster import Cluster
from proxy.upstream.endpoint import ACTIVE, DRAINING, Endpoint

ADDRESSES = [("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)]
COMPILED = not proxy.upstream.balancer.__file__.endswith(".py")


def make_cluster(clock: ManualClock, **extra: object) -> Cluster:
    # Static endpoints in the config; the cluster knows none until `set_endpoints` (the app calls it).
    config = ClusterConfig.model_validate({"name": "c", "endpoints": ["10.0.0.1:80"], **extra})
    return Cluster(config, Metrics(CollectorRegistry()), clock)


def hosts(cluster: Cluster, times: int, tried: list[Endpoint] | None = None) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(times):
        picked = cluster.pick(tried)
        out.append(None if picked is None else picked[0].host)
    return out


async def test_no_endpoints_until_discovery_delivers_a_set() -> None:
    cluster = make_cluster(ManualClock())
    assert not cluster.has_endpoints and cluster.pick(None) is None and not cluster.available()
    cluster.set_endpoints(ADDRESSES)
    assert cluster.has_endpoints and hosts(cluster, 3) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


async def test_a_new_set_keeps_staying_endpoints_drains_removed_ones_and_rebuilds_the_balancer() -> None:
    cluster = make_cluster(ManualClock())
    cluster.set_endpoints(ADDRESSES)
    first, second, third = cluster.endpoints
    old_balancer = cluster.balancer
    cluster.set_endpoints([("10.0.0.3", 80), ("10.0.0.4", 80)])
    assert cluster.endpoints[0] is third  # the same object: its pool and breaker stay
    assert [e.state for e in cluster.endpoints] == [ACTIVE, ACTIVE]
    assert first.state is DRAINING and second.state is DRAINING
    assert cluster.balancer is not old_balancer and isinstance(cluster.balancer, RoundRobin)
    assert cluster.balancer.endpoints == cluster.endpoints
    assert hosts(cluster, 4) == ["10.0.0.3", "10.0.0.4"] * 2
    # Even a retry whose tried list names a drained endpoint is never sent back to it.
    assert hosts(cluster, 2, [first]) == ["10.0.0.3", "10.0.0.4"]
    assert not first.available()
    assert [e["state"] for e in cluster.snapshot()["endpoints"]] == ["ready", "ready"]  # type: ignore[index]


async def test_the_clock_reaches_every_endpoints_breaker() -> None:
    clock = ManualClock()
    cluster = make_cluster(clock, circuit_breaker={"min_requests": 1, "failure_ratio": 1.0, "interval": "10s",
                                                   "open_timeout": "30s"})
    cluster.set_endpoints(ADDRESSES[:1])
    picked = cluster.pick(None)
    assert picked is not None
    endpoint, token = picked
    cluster.report(endpoint, token, classify_status(503), 0.01)
    assert endpoint.breaker_state == "open" and cluster.pick(None) is None
    clock.advance(30.5)  # virtual time: the breaker's open_timeout passes without sleeping
    assert endpoint.breaker_state == "half_open"
    assert cluster.pick(None) is not None


async def test_the_clock_reaches_the_bulkhead() -> None:
    loop = asyncio.get_running_loop()
    clock = ManualClock()
    cluster = make_cluster(clock, limits={"max_requests": 1, "max_pending": 1, "pending_timeout": "10s"})
    bulkhead = cluster.bulkhead
    assert bulkhead is not None
    started = loop.time()
    assert bulkhead.try_acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await asyncio.sleep(0)
    clock.advance(10.0)
    assert await waiter is LimitDecision.REJECTED_PENDING_TIMEOUT
    assert loop.time() - started < 1.0


async def test_report_feeds_the_endpoints_breaker_and_outlier_counts() -> None:
    clock = ManualClock()
    cluster = make_cluster(clock, circuit_breaker={"min_requests": 5}, outlier_detection={"consecutive_5xx": 1})
    cluster.set_endpoints(ADDRESSES[:1])
    picked = cluster.pick(None)
    assert picked is not None
    endpoint, token = picked
    cluster.report(endpoint, token, classify_failure(FailureKind.RESET), 0.5)
    assert endpoint.failures == 1
    assert endpoint.breaker is not None and endpoint.breaker.counts.total_failures == 1
    assert cluster.outlier is not None
    cluster.evaluate_outliers()
    assert endpoint.ejected and cluster.pick(None) is None


@pytest.mark.skipif(COMPILED, reason="a compiled Balancer cannot be subclassed by test code (mypyc)")
async def test_report_tells_the_balancer_each_attempts_verdict_and_latency() -> None:
    observed: list[tuple[str, str, float]] = []

    class Recording(RoundRobin):
        def rebuild(self, endpoints: tuple[Endpoint, ...]) -> Balancer:
            return Recording(endpoints)

        def observe(self, endpoint: Endpoint, verdict: Verdict, latency: float) -> None:
            observed.append((endpoint.host, verdict.label, latency))

    cluster = make_cluster(ManualClock())
    cluster.balancer = Recording(())
    cluster.set_endpoints(ADDRESSES[:2])
    assert isinstance(cluster.balancer, Recording)  # rebuilt as its own kind
    for verdict, latency in ((classify_status(200), 0.012), (classify_status(503), 0.25),
                             (classify_cancelled(), 1.5)):
        picked = cluster.pick(None)
        assert picked is not None
        cluster.report(picked[0], picked[1], verdict, latency)
    assert observed == [("10.0.0.1", "success", 0.012), ("10.0.0.2", "failure", 0.25),
                        ("10.0.0.1", "cancelled", 1.5)]


# -- zones, terminating and health ---------------------------------------------------------------------


def zoned_cluster(clock: ManualClock, zones: list[str], for_zones: list[tuple[str, ...]] | None = None) -> Cluster:
    cluster = make_cluster(clock)
    cluster.local_zone = "z1"
    cluster.set_endpoints([DiscoveredEndpoint(f"10.0.0.{i + 1}", 80, zone, for_zones[i] if for_zones else ())
                           for i, zone in enumerate(zones)])
    return cluster


async def test_the_local_zone_takes_every_pick_while_healthy_enough() -> None:
    cluster = zoned_cluster(ManualClock(), ["z1", "z1", "z1", "z2", "z2"])
    assert set(hosts(cluster, 30)) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    # One of three local endpoints ejected: 2/3 x 1.4 >= 1, still all local.
    cluster.endpoints[0].ejected = True
    assert set(hosts(cluster, 30)) == {"10.0.0.2", "10.0.0.3"}


async def test_below_the_overprovisioned_share_the_local_zone_sheds_traffic_and_with_none_left_all_of_it() -> None:
    clock = ManualClock()
    cluster = zoned_cluster(clock, ["z1", "z1", "z1", "z2", "z2"])
    cluster.endpoints[0].ejected = True
    cluster.endpoints[1].ejected = True
    # 1/3 x 1.4 = 0.47 of picks stay local; the other 0.53 go to round robin over all five, whose turns on
    # the two ejected endpoints pass to the next available one (the local 10.0.0.3): 2/5 of them leave the zone.
    picks = hosts(cluster, 2000)
    other_zone = picks.count("10.0.0.4") + picks.count("10.0.0.5")
    assert 0.53 * 0.4 * 2000 * 0.8 < other_zone < 0.53 * 0.4 * 2000 * 1.2
    assert picks.count("10.0.0.4") > 0 and picks.count("10.0.0.5") > 0
    cluster.endpoints[2].ejected = True
    assert set(hosts(cluster, 20)) == {"10.0.0.4", "10.0.0.5"}


async def test_hints_decide_when_every_endpoint_has_them_else_the_zone_does() -> None:
    clock = ManualClock()
    hinted = zoned_cluster(clock, ["z1", "z2", "z2"], [("z1",), ("z1",), ("z2",)])
    assert set(hosts(hinted, 20)) == {"10.0.0.1", "10.0.0.2"}
    partly = zoned_cluster(clock, ["z1", "z2", "z2"], [("z1",), ("z1",), ()])
    assert set(hosts(partly, 20)) == {"10.0.0.1"}


async def test_terminating_and_unhealthy_endpoints_leave_the_balancer_and_come_back() -> None:
    cluster = make_cluster(ManualClock())
    cluster.set_endpoints([DiscoveredEndpoint("10.0.0.1", 80, terminating=True), DiscoveredEndpoint("10.0.0.2", 80)])
    assert set(hosts(cluster, 6)) == {"10.0.0.2"}
    assert [e["state"] for e in cluster.snapshot()["endpoints"]] == ["terminating", "ready"]  # type: ignore[index]
    second = cluster.endpoints[1]
    cluster.set_health(second, healthy=False)
    assert hosts(cluster, 2) == [None, None] and not cluster.available()
    cluster.set_endpoints([DiscoveredEndpoint("10.0.0.1", 80), DiscoveredEndpoint("10.0.0.2", 80)])
    assert set(hosts(cluster, 6)) == {"10.0.0.1"} and second.state.value == "unhealthy"  # health outlives the set
    cluster.set_health(second, healthy=True)
    assert set(hosts(cluster, 6)) == {"10.0.0.1", "10.0.0.2"}
