"""A cluster at run time: a named endpoint set with one policy, compiled from its config once.

Owns the endpoint snapshot, the balancer built over it (rebuilt whole when the set changes), each
endpoint's breaker (one per endpoint, with its metric children bound at construction), the cluster
bulkhead (`limits`), outlier detection (counting on the request path, ejections decided by
`evaluate_outliers` on a timer the app runs), and the per-cluster view shown in /clusters. The request
path's two calls are `pick` (the balancer's choice, admitted by its breaker) and `report` (an attempt's
verdict and latency to the endpoint's breaker, outlier detection and the balancer). Discovery replaces
the endpoint set whole (`set_endpoints`); endpoints that stay keep their pools and breakers, removed ones
turn DRAINING and their pools drain. The balancer is built over the endpoints that may take new requests
(not terminating, not failed by active health checks) and rebuilt whole when that set changes
(`rebalance`); when the node's zone is known (`local_zone`) and some endpoints are meant for it, the
balancer prefers them (`ZonePreferring`). The injected clock reaches every breaker, pool and the bulkhead. A
cluster with `tls:` is handed its TLS origination (`OriginTls`) by the wiring, and its pools open TLS
connections with it. Must not know routes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from proxy.clock import Clock
from proxy.config.model import ClusterConfig
from proxy.discovery.snapshot import DiscoveredEndpoint
from proxy.resilience.breaker import BreakerState, CircuitBreaker
from proxy.resilience.classify import Verdict
from proxy.resilience.limits import Bulkhead
from proxy.telemetry.metrics import Metrics
from proxy.upstream.balancer import Balancer, HashPolicy, ZonePreferring, make_balancer
from proxy.upstream.endpoint import ACTIVE, DRAINING, TERMINATING, UNHEALTHY, Endpoint
from proxy.upstream.outlier import OutlierDetector
from proxy.upstream.pool import Connector, MuxConnector, OriginTls, PoolSettings, no_connector

log = logging.getLogger("proxy.upstream.cluster")

class Cluster:
    """A named set of endpoints, the balancer that orders them and the policies that guard them."""

    __slots__ = (
        "_clock",
        "_endpoint_gauges",
        "_metrics",
        "_transitions",
        "attempts",
        "balancer",
        "bulkhead",
        "config",
        "discovery_view",
        "endpoints",
        "has_endpoints",
        "hash_policy",
        "health_view",
        "limits_rejected",
        "local_zone",
        "name",
        "outlier",
        "pool_settings",
        "source",
        "tls",
    )

    def __init__(self, config: ClusterConfig, metrics: Metrics, clock: Clock,
                 connector: Connector | None = None, tls: OriginTls | None = None,
                 multiplexed: MuxConnector | None = None) -> None:
        self.name = config.name
        self.config = config
        self._clock = clock
        self._metrics = metrics
        self.pool_settings = PoolSettings(
            connect_timeout=config.connect_timeout,
            max_idle=config.pool.max_idle_per_endpoint,
            idle_timeout=config.pool.idle_timeout,
            max_requests_per_connection=config.pool.max_requests_per_connection,
            max_head_bytes=config.max_response_headers,
            max_headers=config.max_response_header_count,
            # The codec its connections speak, chosen by the wiring (no connector: the cluster cannot connect).
            connector=connector if connector is not None else no_connector,
            # TLS origination (a cluster with `tls:`), made by the wiring from the config; None: plain TCP.
            tls=tls,
            traffic=metrics.cluster_traffic(config.name),
            # HTTP/2 upstreams (`protocol: http2`): a few connections, each carrying many streams.
            multiplexed=multiplexed,
            # `protocol: auto` over TLS: ALPN chooses per connection.
            negotiate=config.protocol == "auto",
        )
        self.tls = tls
        self.endpoints: tuple[Endpoint, ...] = ()
        self.balancer: Balancer
        # Ring hash with a key: what the cluster stage hashes a request on (None: no key is computed).
        self.hash_policy: HashPolicy | None
        self.balancer, self.hash_policy = make_balancer(config, clock)
        # This node's zone (`node.zone`, or the Node's label), set by the wiring: endpoints meant for it are
        # preferred. None: no zone preference.
        self.local_zone: str | None = None
        self.bulkhead = Bulkhead.from_config(config.limits, clock) if config.limits is not None else None
        self.outlier = (OutlierDetector.from_config(config.outlier_detection)
                        if config.outlier_detection is not None else None)
        self.attempts = metrics.attempts(self.name)
        self.limits_rejected = metrics.limits_rejected(self.name)
        self._transitions = metrics.breaker_transitions(self.name)
        self._endpoint_gauges = metrics.endpoints(self.name)
        # False until discovery delivered its first set (readiness waits for it).
        self.has_endpoints = False
        # Where the endpoints come from (shown per endpoint in /clusters), and the discovery's own view.
        discovery = config.discovery
        self.source = "static" if discovery is None else ("dns" if discovery.dns is not None else "kubernetes")
        self.discovery_view: Callable[[], dict[str, object]] | None = None
        # Active health checks' view (`proxy.upstream.health`), set by the wiring; None: no health checks.
        self.health_view: Callable[[], dict[str, object]] | None = None

    # -- the endpoint set --------------------------------------------------------------------------

    def set_endpoints(self, discovered: Iterable[DiscoveredEndpoint | tuple[str, int]]) -> None:
        """Replace the endpoint set (`DiscoveredEndpoint`s, or bare (host, port) pairs); endpoints that stay
        keep their pools, breakers and health, removed ones drain (DRAINING: attempts in flight on them
        finish, their idle connections close now)."""
        current = {(e.host, e.port): e for e in self.endpoints}
        fresh: list[Endpoint] = []
        for item in discovered:
            spec = item if isinstance(item, DiscoveredEndpoint) else DiscoveredEndpoint(item[0], item[1])
            endpoint = current.pop((spec.host, spec.port), None)
            if endpoint is None:
                endpoint = self._new_endpoint(spec.host, spec.port, spec.weight)
            endpoint.zone = spec.zone
            endpoint.pod = spec.pod
            endpoint.for_zones = spec.for_zones
            endpoint.terminating = spec.terminating
            fresh.append(endpoint)
        for removed in current.values():
            removed.state = DRAINING
            removed.pool.close()
            self._metrics.forget_endpoint(self.name, removed.address)
        self.endpoints = tuple(fresh)
        if self.outlier is not None:
            self.outlier.set_endpoints(e.address for e in fresh)
        self.has_endpoints = True
        self.rebalance()

    def rebalance(self) -> None:
        """Derive each endpoint's state from its conditions and rebuild the balancer over the ones that may
        take new requests, preferring the local zone's when there are any."""
        for endpoint in self.endpoints:
            endpoint.state = (TERMINATING if endpoint.terminating else UNHEALTHY if endpoint.unhealthy
                              else ACTIVE)
        routable = tuple(e for e in self.endpoints if e.state is ACTIVE)
        everywhere = self.balancer.rebuild(routable)
        local = self._local(routable)
        self.balancer = (ZonePreferring(everywhere.rebuild(local), everywhere, self._clock)
                         if local and len(local) < len(routable) else everywhere)
        self.update_gauges()

    def _local(self, routable: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """The endpoints meant for this node's zone: by topology hints when every endpoint has them (as
        kube-proxy uses them), else by the endpoint's own zone. Empty: no zone preference."""
        zone = self.local_zone
        if zone is None:
            return ()
        if self.endpoints and all(e.for_zones for e in self.endpoints):
            return tuple(e for e in routable if zone in e.for_zones)
        return tuple(e for e in routable if e.zone == zone)

    def set_health(self, endpoint: Endpoint, healthy: bool) -> None:
        """Active health checking's verdict changed: a failing endpoint leaves the balancer's snapshot until
        it passes again."""
        if endpoint.unhealthy == (not healthy):
            return
        endpoint.unhealthy = not healthy
        if endpoint in self.endpoints:
            self.rebalance()

    def _new_endpoint(self, host: str, port: int, weight: int = 1) -> Endpoint:
        endpoint = Endpoint(self.name, host, port, self.pool_settings, self._clock, weight)
        slow_start = self.config.slow_start
        if slow_start and self.has_endpoints:
            # Slow start: an endpoint added to a running set ramps up; the first set starts at full weight.
            endpoint.ramp_window = slow_start
            endpoint.warm_at = self._clock.now() + slow_start
        breaker_config = self.config.circuit_breaker
        if breaker_config is not None:
            gauge = self._metrics.breaker_state_of(self.name, endpoint.address)
            gauge.set(BreakerState.CLOSED.value)
            transitions = self._transitions

            # Bound once per endpoint (not per request): state changes update the metrics.
            def on_transition(_old: BreakerState, new: BreakerState) -> None:
                if new is BreakerState.OPEN:
                    # No request at hand: the breaker changes state inside `report`, which the request path
                    # calls without its context; the tripping request's own line names its ids.
                    log.warning("cluster %s: endpoint %s: breaker opened", self.name, endpoint.address)
                gauge.set(new.value)
                getattr(transitions, new.label).inc()
                self.update_gauges()

            endpoint.breaker = CircuitBreaker.from_config(breaker_config, self._clock, on_transition)
        if self.outlier is not None:
            endpoint.on_result = self._count_result
        return endpoint

    def _count_result(self, endpoint: Endpoint, verdict: Verdict) -> None:
        assert self.outlier is not None
        self.outlier.record(endpoint.address, verdict.is_failure)

    # -- the request path --------------------------------------------------------------------------

    def pick(self, tried: list[Endpoint] | None, hash_key: int | None = None) -> tuple[Endpoint, int] | None:
        """An endpoint to try and its breaker token, from the balancer: it skips draining, ejected and
        breaker-refused endpoints and, when another is available, those already `tried`; `hash_key` is the
        request's hash for hashing balancers. None when no endpoint may take the attempt."""
        return self.balancer.pick(tried, hash_key)

    def report(self, endpoint: Endpoint, token: int, verdict: Verdict, latency: float) -> None:
        """The verdict of an attempt `pick` admitted with `token`, `latency` seconds after it was sent: to the
        endpoint (breaker, outlier detection) and to the balancer."""
        endpoint.report(token, verdict)
        self.balancer.observe(endpoint, verdict, latency)

    def available(self) -> bool:
        """Could `pick` find an endpoint now? Asked before a retry drops the answer it would replace."""
        return any(endpoint.available() for endpoint in self.balancer.endpoints)

    # -- outlier timer -----------------------------------------------------------------------------

    def evaluate_outliers(self) -> None:
        """Run by the app every `outlier_detection.interval`, off the request path."""
        if self.outlier is None:
            return
        changes = self.outlier.evaluate(self._clock.now())
        if not changes:
            return
        by_address = {e.address: e for e in self.endpoints}
        for change in changes:
            endpoint = by_address.get(change.endpoint)
            if endpoint is not None:
                endpoint.ejected = change.ejected
        self.update_gauges()

    def update_gauges(self) -> None:
        """sidecar_endpoints{cluster,state}: healthy, ejected, breaker_open, unhealthy (active health checks)
        and terminating; an endpoint counts once, in the first of terminating, unhealthy, ejected,
        breaker_open that applies, else healthy."""
        ejected = breaker_open = unhealthy = terminating = 0
        for endpoint in self.endpoints:
            if endpoint.state is TERMINATING:
                terminating += 1
            elif endpoint.state is UNHEALTHY:
                unhealthy += 1
            elif endpoint.ejected:
                ejected += 1
            elif endpoint.breaker is not None and endpoint.breaker.state is BreakerState.OPEN:
                breaker_open += 1
        gauges = self._endpoint_gauges
        gauges.ejected.set(ejected)
        gauges.breaker_open.set(breaker_open)
        gauges.unhealthy.set(unhealthy)
        gauges.terminating.set(terminating)
        gauges.healthy.set(len(self.endpoints) - ejected - breaker_open - unhealthy - terminating)

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.pool.close()

    def snapshot(self) -> dict[str, object]:
        """What /clusters shows for this cluster."""
        view: dict[str, object] = {
            "name": self.name,
            "load_balancer": self.config.load_balancer,
            "local_zone": self.local_zone,
            "connect_timeout_seconds": self.pool_settings.connect_timeout,
            "endpoints": [{**e.snapshot(), "source": self.source} for e in self.endpoints],
        }
        if self.discovery_view is not None:
            view["discovery"] = self.discovery_view()
        if self.health_view is not None:
            view["health_check"] = self.health_view()
        if self.bulkhead is not None:
            view["limits"] = self.bulkhead.snapshot()
        if self.outlier is not None:
            view["outlier_detection"] = self.outlier.snapshot()
        if self.tls is not None:
            view["tls"] = self.tls.snapshot()
        return view
