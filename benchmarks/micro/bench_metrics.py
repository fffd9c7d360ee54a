"""Micro-benchmark: cost per request of the metrics the request path records.

Times `RouteMetrics.record` (cached code child `inc()` + histogram child `observe()`), next to the
naive per-request `.labels(...)` calls it replaces, so a regression in either shows as a number.
Run: `python -m benchmarks.micro.bench_metrics [iterations]`.
"""

from __future__ import annotations

import sys
import timeit

from prometheus_client import CollectorRegistry

from proxy.telemetry.metrics import Metrics


def ns_per_op(stmt: str, namespace: dict[str, object], number: int, repeat: int = 5) -> float:
    # Best of `repeat`: the minimum is the least disturbed by the rest of the machine.
    return min(timeit.repeat(stmt, globals=namespace, number=number, repeat=repeat)) / number * 1e9


def main(argv: list[str]) -> None:
    number = int(argv[1]) if len(argv) > 1 else 200_000
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
    width = max(map(len, results))
    print(f"{number} iterations, best of 5, Python {sys.version.split()[0]}")
    for name, value in results.items():
        print(f"{name:<{width}}  {value:8.0f} ns/op")


if __name__ == "__main__":
    main(sys.argv)
