"""Micro-benchmark: cost per request of the metrics the request path records.

Times the lock-free cells the request path uses (`RouteMetrics.record` = cached code cell `inc()` +
histogram cell `observe()`, an attempt counter, the connection gauge), next to two prometheus_client
references on a registry of their own: the bound children the cells replaced (lock per `inc()`,
Python loop over the buckets per `observe()`), and the naive per-request `.labels(...)` calls that
binding once avoids. A regression in any of them shows as a number.
Run: `python -m benchmarks.micro.bench_metrics [--iterations N]`.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry, Counter, Histogram

from benchmarks.micro._common import iterations, ns_per_op, print_results
from proxy.telemetry.metrics import DURATION_BUCKETS, Metrics

LABELS = ("outbound", "campaign-split", "campaign-v1")


def main(argv: list[str]) -> None:
    number = iterations(argv, 200_000, __doc__.splitlines()[0])
    metrics = Metrics(CollectorRegistry())
    route = metrics.for_route(*LABELS)
    route.record(200, 0.001)  # bind the code cell outside the timed loop, as a warm route would
    attempts = metrics.attempts("campaign-v1")
    conns = metrics.downstream_connections("outbound")
    # The prometheus_client reference: the same families as they were before the cells.
    reference = CollectorRegistry()
    requests = Counter("sidecar_requests", "", ("listener", "route", "cluster", "code"), registry=reference)
    duration = Histogram("sidecar_request_duration_seconds", "", ("listener", "route", "cluster"),
                         buckets=DURATION_BUCKETS, registry=reference)
    ns = {
        "route": route,
        "attempts": attempts,
        "conns": conns,
        "requests": requests,
        "duration": duration,
        "code_child": requests.labels(*LABELS, "200"),
        "duration_child": duration.labels(*LABELS),
    }
    results = {
        "RouteMetrics.record(200, s)": ns_per_op("route.record(200, 0.0042)", ns, number),
        "AttemptMetrics.success.inc()": ns_per_op("attempts.success.inc()", ns, number),
        "downstream connection inc+dec": ns_per_op("conns.inc(); conns.dec()", ns, number),
        "ref: prometheus bound inc+observe": ns_per_op(
            "code_child.inc(); duration_child.observe(0.0042)", ns, number
        ),
        "ref: prometheus bound Counter inc()": ns_per_op("code_child.inc()", ns, number),
        "ref: naive .labels() inc+observe": ns_per_op(
            "requests.labels('outbound', 'campaign-split', 'campaign-v1', '200').inc();"
            "duration.labels('outbound', 'campaign-split', 'campaign-v1').observe(0.0042)",
            ns,
            number,
        ),
    }
    print_results(number, results)


if __name__ == "__main__":
    main(sys.argv)
