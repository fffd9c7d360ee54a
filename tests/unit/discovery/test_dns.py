"""DNS discovery on virtual time: refresh every `refresh` (shorter when a TTL is known), jittered down only;
a failed lookup keeps the last good set, is counted by kind and backs off (never a hot loop); subscribers get
only changed sets, a late subscriber the current one at once."""

from __future__ import annotations

import asyncio
import socket

from proxy.clock import ManualClock
from proxy.config.model import DnsDiscoveryConfig
from proxy.discovery.dns import (
    BACKOFF_BASE,
    JITTER,
    MIN_DELAY,
    Addresses,
    DnsDiscovery,
    EmptyAnswer,
    error_kind,
    getaddrinfo_lookup,
)

A: Addresses = (("10.0.0.1", 80), ("10.0.0.2", 80))
B: Addresses = (("10.0.0.2", 80), ("10.0.0.3", 80))


class FakeResolver:
    """Answers from a script: an Addresses (TTL unknown), an (Addresses, ttl) pair, or an exception."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, name: str, port: int) -> tuple[Addresses, float | None]:
        self.calls.append((name, port))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[1], float | int):
            return answer[0], float(answer[1])
        assert isinstance(answer, tuple)
        return answer, None


def make(lookup: FakeResolver, refresh: float = 30.0) -> tuple[DnsDiscovery, list[Addresses], list[str]]:
    sets: list[Addresses] = []
    errors: list[str] = []
    config = DnsDiscoveryConfig(name="svc.local", port=80, refresh=f"{refresh}s")
    resolver = DnsDiscovery("c", config, ManualClock(), errors.append, lookup)
    resolver.subscribe(sets.append)
    return resolver, sets, errors


def nxdomain() -> socket.gaierror:
    return socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def test_a_refresh_delivers_the_set_and_waits_refresh_jittered_down_only() -> None:
    lookup = FakeResolver(A)
    resolver, sets, errors = make(lookup)
    delay = await resolver.refresh()
    assert sets == [A] and errors == [] and resolver.current == A
    assert lookup.calls == [("svc.local", 80)]
    assert 30.0 * (1 - JITTER) <= delay <= 30.0


async def test_an_unchanged_set_is_not_delivered_again_and_a_changed_one_is_delivered_whole() -> None:
    resolver, sets, _ = make(FakeResolver(A, A, B))
    for _ in range(3):
        await resolver.refresh()
    assert sets == [A, B]


async def test_a_known_ttl_shorter_than_refresh_sets_the_next_lookup() -> None:
    resolver, _, _ = make(FakeResolver((A, 5.0), (A, 120.0), (A, 0.0)))
    assert 5.0 * (1 - JITTER) <= await resolver.refresh() <= 5.0
    assert 30.0 * (1 - JITTER) <= await resolver.refresh() <= 30.0  # refresh stays the upper bound
    assert await resolver.refresh() == MIN_DELAY  # a zero TTL is no licence for a hot loop


async def test_a_failure_keeps_the_last_good_set_counts_its_kind_and_backs_off() -> None:
    resolver, sets, errors = make(FakeResolver(A, nxdomain(), TimeoutError(), OSError("boom"), (), A), refresh=3.0)
    await resolver.refresh()
    delays = [await resolver.refresh() for _ in range(4)]
    assert sets == [A] and resolver.current == A  # kept through every failure
    assert errors == ["nxdomain", "timeout", "other", "empty"]
    assert resolver.errors == 4 and resolver.last_error == "empty"
    # 1s, 2s, then capped at refresh (3s), each jittered down by at most JITTER.
    for delay, expected in zip(delays, [BACKOFF_BASE, 2 * BACKOFF_BASE, 3.0, 3.0], strict=True):
        assert expected * (1 - JITTER) <= delay <= expected
    assert 3.0 * (1 - JITTER) <= await resolver.refresh() <= 3.0  # success resets the backoff
    assert sets == [A]


async def test_without_a_first_set_failures_deliver_nothing() -> None:
    resolver, sets, errors = make(FakeResolver(nxdomain()))
    await resolver.refresh()
    assert sets == [] and resolver.current is None and errors == ["nxdomain"]


async def test_the_loop_runs_on_the_clock_and_never_spins() -> None:
    lookup = FakeResolver(nxdomain())
    config = DnsDiscoveryConfig(name="svc.local", port=80, refresh="10s")
    clock = ManualClock()
    resolver = DnsDiscovery("c", config, clock, None, lookup)
    task = resolver.start()
    try:
        await clock.elapse(0)
        assert len(lookup.calls) == 1
        await clock.elapse(60)
        # backoff 1, 2, 4, 8, then 10 each: ~8-9 lookups in a minute, never hundreds.
        assert 6 <= len(lookup.calls) <= 10
        lookup.answers = [A]
        await clock.elapse(11)
        assert resolver.current == A
        calls = len(lookup.calls)
        await clock.elapse(30)
        assert 3 <= len(lookup.calls) - calls <= 4
    finally:
        resolver.stop()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_a_late_subscriber_gets_the_current_set_and_the_last_unsubscribe_says_so() -> None:
    resolver, sets, _ = make(FakeResolver(A))
    await resolver.refresh()
    late: list[Addresses] = []
    resolver.subscribe(late.append)
    assert late == [A]
    assert not resolver.unsubscribe(sets.append)
    assert resolver.unsubscribe(late.append)


def test_error_kinds() -> None:
    assert error_kind(nxdomain()) == "nxdomain"
    assert error_kind(socket.gaierror(socket.EAI_AGAIN, "try again")) == "timeout"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(EmptyAnswer("x")) == "empty"
    assert error_kind(ValueError()) == "other"


async def test_the_stdlib_lookup_resolves_localhost_without_a_ttl() -> None:
    addresses, ttl = await getaddrinfo_lookup("localhost", 8080)
    assert ttl is None and ("127.0.0.1", 8080) in addresses
    assert list(addresses) == sorted(set(addresses))


async def test_clusters_name_their_endpoints_source_and_show_the_resolver() -> None:
    from prometheus_client import CollectorRegistry

    from proxy.config.model import ClusterConfig
    from proxy.telemetry.metrics import Metrics
    from proxy.upstream.cluster import Cluster

    metrics = Metrics(CollectorRegistry())
    static = Cluster(ClusterConfig.model_validate({"name": "s", "endpoints": ["10.0.0.1:80"]}), metrics, ManualClock())
    static.set_endpoints([("10.0.0.1", 80)])
    assert [e["source"] for e in static.snapshot()["endpoints"]] == ["static"]  # type: ignore[union-attr]
    assert "discovery" not in static.snapshot()
    config = ClusterConfig.model_validate({"name": "d", "discovery": {"dns": {"name": "svc", "port": 80}}})
    dns = Cluster(config, metrics, ManualClock())
    resolver = DnsDiscovery("d", config.discovery.dns, ManualClock(), None, FakeResolver(A))  # type: ignore[union-attr]
    resolver.subscribe(dns.set_endpoints)
    dns.discovery_view = resolver.snapshot
    assert dns.snapshot()["discovery"] == {"source": "dns", "name": "svc", "port": 80, "refresh_seconds": 30.0,
                                           "resolved": False, "errors": 0, "last_error": None}
    dns.set_endpoints(A)
    assert [e["source"] for e in dns.snapshot()["endpoints"]] == ["dns", "dns"]  # type: ignore[union-attr]


def test_discovery_error_series_leave_metrics_when_forgotten() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from proxy.telemetry.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.discovery_errors("gone", "nxdomain").inc()
    metrics.discovery_errors("kept", "timeout").inc()
    metrics.forget_discovery("gone")
    text = generate_latest(registry).decode()
    assert 'cluster="gone"' not in text and 'sidecar_discovery_errors_total{cluster="kept",kind="timeout"} 1.0' in text


async def test_a_failing_subscriber_does_not_stop_the_others_or_the_loop() -> None:
    resolver, sets, _ = make(FakeResolver(A, B))

    def broken(_addresses: Addresses) -> None:
        raise RuntimeError("bug")

    resolver.subscribers.insert(0, broken)
    assert 30.0 * (1 - JITTER) <= await resolver.refresh() <= 30.0
    await resolver.refresh()
    assert sets == [A, B] and resolver.current == B
