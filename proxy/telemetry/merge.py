"""Merge the metrics of several worker processes into one exposition (the supervisor's /metrics).

Owns: the rule for combining per-worker Prometheus text expositions. Counters, histograms (buckets,
`_sum`, `_count`) and summaries are summed per (sample name, labels) across workers, so a dashboard
sees one sidecar. Gauges are summed only when their sum means something for the whole sidecar
(`sidecar_downstream_connections`: open connections add up); every other gauge (breaker state,
endpoints per cluster, certificate expiry) describes one worker's own view, so it keeps one series per
worker with an extra `worker="I"` label instead of a meaningless sum. `sidecar_config_reloads_total`
takes the largest value, not the sum: every process applies (and counts) the same reload.

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
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

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
    families: dict[str, Metric] = {}
    # Per family: (sample name, sorted labels) -> index into the family's samples, for summing.
    index: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], int]] = {}
    for source in sources:
        for family in text_string_to_metric_families(source.text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
                index[family.name] = {}
            elif merged.type != family.type:
                # Only a version skew between workers could cause this; keep the first type rather than
                # emit a family Prometheus would reject.
                continue
            maximum = merged.name in maxed
            combined = maximum or merged.type in _SUMMED_TYPES or merged.name in summed_gauges
            seen = index[family.name]
            for sample in family.samples:
                labels = dict(sample.labels)
                if not combined and source.worker is not None:
                    labels[WORKER_LABEL] = source.worker
                key = (sample.name, tuple(sorted(labels.items())))
                at = seen.get(key)
                if at is None:
                    seen[key] = len(merged.samples)
                    merged.samples.append(Sample(sample.name, labels, sample.value, None, None))
                    continue
                old = merged.samples[at]
                if maximum:
                    value = max(old.value, sample.value)
                elif combined:
                    value = old.value + sample.value
                else:
                    value = sample.value  # the same gauge series from two non-worker sources: the later wins
                merged.samples[at] = Sample(old.name, old.labels, value, None, None)
    return list(families.values())


class MergedMetrics(Collector):
    """A prometheus_client collector yielding already merged families, for `render_metrics`."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
