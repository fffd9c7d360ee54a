"""Every metric family the sidecar exposes, on a registry the caller passes in.

Owns: the names, labels, help texts and histogram buckets of the `sidecar_*` families that
the user contract ("Metrics") promises, and small *bound* handles the request path uses so that it never
calls `.labels(...)` per request (the design "Hot-path rules").

Must not: create module-level metrics or touch prometheus_client's default REGISTRY (each worker
builds its own `Metrics` on its own registry and the admin endpoint gathers them); import the
wiring (app/inbound/outbound); decide *what* an outcome is (the classifier does; this module only
counts what it is told).

Binding happens when a route, cluster or listener is built (or rebuilt on reload); the handles are
then held by those runtime objects for their lifetime.

The families the request path touches on every request or connection (requests, request duration,
proxy overhead, upstream attempts, retries, rate limited, limits rejected, downstream connections, the
connection and byte counters) are lock-free cells
from `cells.py` rather than prometheus_client children: a worker is one process with one event loop,
and scrapes run on that loop, so prometheus_client's per-`inc()` lock, amount check and per-bucket
locked histogram walk are pure cost there. Their exposition (names, HELP/TYPE, labels, buckets,
order) is byte-for-byte what prometheus_client rendered for them, so dashboards and the supervisor's
merge (merge.py, which parses the text) see no difference. The control-path families (breaker,
endpoints, TLS, certificates, reloads) stay prometheus_client families: they change rarely, and may
be touched from wherever the control path runs.

Issue 18's families (overhead, connections opened, bytes) are registered after all the others, so the
exposition of every earlier family stays as it was. Bytes are counted by the codec's connections in plain
integers and reported to `ListenerTraffic` / `ClusterTraffic` when a response ends and when the connection
closes: one add per read or write on the connection, two cell adds per request. Exemplars: the request
path keeps only the trace id (bytes) of a sampled request, on the bucket its value fell in (`cells.py`).
"""

from __future__ import annotations

import contextlib
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

from proxy.clock import Clock
from proxy.stream import ByteCounter
from proxy.telemetry.cells import (
    CounterCell,
    CounterFamily,
    GaugeCell,
    GaugeFamily,
    HistogramCell,
    HistogramFamily,
    UnclaimedCounterFamily,
)
from proxy.telemetry.record import RequestRecord

# Request latency of a proxy spans sub-millisecond local replies to long upstream calls; 30 s is the
# top finite bucket because longer requests are streams whose exact duration nobody alerts on.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)

# The sidecar's own share of a request (everything but waiting on upstreams): a plain proxied request costs
# tens of microseconds, a request that builds a local reply or parks in a bulkhead queue more. 10 us to 10 ms
# (the contract), about three buckets a decade; slower than 10 ms lands in +Inf, which is itself the alert.
OVERHEAD_BUCKETS: Final[tuple[float, ...]] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
)

# Label values the contract fixes. Kept as tuples so tests and callers can enumerate them.
ATTEMPT_OUTCOMES: Final = ("success", "failure", "timeout", "reset", "connect_failure")
RETRY_RESULTS: Final = ("retried", "budget_exhausted", "limit_exceeded")
LIMIT_REASONS: Final = ("max_requests", "max_pending", "pending_timeout")
BREAKER_STATES: Final = ("closed", "open", "half_open")
# The contract's three, then this sidecar's two more: failed by active health checks, terminating (Kubernetes).
ENDPOINT_STATES: Final = ("healthy", "ejected", "breaker_open", "unhealthy", "terminating")
RELOAD_RESULTS: Final = ("success", "failure")
# The `direction` label of the byte counters: rx = read from that peer's socket, tx = written to it.
DIRECTIONS: Final = ("rx", "tx")
# The `kind` label of sidecar_discovery_errors_total (proxy/discovery/dns.py says which failure is which).
# DNS: nxdomain, timeout, empty, other; Kubernetes (proxy/discovery/kube_api.py): config, unreachable,
# unauthorized, forbidden, not_found, gone, api_error, malformed (and timeout).
DISCOVERY_ERROR_KINDS: Final = ("nxdomain", "timeout", "empty", "other", "config", "unreachable", "unauthorized",
                                "forbidden", "not_found", "gone", "api_error", "malformed")

# Gauge values of sidecar_circuit_breaker_state (the user contract: 0 closed, 1 open, 2 half-open).
BREAKER_STATE_VALUE: Final[dict[str, float]] = {"closed": 0.0, "open": 1.0, "half_open": 2.0}


class RouteMetrics:
    """Request count, duration and the sidecar's overhead for one (listener, route, cluster), bound once.

    `record_request` (or `record_sampled`) is called once per logical request (retries included, as the
    contract says). The requests counter has a `code` label, whose values are only known as responses
    arrive, so the cell for each code is bound on first use and cached here: later requests with that code
    are a dict lookup plus an add. The overhead histogram is labelled by (listener, route) only: the
    handles of one route's clusters share its one cell.
    """

    __slots__ = ("_cluster", "_codes", "_duration", "_listener", "_overhead", "_requests", "_route")

    def __init__(self, requests: CounterFamily, duration: HistogramFamily, overhead: HistogramFamily,
                 listener: str, route: str, cluster: str) -> None:
        self._requests = requests
        self._listener = listener
        self._route = route
        self._cluster = cluster
        self._codes: dict[int, CounterCell] = {}
        self._duration: HistogramCell = duration.labels(listener, route, cluster)
        self._overhead: HistogramCell = overhead.labels(listener, route)

    def record(self, code: int, seconds: float) -> None:
        """Count one finished logical request with status `code` that took `seconds` (no overhead known)."""
        cell = self._codes.get(code)
        if cell is None:
            cell = self._bind_code(code)
        cell.inc()
        self._duration.observe(seconds)

    def record_request(self, request: RequestRecord) -> None:
        """Count a finished request: its status, its duration and the sidecar's own share of it."""
        code = request.status
        cell = self._codes.get(code)
        if cell is None:
            cell = self._bind_code(code)
        cell.inc()
        duration = request.duration
        self._duration.observe(duration)
        # `request.sidecar_time`, inline: compiled, `max()` of two floats is a generic builtin call.
        overhead = duration - request.upstream_time
        self._overhead.observe(overhead if overhead > 0.0 else 0.0)

    def record_sampled(self, request: RequestRecord, wall: float) -> None:
        """`record_request` for a sampled trace: its id becomes the exemplar of both histograms' buckets
        (`wall`: when, in Unix seconds)."""
        code = request.status
        cell = self._codes.get(code)
        if cell is None:
            cell = self._bind_code(code)
        cell.inc()
        trace_id = request.trace_id
        self._duration.observe_exemplar(request.duration, trace_id, wall)
        self._overhead.observe_exemplar(request.sidecar_time, trace_id, wall)

    def _bind_code(self, code: int) -> CounterCell:
        # Off the common path: runs once per distinct status code seen on this route.
        cell = self._requests.labels(self._listener, self._route, self._cluster, str(code))
        self._codes[code] = cell
        return cell


class MetricsSink:
    """The metrics sink of the request record (a `RecordSink`): one finished request, counted in the child it
    names.

    A sampled request with a trace id leaves that id as an exemplar (read the wall clock for it only then);
    every other request stores nothing but counts."""

    __slots__ = ("_clock", "_grpc", "_grpc_children")

    def __init__(self, clock: Clock, grpc: Counter | None = None) -> None:
        self._clock = clock
        # sidecar_grpc_requests_total: gRPC calls by grpc-status, its children found once per label set
        # (bounded: listeners x routes x clusters of the configs run x 17 statuses).
        self._grpc = grpc
        self._grpc_children: dict[tuple[str, str, str, int], Counter] = {}

    def record(self, request: RequestRecord) -> None:
        counted_in = request.counted_in
        if counted_in is not None:
            if request.sampled and request.trace_id:
                counted_in.record_sampled(request, self._clock.wall())
            else:
                counted_in.record_request(request)
        if request.grpc_status >= 0 and self._grpc is not None:
            key = (request.listener, request.route, request.cluster, request.grpc_status)
            child = self._grpc_children.get(key)
            if child is None:
                child = self._grpc_children[key] = self._grpc.labels(key[0], key[1], key[2], str(key[3]))
            child.inc()


class ListenerTraffic(ByteCounter):
    """A listener's connection and byte counters (`sidecar_downstream_connections_total`,
    `sidecar_downstream_bytes_total`), bound once per listener. Connections count their own bytes in plain
    integers and add them here when a request on them ends and when they close, not per read."""

    __slots__ = ("connections", "rx", "tx")

    def __init__(self, connections: CounterFamily, transferred: CounterFamily, listener: str) -> None:
        self.connections: CounterCell = connections.labels(listener)
        self.rx: CounterCell = transferred.labels(listener, "rx")
        self.tx: CounterCell = transferred.labels(listener, "tx")

    def add(self, rx: int, tx: int) -> None:
        """Bytes a connection read (`rx`) and wrote (`tx`) since it last reported."""
        self.rx.value += rx
        self.tx.value += tx


class ClusterTraffic(ByteCounter):
    """A cluster's connection and byte counters (`sidecar_upstream_connections_total`,
    `sidecar_upstream_bytes_total`), bound once per cluster and shared by its endpoints' pools."""

    __slots__ = ("connections", "rx", "tx")

    def __init__(self, connections: CounterFamily, transferred: CounterFamily, cluster: str) -> None:
        self.connections: CounterCell = connections.labels(cluster)
        self.rx: CounterCell = transferred.labels(cluster, "rx")
        self.tx: CounterCell = transferred.labels(cluster, "tx")

    def opened(self) -> None:
        self.connections.value += 1

    def add(self, rx: int, tx: int) -> None:
        """Bytes a connection read from the upstream (`rx`) and wrote to it (`tx`) since it last reported."""
        self.rx.value += rx
        self.tx.value += tx


class AttemptMetrics:
    """`sidecar_upstream_attempts_total` cells of one cluster, one attribute per outcome."""

    __slots__ = ("connect_failure", "failure", "reset", "success", "timeout")

    def __init__(self, family: CounterFamily, cluster: str) -> None:
        self.success: CounterCell = family.labels(cluster, "success")
        self.failure: CounterCell = family.labels(cluster, "failure")
        self.timeout: CounterCell = family.labels(cluster, "timeout")
        self.reset: CounterCell = family.labels(cluster, "reset")
        self.connect_failure: CounterCell = family.labels(cluster, "connect_failure")


class RetryMetrics:
    """`sidecar_retries_total` cells of one (route, cluster), one attribute per result."""

    __slots__ = ("budget_exhausted", "limit_exceeded", "retried")

    def __init__(self, family: CounterFamily, route: str, cluster: str) -> None:
        self.retried: CounterCell = family.labels(route, cluster, "retried")
        self.budget_exhausted: CounterCell = family.labels(route, cluster, "budget_exhausted")
        self.limit_exceeded: CounterCell = family.labels(route, cluster, "limit_exceeded")


class LimitsRejectedMetrics:
    """`sidecar_limits_rejected_total` cells of one cluster, one attribute per reason."""

    __slots__ = ("max_pending", "max_requests", "pending_timeout")

    def __init__(self, family: CounterFamily, cluster: str) -> None:
        self.max_requests: CounterCell = family.labels(cluster, "max_requests")
        self.max_pending: CounterCell = family.labels(cluster, "max_pending")
        self.pending_timeout: CounterCell = family.labels(cluster, "pending_timeout")


class BreakerTransitionMetrics:
    """`sidecar_circuit_breaker_transitions_total` children of one cluster, one attribute per state."""

    __slots__ = ("closed", "half_open", "open")

    def __init__(self, family: Counter, cluster: str) -> None:
        self.closed: Counter = family.labels(cluster, "closed")
        self.open: Counter = family.labels(cluster, "open")
        self.half_open: Counter = family.labels(cluster, "half_open")


class EndpointCountMetrics:
    """`sidecar_endpoints` children of one cluster, one gauge per endpoint state."""

    __slots__ = ("breaker_open", "ejected", "healthy", "terminating", "unhealthy")

    def __init__(self, family: Gauge, cluster: str) -> None:
        self.healthy: Gauge = family.labels(cluster, "healthy")
        self.ejected: Gauge = family.labels(cluster, "ejected")
        self.breaker_open: Gauge = family.labels(cluster, "breaker_open")
        self.unhealthy: Gauge = family.labels(cluster, "unhealthy")
        self.terminating: Gauge = family.labels(cluster, "terminating")


class Metrics:
    """All `sidecar_*` families of one worker, registered on `registry`.

    The families are public attributes for control-path code and tests; request-path code takes
    the bound handles from the `for_*` / helper methods below, once, when it is built. The hot
    families are `cells.*Family` objects (`.labels(*values)` returns a cell), the others
    prometheus_client families. They are created, and so registered and exposed, in the same order
    as when all of them were prometheus_client families.
    """

    __slots__ = (
        "access_log_lines_dropped",
        "breaker_state",
        "breaker_transitions_family",
        "cert_expiry",
        "config_reloads_family",
        "discovery_errors_family",
        "downstream_bytes_family",
        "downstream_connections_family",
        "downstream_connections_total_family",
        "endpoints_family",
        "grpc_requests",
        "http2_protections_family",
        "limits_rejected_family",
        "proxy_overhead",
        "rate_limited_family",
        "registry",
        "request_duration",
        "requests",
        "retries_family",
        "tls_handshake_errors_family",
        "tls_reloads_family",
        "trace_spans_dropped",
        "upstream_attempts",
        "upstream_bytes_family",
        "upstream_connections_family",
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        # The `*_created` series double every counter and histogram in the text exposition and no
        # dashboard of ours reads them (Envoy and Linkerd have none). The switch is prometheus_client's,
        # process-wide, and must be thrown before the first family is created.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        # The exposition appends `_total` to counter names (for prometheus_client's families and for
        # ours alike); the names below are the contract's names without that suffix.
        self.requests = CounterFamily(
            "sidecar_requests",
            "Logical downstream requests (retries included), by final status code.",
            ("listener", "route", "cluster", "code"),
            registry=registry,
        )
        self.request_duration = HistogramFamily(
            "sidecar_request_duration_seconds",
            "Duration of logical downstream requests, retries and backoff included.",
            ("listener", "route", "cluster"),
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.upstream_attempts = CounterFamily(
            "sidecar_upstream_attempts",
            "Upstream tries (one per attempt), by classified outcome.",
            ("cluster", "outcome"),
            registry=registry,
        )
        self.retries_family = CounterFamily(
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
        self.rate_limited_family = CounterFamily(
            "sidecar_rate_limited",
            "Requests answered 429 by the local rate limiter.",
            ("listener", "route"),
            registry=registry,
        )
        self.limits_rejected_family = CounterFamily(
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
        self.downstream_connections_family = GaugeFamily(
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
        self.http2_protections_family = Counter(
            "sidecar_http2_protections",
            "HTTP/2 connections sent GOAWAY or streams reset by a protection, per listener, by reason.",
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
        self.discovery_errors_family = Counter(
            "sidecar_discovery_errors",
            "Failed endpoint discovery lookups (DNS) and Kubernetes API calls, by cluster and kind.",
            ("cluster", "kind"),
            registry=registry,
        )
        self.tls_reloads_family = Counter(
            "sidecar_tls_reloads",
            "Reloads of TLS certificate, key and CA files changed on disk, by result (failure = the old stayed).",
            ("result",),
            registry=registry,
        )
        self.grpc_requests = Counter(
            "sidecar_grpc_requests",
            "gRPC calls by their final grpc-status (the upstream's, or the sidecar's own reply's); one per call.",
            ("listener", "route", "cluster", "grpc_status"),
            registry=registry,
        )
        # Telemetry's own losses: bounded queues drop rather than grow or block when the far end is slow.
        self.trace_spans_dropped = Counter(
            "sidecar_trace_spans_dropped",
            "Finished spans dropped because the export queue was full or the export failed.",
            registry=registry,
        )
        self.access_log_lines_dropped = Counter(
            "sidecar_access_log_lines_dropped",
            "Access log lines dropped because the write queue was full or the write failed.",
            registry=registry,
        )
        # Issue 18's families come last, so the exposition of every family before them is unchanged.
        self.proxy_overhead = HistogramFamily(
            "sidecar_proxy_overhead_seconds",
            "Time requests spent in the sidecar itself, not waiting on upstreams.",
            ("listener", "route"),
            registry=registry,
            buckets=OVERHEAD_BUCKETS,
        )
        self.downstream_connections_total_family = UnclaimedCounterFamily(
            "sidecar_downstream_connections",
            "Downstream connections accepted (closed: this minus the open gauge).",
            ("listener",),
            registry=registry,
        )
        self.upstream_connections_family = CounterFamily(
            "sidecar_upstream_connections",
            "Upstream connections opened per cluster (not health check probes).",
            ("cluster",),
            registry=registry,
        )
        self.downstream_bytes_family = CounterFamily(
            "sidecar_downstream_bytes",
            "Bytes read (rx) and written (tx) on downstream connections, after TLS.",
            ("listener", "direction"),
            registry=registry,
        )
        self.upstream_bytes_family = CounterFamily(
            "sidecar_upstream_bytes",
            "Bytes read (rx) and written (tx) on upstream connections, after TLS.",
            ("cluster", "direction"),
            registry=registry,
        )

    # -- request path handles (bind once, keep) -------------------------------------------------

    def for_route(self, listener: str, route: str, cluster: str) -> RouteMetrics:
        """Request count/duration handle for requests routed by `route` to `cluster`."""
        return RouteMetrics(self.requests, self.request_duration, self.proxy_overhead, listener, route, cluster)

    def for_local(self, listener: str) -> RouteMetrics:
        """Handle for replies made before any route or cluster was chosen (no route matched,
        listener-wide limit, malformed request, ...). Such series carry `route=""` and
        `cluster=""`, which keeps label sets uniform per family as Prometheus expects."""
        return RouteMetrics(self.requests, self.request_duration, self.proxy_overhead, listener, "", "")

    def downstream_connections(self, listener: str) -> GaugeCell:
        """Gauge cell for open downstream connections of `listener` (inc on accept, dec on close)."""
        return self.downstream_connections_family.labels(listener)

    def listener_traffic(self, listener: str) -> ListenerTraffic:
        """Connection and byte counters of `listener`."""
        return ListenerTraffic(self.downstream_connections_total_family, self.downstream_bytes_family, listener)

    def cluster_traffic(self, cluster: str) -> ClusterTraffic:
        """Connection and byte counters of `cluster` (its pools share them)."""
        return ClusterTraffic(self.upstream_connections_family, self.upstream_bytes_family, cluster)

    def attempts(self, cluster: str) -> AttemptMetrics:
        return AttemptMetrics(self.upstream_attempts, cluster)

    def retries(self, route: str, cluster: str) -> RetryMetrics:
        return RetryMetrics(self.retries_family, route, cluster)

    def limits_rejected(self, cluster: str) -> LimitsRejectedMetrics:
        return LimitsRejectedMetrics(self.limits_rejected_family, cluster)

    def rate_limited(self, listener: str, route: str) -> CounterCell:
        return self.rate_limited_family.labels(listener, route)

    # -- control path handles -------------------------------------------------------------------

    def config_reloads(self, result: str) -> Counter:
        """Counter child for `result` ("success" or "failure")."""
        if result not in RELOAD_RESULTS:
            raise ValueError(f"config reload result must be one of {RELOAD_RESULTS}, not {result!r}")
        return self.config_reloads_family.labels(result)

    def tls_reloads(self, result: str) -> Counter:
        """Counter child of `sidecar_tls_reloads_total` for `result` ("success" or "failure")."""
        if result not in RELOAD_RESULTS:
            raise ValueError(f"tls reload result must be one of {RELOAD_RESULTS}, not {result!r}")
        return self.tls_reloads_family.labels(result)

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

    def discovery_errors(self, cluster: str, kind: str) -> Counter:
        """Counter child of `sidecar_discovery_errors_total` for one cluster's failures of `kind`."""
        return self.discovery_errors_family.labels(cluster, kind)

    def forget_discovery(self, cluster: str) -> None:
        """Drop a cluster's discovery error series once no resolver of that cluster name runs."""
        for kind in DISCOVERY_ERROR_KINDS:
            with contextlib.suppress(KeyError):  # never counted: nothing to drop
                self.discovery_errors_family.remove(cluster, kind)

    def endpoints(self, cluster: str) -> EndpointCountMetrics:
        return EndpointCountMetrics(self.endpoints_family, cluster)

    def tls_handshake_errors(self, listener: str, reason: str) -> Counter:
        return self.tls_handshake_errors_family.labels(listener, reason)

    def http2_protections(self, listener: str, reason: str) -> Counter:
        """One reason's counter (rapid_reset, continuation_flood, settings_flood, ping_flood, stream_limit,
        header_list_size)."""
        return self.http2_protections_family.labels(listener, reason)

    def cert_expiry_of(self, listener_or_cluster: str) -> Gauge:
        return self.cert_expiry.labels(listener_or_cluster)
