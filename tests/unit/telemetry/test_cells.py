"""Lock-free cells and their families: same numbers and same exposition as prometheus_client's families."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from proxy.telemetry.cells import CounterFamily, GaugeFamily, HistogramCell, HistogramFamily
from proxy.telemetry.metrics import DURATION_BUCKETS

BOUNDS = DURATION_BUCKETS
LABEL_VALUES = st.sampled_from(["a", "b", "", 'q"\\\n'])
# Durations as the proxy sees them, plus every bound exactly and its nearest neighbours (the `le` edges).
EDGES = [x for b in BOUNDS for x in (math.nextafter(b, 0.0), b, math.nextafter(b, math.inf))]
SECONDS = st.one_of(st.sampled_from([0.0, *EDGES]), st.floats(min_value=0.0, max_value=1e4), st.floats(-1.0, 0.0))


@pytest.fixture(autouse=True)
def _no_created() -> None:
    # As Metrics does: the reference families must not grow `_created` series either.
    disable_created_metrics()  # type: ignore[no-untyped-call]


def test_value_on_a_bound_is_in_that_bounds_bucket() -> None:
    # Prometheus' `le` is inclusive: v == bound counts in the bound's bucket; just above it, in the next.
    for i, bound in enumerate(BOUNDS):
        cell = HistogramCell(BOUNDS)
        cell.observe(bound)
        cell.observe(math.nextafter(bound, 0.0))
        cell.observe(math.nextafter(bound, math.inf))
        expected = [0] * (len(BOUNDS) + 1)
        expected[i] = 2
        expected[i + 1] = 1
        assert cell.counts == expected, bound


def test_extremes_land_in_first_and_inf_buckets() -> None:
    cell = HistogramCell(BOUNDS)
    for seconds in (0.0, -1.0, BOUNDS[-1] + 1, math.inf):
        cell.observe(seconds)
    assert cell.counts[0] == 2
    assert cell.counts[-1] == 2
    assert sum(cell.counts) == 4


def test_histogram_samples_are_cumulative_with_count_and_sum() -> None:
    registry = CollectorRegistry()
    family = HistogramFamily("h_seconds", "help", ("x",), registry, buckets=(0.1, 1.0))
    cell = family.labels("a")
    for seconds in (0.05, 0.1, 0.5, 2.0):
        cell.observe(seconds)
    assert registry.get_sample_value("h_seconds_bucket", {"x": "a", "le": "0.1"}) == 2
    assert registry.get_sample_value("h_seconds_bucket", {"x": "a", "le": "1.0"}) == 3
    assert registry.get_sample_value("h_seconds_bucket", {"x": "a", "le": "+Inf"}) == 4
    assert registry.get_sample_value("h_seconds_count", {"x": "a"}) == 4
    assert registry.get_sample_value("h_seconds_sum", {"x": "a"}) == pytest.approx(2.65)


def test_labels_binds_once_and_checks_the_count() -> None:
    family = CounterFamily("c", "help", ("x", "y"), CollectorRegistry())
    assert family.labels("a", "b") is family.labels("a", "b")
    assert family.labels("a", "b") is not family.labels("b", "a")
    with pytest.raises(ValueError):
        family.labels("a")


def test_a_name_is_registered_once_per_registry() -> None:
    registry = CollectorRegistry()
    CounterFamily("dup", "help", ("x",), registry)
    with pytest.raises(ValueError):
        CounterFamily("dup", "help", ("x",), registry)
    with pytest.raises(ValueError):
        Counter("dup", "help", ("x",), registry=registry)  # prometheus_client sees our names too
    HistogramFamily("h", "help", ("x",), registry, buckets=(1.0,))
    with pytest.raises(ValueError):
        Gauge("h_count", "help", registry=registry)


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0), (-1.0, 1.0), (1.0, math.nan)])
def test_bad_buckets_are_refused(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        HistogramFamily("h", "help", ("x",), CollectorRegistry(), buckets=buckets)


def test_an_explicit_inf_bucket_is_the_implied_one() -> None:
    registry = CollectorRegistry()
    HistogramFamily("h", "help", ("x",), registry, buckets=(1.0, math.inf)).labels("a").observe(5.0)
    assert generate_latest(registry).count(b'le="+Inf"') == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LABEL_VALUES, LABEL_VALUES, SECONDS), max_size=60))
def test_histogram_exposition_equals_prometheus_client(observations: list[tuple[str, str, float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    family = HistogramFamily("d_seconds", "Durations.", ("x", "y"), ours, buckets=BOUNDS)
    reference = Histogram("d_seconds", "Durations.", ("x", "y"), buckets=BOUNDS, registry=theirs)
    for x, y, seconds in observations:
        family.labels(x, y).observe(seconds)
        reference.labels(x, y).observe(seconds)
    assert generate_latest(ours) == generate_latest(theirs)


OPS = st.lists(st.tuples(LABEL_VALUES, st.sampled_from(["inc", "dec", "set"]),
                         st.one_of(st.integers(0, 10), st.floats(0.0, 1e6))), max_size=60)


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_counter_and_gauge_exposition_equal_prometheus_client(ops: list[tuple[str, str, float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter, gauge = CounterFamily("c", "Counted.", ("x",), ours), GaugeFamily("g", "Gauged.", ("x",), ours)
    ref_counter = Counter("c", "Counted.", ("x",), registry=theirs)
    ref_gauge = Gauge("g", "Gauged.", ("x",), registry=theirs)
    for x, op, amount in ops:
        if op == "inc":
            counter.labels(x).inc(amount)
            ref_counter.labels(x).inc(amount)
            gauge.labels(x).inc(amount)
            ref_gauge.labels(x).inc(amount)
        elif op == "dec":
            gauge.labels(x).dec(amount)
            ref_gauge.labels(x).dec(amount)
        else:
            gauge.labels(x).set(amount)
            ref_gauge.labels(x).set(amount)
    assert generate_latest(ours) == generate_latest(theirs)


def test_exemplars_are_kept_per_bucket_and_only_once_asked_for() -> None:
    cell = HistogramCell((0.001, 0.01))
    cell.observe(0.005)
    assert cell.exemplars is None  # unsampled traffic allocates nothing
    cell.observe_exemplar(0.005, b"aa" * 16, 100.0)
    cell.observe_exemplar(0.004, b"bb" * 16, 101.0)  # same bucket: the later one stays
    cell.observe_exemplar(5.0, b"cc" * 16, 102.0)  # +Inf
    assert cell.counts == [0, 3, 1]
    assert cell.sum == pytest.approx(5.014)
    assert cell.exemplars is not None
    kept = [(e.trace_id, e.value, e.timestamp) if e is not None else None for e in cell.exemplars]
    assert kept == [None, (b"bb" * 16, 0.004, 101.0), (b"cc" * 16, 5.0, 102.0)]
