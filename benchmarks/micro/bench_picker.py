"""Micro-benchmark: cost per attempt of endpoint selection (`proxy.upstream.cluster.Cluster.pick`).

A Cluster of 3 static endpoints is built from its config model (as the app does) with a real Metrics on
its own registry, once without and once with circuit breakers. Times `pick(None)` (a first try), the
pick followed by the breaker report of a success (what one attempt costs the breaker in all), and
`pick(tried)` on a retry that must skip the endpoint already tried. Nothing connects: pools are created
but never used. Run: `python -m benchmarks.micro.bench_picker [--iterations N]`.
"""

from __future__ import annotations

import asyncio
import sys

from prometheus_client import CollectorRegistry

from benchmarks.micro._common import iterations, ns_per_op, print_results
from proxy.clock import Clock
from proxy.config.model import ClusterConfig
from proxy.discovery.static import static_endpoints
from proxy.resilience.classify import classify_status
from proxy.telemetry.metrics import Metrics
from proxy.upstream.cluster import Cluster

ENDPOINTS = ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"]


def build(breakers: bool) -> Cluster:
    raw: dict[str, object] = {"name": "bench", "endpoints": ENDPOINTS}
    if breakers:
        # A high min_requests: the timed loop only succeeds anyway, this just keeps the numbers about the
        # closed-state path the request path takes almost always.
        raw["circuit_breaker"] = {"min_requests": 20, "failure_ratio": 0.5, "interval": "10s",
                                  "open_timeout": "30s"}
    config = ClusterConfig.model_validate(raw)
    cluster = Cluster(config, Metrics(CollectorRegistry()), Clock())
    cluster.set_endpoints(static_endpoints(config.endpoints or []))
    return cluster


def pick_and_report(cluster: Cluster, ok: object) -> None:
    picked = cluster.pick(None)
    assert picked is not None
    endpoint, token = picked
    endpoint.report(token, ok)  # type: ignore[arg-type]


async def measure(number: int) -> dict[str, float]:
    """Inside a running loop: endpoint pools bind to the running loop when they are created."""
    results: dict[str, float] = {}
    for label, breakers in (("no breakers", False), ("breakers", True)):
        cluster = build(breakers)
        picked = cluster.pick(None)
        assert picked is not None
        ns: dict[str, object] = {"cluster": cluster, "tried": [picked[0]], "ok": classify_status(200),
                                 "pick_and_report": pick_and_report}
        # Round robin over 3 endpoints: three picks in a row land on three different endpoints.
        assert len({cluster.pick(None)[0].address for _ in range(3)}) == 3  # type: ignore[index]
        results[f"pick, 3 endpoints, {label}"] = ns_per_op("cluster.pick(None)", ns, number)
        results[f"pick + report(success), {label}"] = ns_per_op("pick_and_report(cluster, ok)", ns, number)
        results[f"pick(tried) on a retry, {label}"] = ns_per_op("cluster.pick(tried)", ns, number)
        cluster.close()
    return results


def main(argv: list[str]) -> None:
    number = iterations(argv, 300_000, __doc__.splitlines()[0])
    print_results(number, asyncio.run(measure(number)))


if __name__ == "__main__":
    main(sys.argv)
