"""Render a metrics registry for a scrape, in the format the scraper asked for.

Owns: content negotiation (Prometheus text 0.0.4 by default, OpenMetrics when `Accept` asks for
it), the exact Content-Type string to send back, and what differs between the two: exemplars (the trace
ids on histogram buckets) exist only in OpenMetrics (prometheus_client's text encoder drops them), and a
counter whose name without `_total` is also a gauge's (`sidecar_downstream_connections_total` beside the
`sidecar_downstream_connections` gauge) is one family name in OpenMetrics, where a family named twice is
invalid: there it goes out as an `unknown` family under its full sample name (PromQL reads it the same).

Must not: serve HTTP (the admin server does), or gather other workers' registries (the assembly
passes in whatever collector it wants rendered).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

OPENMETRICS = "application/openmetrics-text"


def render_metrics(registry: Collector, accept: str | None) -> tuple[bytes, str]:
    """Return (body, content type) for a scrape with `Accept: accept`.

    The content type already carries `charset=utf-8`: send it as the `Content-Type` header as is.
    """
    encoder, content_type = choose_encoder(accept or "")
    if content_type.startswith(OPENMETRICS):
        return encoder(OpenMetricsNames(registry)), content_type
    return encoder(registry), content_type


class OpenMetricsNames(Collector):
    """`registry`'s families, with each counter that shares its family name with another family renamed to
    its full `_total` name, typed `unknown` (see the module docstring)."""

    def __init__(self, registry: Collector) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        families = list(self._registry.collect())
        others = {family.name for family in families if family.type != "counter"}
        for family in families:
            if family.type == "counter" and family.name in others:
                renamed = Metric(family.name + "_total", family.documentation, "unknown", family.unit)
                renamed.samples = list(family.samples)
                yield renamed
            else:
                yield family
