"""Metric families, bound handles and the exposition (checked by Prometheus' own promtool)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.telemetry.cells import CounterCell, GaugeCell, HistogramCell
from proxy.telemetry.exposition import render_metrics
from proxy.telemetry.metrics import ATTEMPT_OUTCOMES, LIMIT_REASONS, RETRY_RESULTS, Metrics

CONTRACT_FAMILIES = {
    # family name as exposed (counters carry _total in samples; the family name omits it)
    "sidecar_requests": ("counter", {"listener", "route", "cluster", "code"}),
    "sidecar_request_duration_seconds": ("histogram", {"listener", "route", "cluster"}),
    "sidecar_upstream_attempts": ("counter", {"cluster", "outcome"}),
    "sidecar_retries": ("counter", {"route", "cluster", "result"}),
    "sidecar_circuit_breaker_state": ("gauge", {"cluster", "endpoint"}),
    "sidecar_circuit_breaker_transitions": ("counter", {"cluster", "to"}),
    "sidecar_rate_limited": ("counter", {"listener", "route"}),
    "sidecar_limits_rejected": ("counter", {"cluster", "reason"}),
    "sidecar_endpoints": ("gauge", {"cluster", "state"}),
    "sidecar_downstream_connections": ("gauge", {"listener"}),
    "sidecar_tls_handshake_errors": ("counter", {"listener", "reason"}),
    "sidecar_cert_expiry_timestamp_seconds": ("gauge", {"listener_or_cluster"}),
    "sidecar_config_reloads": ("counter", {"result"}),
    "sidecar_tls_reloads": ("counter", {"result"}),
}


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
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name, (kind, labels) in CONTRACT_FAMILIES.items():
        assert name in families, name
        assert families[name].type == kind, name
        sample_labels = {k for s in families[name].samples for k in s.labels} - {"le"}
        assert sample_labels == labels, name
    text = body.decode()
    for counter in (n for n, (k, _) in CONTRACT_FAMILIES.items() if k == "counter"):
        assert f"{counter}_total{{" in text


def test_families_exist_before_any_request(registry: CollectorRegistry, metrics: Metrics) -> None:
    # A fresh worker already shows HELP/TYPE for every family (dashboards see the names at once).
    text = render_metrics(registry, None)[0].decode()
    for name, (kind, _) in CONTRACT_FAMILIES.items():
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
