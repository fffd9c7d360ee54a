"""Merge the metrics of several worker processes into one exposition (the supervisor's /metrics).

Owns: the rule for combining per-worker Prometheus text expositions. Counters, histograms (buckets,
`_sum`, `_count`) and summaries are summed per (sample name, labels) across workers, so a dashboard
sees one sidecar. Gauges are summed only when their sum means something for the whole sidecar
(`sidecar_downstream_connections`: open connections add up); every other gauge (breaker state,
endpoints per cluster, certificate expiry) describes one worker's own view, so it keeps one series per
worker with an extra `worker="I"` label instead of a meaningless sum. `sidecar_config_reloads_total`
takes the largest value, not the sum: every process applies (and counts) the same reload.

Exemplars: a source may be OpenMetrics (it ends with `# EOF`; the supervisor asks its workers for it), whose
histogram buckets carry the trace id of a sampled request. The merged bucket keeps the newest exemplar any
worker had for it (by its timestamp), so the sidecar's OpenMetrics `/metrics` links to traces in worker mode
too. A counter that OpenMetrics had to name in full as an `unknown` family (`exposition.OpenMetricsNames`)
is read back as the counter it is, so a mix of formats merges into the same families. A counter is kept
apart from a family of another type with its name: `sidecar_downstream_connections` is both a gauge and
(with `_total`) a counter.

Must not: do I/O, know where the texts come from, or hold state between scrapes. It is pure: text in,
`Metric` families out (rendered by `exposition.render_metrics` through `MergedMetrics`).

Why not prometheus_client's multiprocess mode: it merges mmap files of every pid that ever lived on
each scrape, growing slower with every restart, and cannot label gauges per worker index. Each worker
keeps its own registry instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

# Gauges whose values add up across workers. Others get a `worker` label (see the module docstring).
SUMMED_GAUGES: Final[frozenset[str]] = frozenset({"sidecar_downstream_connections"})

# Counters of events that every process sees once each: a reload of the one config file is applied by
# every worker (each counts it), so the sidecar's count is the largest, not the sum (N per reload).
MAXED_COUNTERS: Final[frozenset[str]] = frozenset({"sidecar_config_reloads"})

# Families whose samples are per-event totals: summing them across processes is their meaning.
_SUMMED_TYPES: Final = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

WORKER_LABEL: Final = "worker"


@dataclass(frozen=True, slots=True)
class Source:
    """One exposition to merge. `worker` is the worker index for per-worker gauges; None for a source
    that is not a worker (the supervisor's own registry), whose gauges are passed through unlabelled."""

    worker: str | None
    text: str


def merge(sources: Sequence[Source], summed_gauges: frozenset[str] = SUMMED_GAUGES,
          maxed: frozenset[str] = MAXED_COUNTERS) -> list[Metric]:
    """Parse every source and combine same-named families (see the module docstring for the rules).

    Families and series keep the order in which they were first seen, so histogram buckets of one
    label set stay together and in `le` order, as they were in each worker's output.
    """
    families: dict[tuple[str, bool], Metric] = {}
    # Per family: (sample name, sorted labels) -> index into the family's samples, for summing.
    index: dict[tuple[str, bool], dict[tuple[str, tuple[tuple[str, str], ...]], int]] = {}
    for source in sources:
        for family in parse(source.text):
            # A counter's samples end in `_total`, so it may share its name with one other family; two
            # other types of one name would render clashing samples.
            key = (family.name, family.type == "counter")
            merged = families.get(key)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[key] = merged
                index[key] = {}
            elif merged.type != family.type:
                # Only a version skew between workers could cause this; keep the first type rather than
                # emit a family Prometheus would reject.
                continue
            maximum = merged.name in maxed
            combined = maximum or merged.type in _SUMMED_TYPES or merged.name in summed_gauges
            seen = index[key]
            for sample in family.samples:
                labels = dict(sample.labels)
                if not combined and source.worker is not None:
                    labels[WORKER_LABEL] = source.worker
                at_key = (sample.name, tuple(sorted(labels.items())))
                at = seen.get(at_key)
                if at is None:
                    seen[at_key] = len(merged.samples)
                    merged.samples.append(Sample(sample.name, labels, sample.value, None, sample.exemplar))
                    continue
                old = merged.samples[at]
                if maximum:
                    value = max(old.value, sample.value)
                elif combined:
                    value = old.value + sample.value
                else:
                    value = sample.value  # the same gauge series from two non-worker sources: the later wins
                merged.samples[at] = Sample(old.name, old.labels, value, None, _newer(old.exemplar, sample.exemplar))
    return list(families.values())


def parse(text: str) -> list[Metric]:
    """The families of one exposition, Prometheus text or OpenMetrics (which ends with `# EOF`). A counter
    OpenMetrics carried as an `unknown` family under its `_total` name becomes that counter again."""
    if not text.rstrip().endswith("# EOF"):
        return list(text_string_to_metric_families(text))
    families = []
    for family in openmetrics_families(text):  # type: ignore[no-untyped-call]
        if family.type == "unknown" and family.name.endswith("_total"):
            counter = Metric(family.name.removesuffix("_total"), family.documentation, "counter", family.unit)
            counter.samples = list(family.samples)
            family = counter
        families.append(family)
    return families


def _newer(old: Exemplar | None, new: Exemplar | None) -> Exemplar | None:
    """The later of two exemplars of one bucket (by timestamp; one without a timestamp loses)."""
    if old is None:
        return new
    if new is None:
        return old
    return new if _seconds(new) >= _seconds(old) else old


def _seconds(exemplar: Exemplar) -> float:
    stamp = exemplar.timestamp
    if stamp is None:
        return float("-inf")
    return float(stamp) if isinstance(stamp, int | float) else float(stamp.sec) + stamp.nsec / 1e9


class MergedMetrics(Collector):
    """A prometheus_client collector yielding already merged families, for `render_metrics`."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
