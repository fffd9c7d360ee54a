"""Every metric family the sidecar exposes, on a registry the caller passes in.

Owns: the names, labels, help texts and histogram buckets of the `sidecar_*` families that
CONTRACT.md ("Metrics") promises, and small *bound* handles the request path uses so that it never
calls `.labels(...)` per request (DESIGN.md "Hot-path rules").

Must not: create module-level metrics or touch prometheus_client's default REGISTRY (each worker
builds its own `Metrics` on its own registry and the admin endpoint gathers them); import the
wiring (app/inbound/outbound); decide *what* an outcome is (the classifier does; this module only
counts what it is told).

Binding happens when a route, cluster or listener is built (or rebuilt on reload); the handles are
then held by those runtime objects for their lifetime.
"""

from __future__ import annotations

import contextlib
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# Request latency of a proxy spans sub-millisecond local replies to long upstream calls; 30 s is the
# top finite bucket because longer requests are streams whose exact duration nobody alerts on.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

# Label values the contract fixes. Kept as tuples so tests and callers can enumerate them.
ATTEMPT_OUTCOMES: Final = ("success", "failure", "timeout", "reset", "connect_failure")
RETRY_RESULTS: Final = ("retried", "budget_exhausted", "limit_exceeded")
LIMIT_REASONS: Final = ("max_requests", "max_pending", "pending_timeout")
BREAKER_STATES: Final = ("closed", "open", "half_open")
ENDPOINT_STATES: Final = ("healthy", "ejected", "breaker_open")
RELOAD_RESULTS: Final = ("success", "failure")

# Gauge values of sidecar_circuit_breaker_state (CONTRACT.md: 0 closed, 1 open, 2 half-open).
BREAKER_STATE_VALUE: Final[dict[str, float]] = {"closed": 0.0, "open": 1.0, "half_open": 2.0}


class RouteMetrics:
    """Request count and duration for one (listener, route, cluster), bound once.

    `record` is called once per logical request (retries included, as the contract says). The
    requests counter has a `code` label, whose values are only known as responses arrive, so the
    child for each code is bound on first use and cached here: later requests with that code are a
    dict lookup plus `inc()`.
    """

    __slots__ = ("_cluster", "_codes", "_duration", "_listener", "_requests", "_route")

    def __init__(
        self, requests: Counter, duration: Histogram, listener: str, route: str, cluster: str
    ) -> None:
        self._requests = requests
        self._listener = listener
        self._route = route
        self._cluster = cluster
        self._codes: dict[int, Counter] = {}
        self._duration = duration.labels(listener, route, cluster)

    def record(self, code: int, seconds: float) -> None:
        """Count one finished logical request with status `code` that took `seconds`."""
        child = self._codes.get(code)
        if child is None:
            child = self._bind_code(code)
        child.inc()
        self._duration.observe(seconds)

    def _bind_code(self, code: int) -> Counter:
        # Off the common path: runs once per distinct status code seen on this route.
        child = self._requests.labels(self._listener, self._route, self._cluster, str(code))
        self._codes[code] = child
        return child


class AttemptMetrics:
    """`sidecar_upstream_attempts_total` children of one cluster, one attribute per outcome."""

    __slots__ = ("connect_failure", "failure", "reset", "success", "timeout")

    def __init__(self, family: Counter, cluster: str) -> None:
        self.success: Counter = family.labels(cluster, "success")
        self.failure: Counter = family.labels(cluster, "failure")
        self.timeout: Counter = family.labels(cluster, "timeout")
        self.reset: Counter = family.labels(cluster, "reset")
        self.connect_failure: Counter = family.labels(cluster, "connect_failure")


class RetryMetrics:
    """`sidecar_retries_total` children of one (route, cluster), one attribute per result."""

    __slots__ = ("budget_exhausted", "limit_exceeded", "retried")

    def __init__(self, family: Counter, route: str, cluster: str) -> None:
        self.retried: Counter = family.labels(route, cluster, "retried")
        self.budget_exhausted: Counter = family.labels(route, cluster, "budget_exhausted")
        self.limit_exceeded: Counter = family.labels(route, cluster, "limit_exceeded")


class LimitsRejectedMetrics:
    """`sidecar_limits_rejected_total` children of one cluster, one attribute per reason."""

    __slots__ = ("max_pending", "max_requests", "pending_timeout")

    def __init__(self, family: Counter, cluster: str) -> None:
        self.max_requests: Counter = family.labels(cluster, "max_requests")
        self.max_pending: Counter = family.labels(cluster, "max_pending")
        self.pending_timeout: Counter = family.labels(cluster, "pending_timeout")


class BreakerTransitionMetrics:
    """`sidecar_circuit_breaker_transitions_total` children of one cluster, one attribute per state."""

    __slots__ = ("closed", "half_open", "open")

    def __init__(self, family: Counter, cluster: str) -> None:
        self.closed: Counter = family.labels(cluster, "closed")
        self.open: Counter = family.labels(cluster, "open")
        self.half_open: Counter = family.labels(cluster, "half_open")


class EndpointCountMetrics:
    """`sidecar_endpoints` children of one cluster, one gauge per endpoint state."""

    __slots__ = ("breaker_open", "ejected", "healthy")

    def __init__(self, family: Gauge, cluster: str) -> None:
        self.healthy: Gauge = family.labels(cluster, "healthy")
        self.ejected: Gauge = family.labels(cluster, "ejected")
        self.breaker_open: Gauge = family.labels(cluster, "breaker_open")


class Metrics:
    """All `sidecar_*` families of one worker, registered on `registry`.

    The families are public attributes for control-path code and tests; request-path code takes
    the bound handles from the `for_*` / helper methods below, once, when it is built.
    """

    __slots__ = (
        "breaker_state",
        "breaker_transitions_family",
        "cert_expiry",
        "config_reloads_family",
        "downstream_connections_family",
        "endpoints_family",
        "limits_rejected_family",
        "rate_limited_family",
        "registry",
        "request_duration",
        "requests",
        "retries_family",
        "tls_handshake_errors_family",
        "upstream_attempts",
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        # The `*_created` series double every counter and histogram in the text exposition and no
        # dashboard of ours reads them (Envoy and Linkerd have none). The switch is prometheus_client's,
        # process-wide, and must be thrown before the first family is created.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        # prometheus_client appends `_total` to counter names itself; the names below are the
        # contract's names without that suffix.
        self.requests = Counter(
            "sidecar_requests",
            "Logical downstream requests (retries included), by final status code.",
            ("listener", "route", "cluster", "code"),
            registry=registry,
        )
        self.request_duration = Histogram(
            "sidecar_request_duration_seconds",
            "Duration of logical downstream requests, retries and backoff included.",
            ("listener", "route", "cluster"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_attempts = Counter(
            "sidecar_upstream_attempts",
            "Upstream tries (one per attempt), by classified outcome.",
            ("cluster", "outcome"),
            registry=registry,
        )
        self.retries_family = Counter(
            "sidecar_retries",
            "Retry decisions: retried, or refused by the budget or its concurrency limit.",
            ("route", "cluster", "result"),
            registry=registry,
        )
        self.breaker_state = Gauge(
            "sidecar_circuit_breaker_state",
            "Per-endpoint breaker state: 0 closed, 1 open, 2 half-open.",
            ("cluster", "endpoint"),
            registry=registry,
        )
        self.breaker_transitions_family = Counter(
            "sidecar_circuit_breaker_transitions",
            "Breaker state changes, by the state entered.",
            ("cluster", "to"),
            registry=registry,
        )
        self.rate_limited_family = Counter(
            "sidecar_rate_limited",
            "Requests answered 429 by the local rate limiter.",
            ("listener", "route"),
            registry=registry,
        )
        self.limits_rejected_family = Counter(
            "sidecar_limits_rejected",
            "Requests refused by cluster limits (bulkhead); one per connection_limit_reached reply.",
            ("cluster", "reason"),
            registry=registry,
        )
        self.endpoints_family = Gauge(
            "sidecar_endpoints",
            "Endpoints known per cluster, by state.",
            ("cluster", "state"),
            registry=registry,
        )
        self.downstream_connections_family = Gauge(
            "sidecar_downstream_connections",
            "Open downstream connections per listener.",
            ("listener",),
            registry=registry,
        )
        self.tls_handshake_errors_family = Counter(
            "sidecar_tls_handshake_errors",
            "Failed TLS handshakes per listener, by reason.",
            ("listener", "reason"),
            registry=registry,
        )
        self.cert_expiry = Gauge(
            "sidecar_cert_expiry_timestamp_seconds",
            "Expiry (Unix time) of the certificate in use by a listener or cluster.",
            ("listener_or_cluster",),
            registry=registry,
        )
        self.config_reloads_family = Counter(
            "sidecar_config_reloads",
            "Config reloads, by result (failure = the running config stayed).",
            ("result",),
            registry=registry,
        )

    # -- request path handles (bind once, keep) -------------------------------------------------

    def for_route(self, listener: str, route: str, cluster: str) -> RouteMetrics:
        """Request count/duration handle for requests routed by `route` to `cluster`."""
        return RouteMetrics(self.requests, self.request_duration, listener, route, cluster)

    def for_local(self, listener: str) -> RouteMetrics:
        """Handle for replies made before any route or cluster was chosen (no route matched,
        listener-wide limit, malformed request, ...). Such series carry `route=""` and
        `cluster=""`, which keeps label sets uniform per family as Prometheus expects."""
        return RouteMetrics(self.requests, self.request_duration, listener, "", "")

    def downstream_connections(self, listener: str) -> Gauge:
        """Gauge child for open downstream connections of `listener` (inc on accept, dec on close)."""
        return self.downstream_connections_family.labels(listener)

    def attempts(self, cluster: str) -> AttemptMetrics:
        return AttemptMetrics(self.upstream_attempts, cluster)

    def retries(self, route: str, cluster: str) -> RetryMetrics:
        return RetryMetrics(self.retries_family, route, cluster)

    def limits_rejected(self, cluster: str) -> LimitsRejectedMetrics:
        return LimitsRejectedMetrics(self.limits_rejected_family, cluster)

    def rate_limited(self, listener: str, route: str) -> Counter:
        return self.rate_limited_family.labels(listener, route)

    # -- control path handles -------------------------------------------------------------------

    def config_reloads(self, result: str) -> Counter:
        """Counter child for `result` ("success" or "failure")."""
        if result not in RELOAD_RESULTS:
            raise ValueError(f"config reload result must be one of {RELOAD_RESULTS}, not {result!r}")
        return self.config_reloads_family.labels(result)

    def breaker_transitions(self, cluster: str) -> BreakerTransitionMetrics:
        return BreakerTransitionMetrics(self.breaker_transitions_family, cluster)

    def breaker_state_of(self, cluster: str, endpoint: str) -> Gauge:
        """Gauge child for one endpoint's breaker; set it to a `BREAKER_STATE_VALUE`."""
        return self.breaker_state.labels(cluster, endpoint)

    def forget_endpoint(self, cluster: str, endpoint: str) -> None:
        """Drop a removed endpoint's breaker series so departed endpoints do not linger forever."""
        # KeyError: never bound (the breaker never reported), so there is nothing to drop.
        with contextlib.suppress(KeyError):
            self.breaker_state.remove(cluster, endpoint)

    def endpoints(self, cluster: str) -> EndpointCountMetrics:
        return EndpointCountMetrics(self.endpoints_family, cluster)

    def tls_handshake_errors(self, listener: str, reason: str) -> Counter:
        return self.tls_handshake_errors_family.labels(listener, reason)

    def cert_expiry_of(self, listener_or_cluster: str) -> Gauge:
        return self.cert_expiry.labels(listener_or_cluster)
