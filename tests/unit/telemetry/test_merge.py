"""Merging per-worker expositions: sums where a sum means something, one series per worker where not."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.clock import ManualClock
from proxy.telemetry.exposition import render_metrics
from proxy.telemetry.merge import MergedMetrics, Source, merge
from proxy.telemetry.metrics import Metrics, MetricsSink
from proxy.telemetry.record import RequestRecord


def worker_text(requests: int, seconds: float, connections: int, breaker: float | None = None,
                reloads: int = 0, code: int = 200, route: str = "r") -> str:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    handle = metrics.for_route("outbound", route, "c")
    for _ in range(requests):
        handle.record(code, seconds)
    metrics.downstream_connections("outbound").set(connections)
    if breaker is not None:
        metrics.breaker_state_of("c", "10.0.0.1:80").set(breaker)
    metrics.endpoints("c").healthy.set(2)
    for _ in range(reloads):
        metrics.config_reloads("success").inc()
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def render(sources: list[Source]) -> str:
    body, _ = render_metrics(MergedMetrics(merge(sources)), None)
    return body.decode()


REQ = (("cluster", "c"), ("code", "200"), ("listener", "outbound"), ("route", "r"))
DUR = (("cluster", "c"), ("listener", "outbound"), ("route", "r"))


def test_counters_and_histograms_are_summed_per_label_set() -> None:
    text = render([Source("0", worker_text(3, 0.002, 1)), Source("1", worker_text(5, 0.02, 2))])
    got = samples(text)
    assert got[("sidecar_requests_total", REQ)] == 8
    assert got[("sidecar_request_duration_seconds_count", DUR)] == 8
    assert got[("sidecar_request_duration_seconds_sum", DUR)] == pytest.approx(3 * 0.002 + 5 * 0.02)
    assert got[("sidecar_request_duration_seconds_bucket", (*DUR[:1], ("le", "0.0025"), *DUR[1:]))] == 3
    assert got[("sidecar_request_duration_seconds_bucket", (*DUR[:1], ("le", "0.025"), *DUR[1:]))] == 8
    assert got[("sidecar_request_duration_seconds_bucket", (*DUR[:1], ("le", "+Inf"), *DUR[1:]))] == 8


def test_a_series_only_one_worker_has_is_kept() -> None:
    got = samples(render([Source("0", worker_text(2, 0.001, 0)),
                          Source("1", worker_text(4, 0.001, 0, code=503, route="other"))]))
    assert got[("sidecar_requests_total", REQ)] == 2
    other = (("cluster", "c"), ("code", "503"), ("listener", "outbound"), ("route", "other"))
    assert got[("sidecar_requests_total", other)] == 4


def test_connections_add_up_and_other_gauges_stay_per_worker() -> None:
    got = samples(render([Source("0", worker_text(0, 0, 3, breaker=0)), Source("1", worker_text(0, 0, 4, breaker=1))]))
    assert got[("sidecar_downstream_connections", (("listener", "outbound"),))] == 7
    endpoint = (("cluster", "c"), ("endpoint", "10.0.0.1:80"))
    assert got[("sidecar_circuit_breaker_state", (*endpoint, ("worker", "0")))] == 0
    assert got[("sidecar_circuit_breaker_state", (*endpoint, ("worker", "1")))] == 1
    # Both workers know the same 2 endpoints: 2 per worker, never "4 healthy endpoints".
    healthy = (("cluster", "c"), ("state", "healthy"))
    assert got[("sidecar_endpoints", (*healthy, ("worker", "0")))] == 2
    assert got[("sidecar_endpoints", (*healthy, ("worker", "1")))] == 2
    assert ("sidecar_endpoints", healthy) not in got


def test_a_source_that_is_not_a_worker_adds_no_worker_label() -> None:
    got = samples(render([Source(None, worker_text(1, 0.001, 0, breaker=2))]))
    assert got[("sidecar_circuit_breaker_state", (("cluster", "c"), ("endpoint", "10.0.0.1:80")))] == 2


def test_reloads_are_counted_once_per_reload_not_once_per_process() -> None:
    supervisor = CollectorRegistry()
    Metrics(supervisor).config_reloads("failure")
    got = samples(render([Source(None, generate_latest(supervisor).decode()),
                          Source("0", worker_text(0, 0, 0, reloads=2)), Source("1", worker_text(0, 0, 0, reloads=2))]))
    assert got[("sidecar_config_reloads_total", (("result", "success"),))] == 2
    assert got[("sidecar_config_reloads_total", (("result", "failure"),))] == 0


def test_no_sources_and_empty_families() -> None:
    assert merge([]) == []
    assert render([Source("0", "")]) == ""


def test_a_type_clash_keeps_the_first_type() -> None:
    first = "# TYPE x gauge\nx 1.0\n"
    second = "# TYPE x histogram\nx_bucket{le=\"+Inf\"} 5.0\nx_count 5.0\nx_sum 2.0\n"
    families = merge([Source(None, first), Source(None, second)])
    assert [(f.name, f.type, [s.value for s in f.samples]) for f in families] == [("x", "gauge", [1.0])]


def test_a_counter_and_a_gauge_of_one_name_are_two_families() -> None:
    # sidecar_downstream_connections_total (accepted) beside sidecar_downstream_connections (open).
    text = "# TYPE x_total counter\nx_total 1.0\n# TYPE x gauge\nx 5.0\n"
    families = merge([Source(None, text), Source(None, text)])
    assert [(f.name, f.type, [s.value for s in f.samples]) for f in families] == [
        ("x", "counter", [2.0]), ("x", "gauge", [5.0])]
    body, _ = render_metrics(MergedMetrics(families), None)
    assert "x_total 2.0\n" in body.decode()


def test_openmetrics_rendering_of_the_merge() -> None:
    merged = MergedMetrics(merge([Source("0", worker_text(1, 0.01, 1)), Source("1", worker_text(1, 0.01, 1))]))
    body, content_type = render_metrics(merged, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert 'sidecar_requests_total{cluster="c",code="200",listener="outbound",route="r"} 2.0' in text


def test_merged_output_passes_promtool() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    text = render([Source(None, worker_text(0, 0, 0)), Source("0", worker_text(3, 0.2, 1, breaker=1)),
                   Source("1", worker_text(2, 0.01, 0, breaker=0, code=404, route="x"))])
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def openmetrics_worker(trace_id: bytes, wall: float, seconds: float = 0.004) -> str:
    """A worker's OpenMetrics exposition after one sampled request (what the supervisor asks workers for)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    record = RequestRecord("outbound", 0.0, metrics.for_route("outbound", "r", "c"))
    record.status, record.duration, record.upstream_time = 200, seconds, seconds / 2
    record.sampled, record.trace_id = True, trace_id
    MetricsSink(ManualClock(start=wall)).record(record)
    metrics.listener_traffic("outbound").connections.inc()
    metrics.downstream_connections("outbound").inc()
    body, _ = render_metrics(registry, "application/openmetrics-text; version=1.0.0")
    return body.decode()


def test_exemplars_survive_the_merge_newest_first() -> None:
    older, newer = openmetrics_worker(b"a" * 32, 1000.0), openmetrics_worker(b"b" * 32, 2000.0)
    families = merge([Source(None, generate_latest(CollectorRegistry()).decode()), Source("0", older),
                      Source("1", newer)])
    bucket = {"cluster": "c", "le": "0.005", "listener": "outbound", "route": "r"}
    merged = [s for f in families for s in f.samples
              if s.name == "sidecar_request_duration_seconds_bucket" and s.labels == bucket]
    assert merged[0].value == 2
    assert merged[0].exemplar is not None and merged[0].exemplar.labels == {"trace_id": "b" * 32}
    body, _ = render_metrics(MergedMetrics(families), "application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert '# {trace_id="' + "b" * 32 + '"} 0.004 2000.0' in text
    assert "a" * 32 not in text
    assert "trace_id" not in render([Source("0", older)])  # the text format has no exemplars
    # The counter OpenMetrics had to send as `unknown` is a counter again, beside the gauge of its name.
    kinds = {(f.name, f.type) for f in families}
    assert ("sidecar_downstream_connections", "counter") in kinds
    assert ("sidecar_downstream_connections", "gauge") in kinds
    assert samples(render([Source("0", older), Source("1", newer)]))[
        ("sidecar_downstream_connections_total", (("listener", "outbound"),))] == 2
