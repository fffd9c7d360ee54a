"""Lock-free metric cells for the request path, and the families that expose them to prometheus_client.

Owns: `CounterCell`, `GaugeCell` and `HistogramCell` (a plain number, or plain bucket counts, with
`inc`/`dec`/`set`/`observe`), the families that hold one cell per label-value tuple, and the rendering
of those cells as prometheus_client `Metric` families at scrape time (each family is a `Collector`
registered on the worker's `CollectorRegistry`, beside the prometheus_client families of the control
path, so one registry still renders everything and `get_sample_value` still works).

Why no lock: prometheus_client guards every child with a `threading.Lock` and checks each `inc()`
amount, and its `Histogram.observe` walks the buckets in Python, taking the lock once per bucket hit
plus once for the sum. A worker is one process running one asyncio event loop, and its scrapes
(`/metrics` on the admin server, or the supervisor asking the worker) run as callbacks on that same
loop: a cell is never read while it is half-updated, so the lock buys nothing and costs a few percent
of a request's CPU. Cells are therefore *not* thread-safe: do not touch them from another thread
(`loop.run_in_executor`, a thread-based exporter); use a prometheus_client family for such a metric.

Must not: know any `sidecar_*` name, label or bucket (metrics.py does), check amounts on the hot path
(a counter's callers only ever add positive constants), or create module-level state (each `Metrics`
builds its own families on its own registry).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString


class CounterCell:
    """One counter series: `value` only goes up (by what callers add; they add positive amounts)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        # A float like prometheus_client's, so the exposition prints `1.0`, never `1`.
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class GaugeCell:
    """One gauge series: a value that goes up and down (open connections)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class CellExemplar:
    """The last exemplar of one bucket: the trace id (hex bytes, as on the wire) of a sampled request that
    fell in it, the value it observed and when (wall-clock seconds). Decoded only at scrape time."""

    __slots__ = ("timestamp", "trace_id", "value")

    def __init__(self, trace_id: bytes, value: float, timestamp: float) -> None:
        self.trace_id = trace_id
        self.value = value
        self.timestamp = timestamp


class HistogramCell:
    """One histogram series: per-bucket (not cumulative) counts, made cumulative at scrape time.

    `counts[i]` counts observations `v` with `bounds[i-1] < v <= bounds[i]` (Prometheus' `le` is
    inclusive); the last slot is the `+Inf` bucket. `bucket_of` returns the first index whose bound
    is >= v (as `bisect_left` would), which is exactly that bucket: a value equal to a bound lands in
    the bound's own bucket. The `_count` series is the `+Inf` cumulative count, so `observe` keeps no
    separate count. (A NaN would land in the first bucket, where prometheus_client counts it nowhere;
    durations from a monotonic clock are never NaN, so the hot path does not test for it.)

    `exemplars` stays None until the first `observe_exemplar` (a sampled request): unsampled traffic pays
    nothing for them. Then it holds, per bucket, the latest exemplar that fell in that bucket (OpenMetrics
    puts an exemplar on the `_bucket` line its value falls in; the Prometheus text format has none).
    """

    __slots__ = ("bounds", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.exemplars: list[CellExemplar | None] | None = None

    def observe(self, value: float) -> None:
        self.counts[self.bucket_of(value)] += 1
        self.sum += value

    def bucket_of(self, value: float) -> int:
        """`bisect_left(bounds, value)`: the first bucket whose bound is >= value (the `+Inf` slot after them
        all; NaN, for which every comparison is false, the first, as bisect puts it). A scan from the
        smallest bound, compiled: request durations land in the first few buckets, and this costs a fraction
        of a call into `bisect` with a boxed float (measured in docs/decisions/0022)."""
        bounds = self.bounds
        at = 0
        end = len(bounds)
        while at < end and bounds[at] < value:
            at += 1
        return at

    def observe_exemplar(self, value: float, trace_id: bytes, timestamp: float) -> None:
        """`observe`, keeping `trace_id` as the exemplar of the bucket the value falls in (sampled requests)."""
        at = self.bucket_of(value)
        self.counts[at] += 1
        self.sum += value
        exemplars = self.exemplars
        if exemplars is None:
            exemplars = self.exemplars = [None] * len(self.counts)
        exemplars[at] = CellExemplar(trace_id, value, timestamp)


CellT = TypeVar("CellT", CounterCell, GaugeCell, HistogramCell)


class _Family(Generic[CellT]):
    """Cells of one family, one per label-value tuple, in the order they were first bound.

    `labels(*values)` binds (or finds) a series, as prometheus_client's `.labels(...)` does: call it when
    a route, cluster or listener is built and keep the cell, never per request. A family registers
    itself on `registry` as a collector at construction, so registration order (and hence exposition
    order) is the order in which `Metrics` creates its families, interleaved with its prometheus_client
    families exactly as before.
    """

    __slots__ = ("_cells", "documentation", "labelnames", "name")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._cells: dict[tuple[str, ...], CellT] = {}
        registry.register(self)

    def labels(self, *values: str) -> CellT:
        """The cell of the series with these label values (in `labelnames` order), bound on first use."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values!r}")
        key = tuple(str(v) for v in values)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = self._new_cell()
        return cell

    def describe(self) -> list[Metric]:
        # Names only, no samples: lets the registry refuse a second family of the same name, as it does
        # for prometheus_client's own families.
        return [self._metric()]

    def collect(self) -> Iterator[Metric]:
        metric = self._metric()
        for values, cell in self._cells.items():
            self._add_samples(metric, dict(zip(self.labelnames, values, strict=True)), cell)
        yield metric

    def _new_cell(self) -> CellT:
        raise NotImplementedError

    def _metric(self) -> Metric:
        raise NotImplementedError

    def _add_samples(self, metric: Metric, labels: dict[str, str], cell: CellT) -> None:
        raise NotImplementedError


class CounterFamily(_Family[CounterCell]):
    """A counter family. `name` is without `_total`: the exposition appends it, as for prometheus_client."""

    __slots__ = ()

    def _new_cell(self) -> CounterCell:
        return CounterCell()

    def _metric(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add_samples(self, metric: Metric, labels: dict[str, str], cell: CounterCell) -> None:
        metric.add_sample(self.name + "_total", labels, cell.value)


class UnclaimedCounterFamily(CounterFamily):
    """A counter family whose name without `_total` is a gauge's (`sidecar_downstream_connections_total`
    beside the `sidecar_downstream_connections` gauge): it claims no names in the registry, whose duplicate
    check would otherwise see the counter's base name as the gauge's. The text exposition keeps them apart
    (`_total` on the counter's HELP and TYPE); `exposition.render_metrics` renames the family for
    OpenMetrics, where both would be one family name."""

    __slots__ = ()

    def describe(self) -> list[Metric]:
        return []


class GaugeFamily(_Family[GaugeCell]):
    """A gauge family."""

    __slots__ = ()

    def _new_cell(self) -> GaugeCell:
        return GaugeCell()

    def _metric(self) -> Metric:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add_samples(self, metric: Metric, labels: dict[str, str], cell: GaugeCell) -> None:
        metric.add_sample(self.name, labels, cell.value)


class HistogramFamily(_Family[HistogramCell]):
    """A histogram family with fixed finite upper bounds (`+Inf` is implied, as in prometheus_client).

    Samples per series are those of prometheus_client's `Histogram`: one `_bucket` per bound with
    cumulative counts (`le` formatted as it formats it), `+Inf` last, then `_count`, then `_sum`.
    """

    __slots__ = ("_bounds", "_les")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry,
                 buckets: Sequence[float]) -> None:
        bounds = tuple(float(b) for b in buckets)
        if bounds and bounds[-1] == math.inf:
            bounds = bounds[:-1]
        # Non-negative: durations and sizes; prometheus_client would also drop `_sum` for negative bounds.
        if not bounds or bounds[0] < 0 or not all(map(math.isfinite, bounds)) \
                or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be non-negative, finite and strictly increasing: {buckets!r}")
        if "le" in labelnames:
            raise ValueError(f"{name}: `le` is reserved for the bucket label")
        # Set before registering: the registry calls describe() at once.
        self._bounds = bounds
        self._les = (*(floatToGoString(b) for b in bounds), "+Inf")  # type: ignore[no-untyped-call]
        super().__init__(name, documentation, labelnames, registry)

    def _new_cell(self) -> HistogramCell:
        return HistogramCell(self._bounds)

    def _metric(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add_samples(self, metric: Metric, labels: dict[str, str], cell: HistogramCell) -> None:
        bucket = self.name + "_bucket"
        total = 0.0
        exemplars = cell.exemplars
        for at, (le, count) in enumerate(zip(self._les, cell.counts, strict=True)):
            total += count
            kept = exemplars[at] if exemplars is not None else None
            # prometheus_client's OpenMetrics encoder renders the exemplar; its text encoder ignores it.
            exemplar = None if kept is None else Exemplar(
                {"trace_id": kept.trace_id.decode("latin-1")}, kept.value, kept.timestamp)
            metric.add_sample(bucket, {**labels, "le": le}, total, None, exemplar)
        metric.add_sample(self.name + "_count", labels, total)
        metric.add_sample(self.name + "_sum", labels, cell.sum)
