"""Micro-benchmark: cost per request of the metrics the request path records.

Times `RouteMetrics.record` (cached code child `inc()` + histogram child `observe()`), next to the
naive per-request `.labels(...)` calls it replaces, so a regression in either shows as a number.
Run: `python -m benchmarks.micro.bench_metrics [--iterations N]`.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from benchmarks.micro._common import iterations, ns_per_op, print_results
from proxy.telemetry.metrics import Metrics


def main(argv: list[str]) -> None:
    number = iterations(argv, 200_000, __doc__.splitlines()[0])
    metrics = Metrics(CollectorRegistry())
    route = metrics.for_route("outbound", "campaign-split", "campaign-v1")
    route.record(200, 0.001)  # bind the code child outside the timed loop, as a warm route would
    attempts = metrics.attempts("campaign-v1")
    ns = {
        "route": route,
        "attempts": attempts,
        "requests": metrics.requests,
        "duration": metrics.request_duration,
    }
    results = {
        "RouteMetrics.record(200, s)": ns_per_op("route.record(200, 0.0042)", ns, number),
        "AttemptMetrics.success.inc()": ns_per_op("attempts.success.inc()", ns, number),
        "naive .labels() inc+observe": ns_per_op(
            "requests.labels('outbound', 'campaign-split', 'campaign-v1', '200').inc();"
            "duration.labels('outbound', 'campaign-split', 'campaign-v1').observe(0.0042)",
            ns,
            number,
        ),
    }
    print_results(number, results)


if __name__ == "__main__":
    main(sys.argv)
