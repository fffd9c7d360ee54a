"""Active health checks (proxy.upstream.health): thresholds, the first check deciding, rounds every interval
(jittered down by up to 10 %) on a manual clock, terminating endpoints skipped, removed ones forgotten, a
raising probe failing only its check, the status-line verdict, and the /clusters view."""

from __future__ import annotations

import asyncio
import itertools

from prometheus_client import CollectorRegistry

from proxy.clock import ManualClock
from proxy.config.model import ClusterConfig
from proxy.discovery.snapshot import DiscoveredEndpoint
from proxy.telemetry.metrics import Metrics
from proxy.upstream.cluster import Cluster
from proxy.upstream.endpoint import Endpoint
from proxy.upstream.health import HealthChecker

ADDRESSES = [("10.0.0.1", 80), ("10.0.0.2", 80)]


class FakeProbe:
    """Answers per endpoint address: None (pass) unless `failing` names it; counts every check."""

    def __init__(self) -> None:
        self.failing: dict[str, str] = {}
        self.checked: list[str] = []

    async def __call__(self, endpoint: Endpoint) -> str | None:
        self.checked.append(endpoint.address)
        return self.failing.get(endpoint.address)


def make(clock: ManualClock, **settings: object) -> tuple[Cluster, HealthChecker, FakeProbe, CollectorRegistry]:
    registry = CollectorRegistry()
    config = ClusterConfig.model_validate({"name": "c", "endpoints": ["10.0.0.1:80"],
                                           "health_check": {"path": "/healthz", **settings}})
    cluster = Cluster(config, Metrics(registry), clock)
    cluster.set_endpoints(ADDRESSES)
    assert config.health_check is not None
    probe = FakeProbe()
    return cluster, HealthChecker(cluster, config.health_check, clock, probe), probe, registry


def unhealthy_gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("sidecar_endpoints", {"cluster": "c", "state": "unhealthy"})


def picked(cluster: Cluster, times: int = 4) -> set[str]:
    out = set()
    for _ in range(times):
        choice = cluster.pick(None)
        assert choice is not None
        out.add(choice[0].address)
    return out


async def test_an_endpoint_turns_unhealthy_after_the_threshold_and_healthy_after_its_own() -> None:
    cluster, checker, probe, registry = make(ManualClock(), healthy_threshold=2, unhealthy_threshold=3)
    first, second = cluster.endpoints
    await checker.check_round()  # both pass their first check
    probe.failing["10.0.0.2:80"] = "status 503"
    for _ in range(2):
        await checker.check_round()
        assert second.status == "ready" and picked(cluster) == {"10.0.0.1:80", "10.0.0.2:80"}
    await checker.check_round()  # the third consecutive failure
    assert second.unhealthy and second.status == "unhealthy"
    assert picked(cluster) == {"10.0.0.1:80"}
    assert unhealthy_gauge(registry) == 1
    del probe.failing["10.0.0.2:80"]
    await checker.check_round()  # one pass is not enough
    assert second.status == "unhealthy"
    await checker.check_round()
    assert second.status == "ready" and picked(cluster) == {"10.0.0.1:80", "10.0.0.2:80"}
    assert unhealthy_gauge(registry) == 0 and first.status == "ready"


async def test_a_pass_breaks_a_run_of_failures() -> None:
    cluster, checker, probe, _ = make(ManualClock(), unhealthy_threshold=2)
    second = cluster.endpoints[1]
    await checker.check_round()
    for failing in (True, False, True, False):
        probe.failing = {"10.0.0.2:80": "status 500"} if failing else {}
        await checker.check_round()
        assert second.status == "ready"


async def test_a_new_endpoint_is_routable_until_its_first_check_and_a_first_failure_decides() -> None:
    cluster, checker, probe, registry = make(ManualClock(), unhealthy_threshold=3)
    first, second = cluster.endpoints
    assert second.status == "ready"  # never checked: routable
    probe.failing["10.0.0.2:80"] = "connect refused"
    await checker.check_round()
    assert second.status == "unhealthy" and first.status == "ready" and unhealthy_gauge(registry) == 1
    view = checker.snapshot()["endpoints"]
    assert isinstance(view, dict)
    assert view["10.0.0.2:80"] == {"last": "fail", "consecutive_passes": 0, "consecutive_failures": 1,
                                   "last_failure": "connect refused"}
    assert view["10.0.0.1:80"]["last"] == "pass"


async def test_terminating_endpoints_are_not_checked_and_removed_ones_are_forgotten() -> None:
    cluster, checker, probe, _ = make(ManualClock())
    cluster.set_endpoints([DiscoveredEndpoint("10.0.0.1", 80),
                           DiscoveredEndpoint("10.0.0.2", 80, terminating=True)])
    await checker.check_round()
    assert probe.checked == ["10.0.0.1:80"]
    cluster.set_endpoints([("10.0.0.3", 80)])
    await checker.check_round()
    endpoints = checker.snapshot()["endpoints"]
    assert isinstance(endpoints, dict) and list(endpoints) == ["10.0.0.3:80"]


async def test_an_endpoint_removed_during_a_round_is_not_recorded() -> None:
    cluster, checker, _, _ = make(ManualClock())
    release = asyncio.Event()

    async def slow(endpoint: Endpoint) -> str | None:
        await release.wait()
        return "status 503"

    checker.probe = slow
    round_ = asyncio.create_task(checker.check_round())
    await asyncio.sleep(0)
    removed = cluster.endpoints[1]
    cluster.set_endpoints([("10.0.0.1", 80)])
    release.set()
    await round_
    assert not removed.unhealthy and cluster.endpoints[0].unhealthy
    endpoints = checker.snapshot()["endpoints"]
    assert isinstance(endpoints, dict) and list(endpoints) == ["10.0.0.1:80"]


async def test_rounds_run_every_interval_jittered_down_by_at_most_a_tenth() -> None:
    clock = ManualClock()
    _, checker, _, _ = make(clock, interval="10s", timeout="1s")
    starts: list[float] = []

    async def timed(endpoint: Endpoint) -> str | None:
        starts.append(clock.now())
        return None

    checker.probe = timed
    task = asyncio.create_task(checker.run())
    try:
        await clock.elapse(100.5)
    finally:
        task.cancel()
    rounds = sorted(set(starts))
    assert rounds[0] == 1000.0  # the first round at once
    gaps = [b - a for a, b in itertools.pairwise(rounds)]
    assert len(gaps) >= 10 and all(9.0 <= gap <= 10.0 for gap in gaps)
    assert len(set(gaps)) > 1  # jittered, not a fixed period
    assert len(starts) == 2 * len(rounds)  # both endpoints each round


async def test_a_raising_probe_fails_its_check_and_the_loop_goes_on() -> None:
    clock = ManualClock()
    cluster, checker, _, _ = make(clock, interval="1s", timeout="100ms")
    calls = 0

    async def broken(endpoint: Endpoint) -> str | None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    checker.probe = broken
    task = asyncio.create_task(checker.run())
    try:
        await clock.elapse(5)
        assert not task.done()
    finally:
        task.cancel()
    assert calls >= 8 and all(e.status == "unhealthy" for e in cluster.endpoints)
    endpoints = checker.snapshot()["endpoints"]
    assert isinstance(endpoints, dict) and endpoints["10.0.0.1:80"]["last_failure"] == "check raised RuntimeError"


def test_the_cluster_view_shows_the_settings_when_the_wiring_hooks_it() -> None:
    async def build() -> dict[str, object]:
        cluster, checker, _, _ = make(ManualClock())
        assert "health_check" not in cluster.snapshot()
        cluster.health_view = checker.snapshot
        return cluster.snapshot()

    view = asyncio.run(build())["health_check"]
    assert isinstance(view, dict)
    assert {k: view[k] for k in ("path", "interval_seconds", "timeout_seconds", "healthy_threshold",
                                 "unhealthy_threshold")} == {
        "path": "/healthz", "interval_seconds": 5.0, "timeout_seconds": 1.0, "healthy_threshold": 2,
        "unhealthy_threshold": 3}
