"""Metric families, bound handles and the exposition (checked by Prometheus' own promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from proxy.clock import ManualClock
from proxy.telemetry.cells import CounterCell, GaugeCell, HistogramCell
from proxy.telemetry.exposition import render_metrics
from proxy.telemetry.metrics import ATTEMPT_OUTCOMES, LIMIT_REASONS, RETRY_RESULTS, Metrics, MetricsSink, RouteMetrics
from proxy.telemetry.record import RequestRecord

CONTRACT_FAMILIES = [
    # (family name as exposed (counters carry _total in samples; the family name omits it), type, labels)
    ("sidecar_requests", "counter", {"listener", "route", "cluster", "code"}),
    ("sidecar_request_duration_seconds", "histogram", {"listener", "route", "cluster"}),
    ("sidecar_upstream_attempts", "counter", {"cluster", "outcome"}),
    ("sidecar_retries", "counter", {"route", "cluster", "result"}),
    ("sidecar_circuit_breaker_state", "gauge", {"cluster", "endpoint"}),
    ("sidecar_circuit_breaker_transitions", "counter", {"cluster", "to"}),
    ("sidecar_rate_limited", "counter", {"listener", "route"}),
    ("sidecar_limits_rejected", "counter", {"cluster", "reason"}),
    ("sidecar_endpoints", "gauge", {"cluster", "state"}),
    ("sidecar_downstream_connections", "gauge", {"listener"}),
    ("sidecar_tls_handshake_errors", "counter", {"listener", "reason"}),
    ("sidecar_cert_expiry_timestamp_seconds", "gauge", {"listener_or_cluster"}),
    ("sidecar_config_reloads", "counter", {"result"}),
    ("sidecar_tls_reloads", "counter", {"result"}),
    # Issue 18: the sidecar's own cost, connections and bytes (a counter may share its name with a gauge:
    # sidecar_downstream_connections_total counts accepted connections, the gauge those open).
    ("sidecar_proxy_overhead_seconds", "histogram", {"listener", "route"}),
    ("sidecar_downstream_connections", "counter", {"listener"}),
    ("sidecar_upstream_connections", "counter", {"cluster"}),
    ("sidecar_downstream_bytes", "counter", {"listener", "direction"}),
    ("sidecar_upstream_bytes", "counter", {"cluster", "direction"}),
]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def populate(m: Metrics) -> None:
    """Give every family at least one series, so the exposition has samples to lint."""
    m.for_route("outbound", "campaign", "campaign-v1").record(200, 0.004)
    m.for_local("outbound").record(404, 0.0001)
    m.attempts("campaign-v1").success.inc()
    m.retries("campaign", "campaign-v1").retried.inc()
    m.breaker_state_of("campaign-v1", "10.0.0.7:8080").set(1)
    m.breaker_transitions("campaign-v1").open.inc()
    m.rate_limited("outbound", "campaign").inc()
    m.limits_rejected("campaign-v1").max_pending.inc()
    m.endpoints("campaign-v1").healthy.set(3)
    m.downstream_connections("outbound").inc()
    m.tls_handshake_errors("inbound", "unknown_ca").inc()
    m.cert_expiry_of("inbound").set(1_900_000_000)
    m.config_reloads("success").inc()
    m.tls_reloads("success").inc()
    traffic = m.listener_traffic("outbound")
    traffic.connections.inc()
    traffic.add(120, 480)
    upstream = m.cluster_traffic("campaign-v1")
    upstream.opened()
    upstream.add(300, 90)


def test_record_counts_code_and_observes_duration(registry: CollectorRegistry, metrics: Metrics) -> None:
    rm = metrics.for_route("outbound", "campaign", "campaign-v1")
    rm.record(200, 0.003)
    rm.record(200, 0.2)
    rm.record(503, 0.02)
    labels = {"listener": "outbound", "route": "campaign", "cluster": "campaign-v1"}
    assert registry.get_sample_value("sidecar_requests_total", {**labels, "code": "200"}) == 2
    assert registry.get_sample_value("sidecar_requests_total", {**labels, "code": "503"}) == 1
    assert registry.get_sample_value("sidecar_request_duration_seconds_count", labels) == 3
    assert registry.get_sample_value("sidecar_request_duration_seconds_sum", labels) == pytest.approx(0.223)
    assert value(registry, "sidecar_request_duration_seconds_bucket", **labels, le="0.005") == 1
    assert value(registry, "sidecar_request_duration_seconds_bucket", **labels, le="30.0") == 3


def test_code_children_are_bound_once(metrics: Metrics) -> None:
    rm = metrics.for_route("outbound", "campaign", "campaign-v1")
    rm.record(200, 0.001)
    first = rm._codes[200]
    rm.record(200, 0.001)
    rm.record(500, 0.001)
    assert rm._codes[200] is first
    assert set(rm._codes) == {200, 500}
    # The family hands back the same cell for the same labels, so two handles on one route share a
    # series rather than splitting it.
    other = metrics.for_route("outbound", "campaign", "campaign-v1")
    other.record(200, 0.001)
    assert other._codes[200] is first


def test_local_replies_have_empty_route_and_cluster(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.for_local("outbound").record(404, 0.0002)
    labels = {"listener": "outbound", "route": "", "cluster": ""}
    assert registry.get_sample_value("sidecar_requests_total", {**labels, "code": "404"}) == 1
    assert registry.get_sample_value("sidecar_request_duration_seconds_count", labels) == 1


def test_bound_helpers_hit_their_series(registry: CollectorRegistry, metrics: Metrics) -> None:
    attempts = metrics.attempts("c1")
    for outcome in ATTEMPT_OUTCOMES:
        getattr(attempts, outcome).inc()
    attempts.timeout.inc()
    assert value(registry, "sidecar_upstream_attempts_total", cluster="c1", outcome="timeout") == 2
    assert value(registry, "sidecar_upstream_attempts_total", cluster="c1", outcome="reset") == 1

    retries = metrics.retries("r1", "c1")
    for result in RETRY_RESULTS:
        getattr(retries, result).inc()
    assert registry.get_sample_value(
        "sidecar_retries_total", {"route": "r1", "cluster": "c1", "result": "budget_exhausted"}
    ) == 1

    limits = metrics.limits_rejected("c1")
    for reason in LIMIT_REASONS:
        getattr(limits, reason).inc()
    assert registry.get_sample_value(
        "sidecar_limits_rejected_total", {"cluster": "c1", "reason": "pending_timeout"}
    ) == 1

    metrics.rate_limited("outbound", "r1").inc()
    assert value(registry, "sidecar_rate_limited_total", listener="outbound", route="r1") == 1

    conns = metrics.downstream_connections("outbound")
    conns.inc()
    conns.inc()
    conns.dec()
    assert registry.get_sample_value("sidecar_downstream_connections", {"listener": "outbound"}) == 1

    metrics.config_reloads("failure").inc()
    assert registry.get_sample_value("sidecar_config_reloads_total", {"result": "failure"}) == 1
    with pytest.raises(ValueError):
        metrics.config_reloads("maybe")


def test_request_path_handles_are_lock_free_cells(metrics: Metrics) -> None:
    # The per-request and per-connection handles must not be prometheus_client children (a lock per
    # inc(), a Python loop over the buckets per observe()); see cells.py.
    route = metrics.for_route("outbound", "r1", "c1")
    route.record(200, 0.001)
    assert isinstance(route._codes[200], CounterCell)
    assert isinstance(route._duration, HistogramCell)
    attempts, retries, limits = metrics.attempts("c1"), metrics.retries("r1", "c1"), metrics.limits_rejected("c1")
    handles = [getattr(attempts, o) for o in ATTEMPT_OUTCOMES] + [getattr(retries, r) for r in RETRY_RESULTS]
    handles += [getattr(limits, r) for r in LIMIT_REASONS] + [metrics.rate_limited("outbound", "r1")]
    assert all(isinstance(h, CounterCell) for h in handles)
    assert isinstance(metrics.downstream_connections("outbound"), GaugeCell)
    # The family attributes still bind series by label values, as prometheus_client's did.
    assert metrics.requests.labels("outbound", "r1", "c1", "200") is route._codes[200]
    assert metrics.request_duration.labels("outbound", "r1", "c1") is route._duration


def test_second_metrics_on_one_registry_is_refused(registry: CollectorRegistry, metrics: Metrics) -> None:
    with pytest.raises(ValueError):
        Metrics(registry)


def test_forget_endpoint_drops_breaker_series(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.breaker_state_of("c1", "10.0.0.1:80").set(2)
    labels = {"cluster": "c1", "endpoint": "10.0.0.1:80"}
    assert registry.get_sample_value("sidecar_circuit_breaker_state", labels) == 2
    metrics.forget_endpoint("c1", "10.0.0.1:80")
    metrics.forget_endpoint("c1", "10.0.0.1:80")  # twice, or never bound: harmless
    assert registry.get_sample_value("sidecar_circuit_breaker_state", labels) is None


def test_two_registries_are_independent() -> None:
    # No module-level state: a second worker (or test) gets its own families without clashes.
    a, b = CollectorRegistry(), CollectorRegistry()
    Metrics(a).for_local("l").record(200, 0.1)
    Metrics(b)
    labels = {"listener": "l", "route": "", "cluster": "", "code": "200"}
    assert value(a, "sidecar_requests_total", **labels) == 1
    assert value(b, "sidecar_requests_total", **labels) is None


def test_every_contract_family_is_exposed(registry: CollectorRegistry, metrics: Metrics) -> None:
    populate(metrics)
    body, content_type = render_metrics(registry, None)
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {(f.name, f.type): f for f in text_string_to_metric_families(body.decode())}
    for name, kind, labels in CONTRACT_FAMILIES:
        assert (name, kind) in families, name
        sample_labels = {k for s in families[name, kind].samples for k in s.labels} - {"le"}
        assert sample_labels == labels, name
    text = body.decode()
    for counter in (n for n, k, _ in CONTRACT_FAMILIES if k == "counter"):
        assert f"{counter}_total{{" in text


def test_families_exist_before_any_request(registry: CollectorRegistry, metrics: Metrics) -> None:
    # A fresh worker already shows HELP/TYPE for every family (dashboards see the names at once).
    text = render_metrics(registry, None)[0].decode()
    for name, kind, _ in CONTRACT_FAMILIES:
        exposed = f"{name}_total" if kind == "counter" else name
        assert f"# TYPE {exposed} {kind}\n" in text


def test_openmetrics_is_negotiated(registry: CollectorRegistry, metrics: Metrics) -> None:
    populate(metrics)
    accept = "application/openmetrics-text; version=1.0.0, text/plain;q=0.5"
    body, content_type = render_metrics(registry, accept)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_exposition_passes_promtool(registry: CollectorRegistry, metrics: Metrics) -> None:
    promtool = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus` provides /usr/bin/promtool)")
    populate(metrics)
    body, _ = render_metrics(registry, None)
    proc = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def sampled_record(rm: RouteMetrics, duration: float, upstream: float, trace_id: bytes, sampled: bool) -> RequestRecord:
    record = RequestRecord("outbound", 0.0, rm)
    record.status = 200
    record.duration = duration
    record.upstream_time = upstream
    record.trace_id = trace_id
    record.sampled = sampled
    return record


TRACE = b"0af7651916cd43dd8448eb211c80319c"


def test_sink_observes_overhead_and_leaves_exemplars_of_sampled_requests_only(
        registry: CollectorRegistry, metrics: Metrics) -> None:
    rm = metrics.for_route("outbound", "campaign", "campaign-v1")
    sink = MetricsSink(ManualClock(start=1_800_000_000.5))
    sink.record(sampled_record(rm, 0.004, 0.00395, TRACE, sampled=True))
    sink.record(sampled_record(rm, 0.2, 0.195, b"ff" * 16, sampled=False))  # a trace id, but not sampled
    route = {"listener": "outbound", "route": "campaign"}
    assert value(registry, "sidecar_proxy_overhead_seconds_count", **route) == 2
    assert value(registry, "sidecar_proxy_overhead_seconds_bucket", **route, le="5e-05") == 1
    assert value(registry, "sidecar_proxy_overhead_seconds_bucket", **route, le="0.01") == 2
    assert value(registry, "sidecar_proxy_overhead_seconds_sum", **route) == pytest.approx(0.00505)
    assert value(registry, "sidecar_request_duration_seconds_count", **route, cluster="campaign-v1") == 2
    text = render_metrics(registry, None)[0].decode()
    assert "trace_id" not in text and "# {" not in text  # no exemplars in the Prometheus text format
    body, _ = render_metrics(registry, "application/openmetrics-text; version=1.0.0")
    lines = [line for line in body.decode().splitlines() if "trace_id" in line]
    assert lines == [
        'sidecar_request_duration_seconds_bucket{cluster="campaign-v1",le="0.005",listener="outbound",'
        f'route="campaign"}} 1.0 # {{trace_id="{TRACE.decode()}"}} 0.004 1800000000.5',
        'sidecar_proxy_overhead_seconds_bucket{le="5e-05",listener="outbound",route="campaign"} 1.0 '
        f'# {{trace_id="{TRACE.decode()}"}} 4.99999999999997e-05 1800000000.5',
    ]
    # prometheus_client's strict OpenMetrics parser reads the exemplar back.
    exemplars = [s.exemplar for f in openmetrics_families(body.decode()) for s in f.samples if s.exemplar]
    assert [e.labels for e in exemplars] == [{"trace_id": TRACE.decode()}] * 2


def test_traffic_handles_count_connections_and_bytes(registry: CollectorRegistry, metrics: Metrics) -> None:
    down = metrics.listener_traffic("outbound")
    down.connections.inc()
    down.add(10, 20)
    down.add(1, 2)
    up = metrics.cluster_traffic("c")
    up.opened()
    up.opened()
    up.add(7, 3)
    assert value(registry, "sidecar_downstream_connections_total", listener="outbound") == 1
    assert value(registry, "sidecar_downstream_bytes_total", listener="outbound", direction="rx") == 11
    assert value(registry, "sidecar_downstream_bytes_total", listener="outbound", direction="tx") == 22
    assert value(registry, "sidecar_upstream_connections_total", cluster="c") == 2
    assert value(registry, "sidecar_upstream_bytes_total", cluster="c", direction="rx") == 7
    assert value(registry, "sidecar_upstream_bytes_total", cluster="c", direction="tx") == 3
    assert metrics.listener_traffic("outbound").connections is down.connections  # bound once, shared


def test_openmetrics_names_the_accepted_connections_counter_apart_from_the_gauge(
        registry: CollectorRegistry, metrics: Metrics) -> None:
    populate(metrics)
    metrics.listener_traffic("outbound").connections.inc()
    body, _ = render_metrics(registry, "application/openmetrics-text; version=1.0.0")
    families = {(f.name, f.type) for f in openmetrics_families(body.decode())}  # strict: refuses a name twice
    assert ("sidecar_downstream_connections", "gauge") in families
    assert ("sidecar_downstream_connections_total", "unknown") in families
    assert ("sidecar_downstream_bytes", "counter") in families


def openmetrics_as_text_format(body: bytes) -> bytes:
    """OpenMetrics rewritten in the text format's grammar, everything else untouched: promtool 2.42 (Debian's)
    parses only that grammar, and fails OpenMetrics on exemplars, `unknown`, counters' HELP/TYPE names without
    `_total` and `# EOF`. What it still checks: every name, label, value and the histograms' structure."""
    text = re.sub(rb" # \{[^}]*\} \S+ \S+$", b"", body, flags=re.MULTILINE)
    text = re.sub(rb"^(# TYPE \w+) unknown$", rb"\1 untyped", text, flags=re.MULTILINE)
    counters = set(re.findall(rb"^# TYPE (\w+) counter$", text, flags=re.MULTILINE))
    text = re.sub(rb"^# (HELP|TYPE) (\w+) ", lambda m: b"# %s %s%s " % (
        m[1], m[2], b"_total" if m[2] in counters else b""), text, flags=re.MULTILINE)
    return text.removesuffix(b"# EOF\n")


def test_openmetrics_passes_promtool(registry: CollectorRegistry, metrics: Metrics) -> None:
    # The OpenMetrics syntax itself (exemplars, `# EOF`) is checked by prometheus_client's strict parser (above)
    # and by a real Prometheus scraping it (tests/integration/test_metrics_prometheus.py).
    promtool = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus` provides /usr/bin/promtool)")
    populate(metrics)
    rm = metrics.for_route("outbound", "campaign", "campaign-v1")
    MetricsSink(ManualClock()).record(sampled_record(rm, 0.004, 0.001, TRACE, sampled=True))
    body, _ = render_metrics(registry, "application/openmetrics-text; version=1.0.0")
    assert b"# {trace_id=" in body
    proc = subprocess.run([promtool, "check", "metrics"], input=openmetrics_as_text_format(body),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
