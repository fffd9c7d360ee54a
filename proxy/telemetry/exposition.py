"""Render a metrics registry for a scrape, in the format the scraper asked for.

Owns: content negotiation (Prometheus text 0.0.4 by default, OpenMetrics when `Accept` asks for
it) and the exact Content-Type string to send back.

Must not: serve HTTP (the admin server does), or gather other workers' registries (the assembly
passes in whatever collector it wants rendered).
"""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector


def render_metrics(registry: Collector, accept: str | None) -> tuple[bytes, str]:
    """Return (body, content type) for a scrape with `Accept: accept`.

    The content type already carries `charset=utf-8`: send it as the `Content-Type` header as is.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
