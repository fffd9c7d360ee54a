"""Micro-benchmark: cost per request of trace propagation (`proxy/filters/trace.py`).

Times `extract` + `inject` together (one upstream attempt) for each incoming shape: W3C traceparent, b3
single, b3 multi-header and no context (a new trace), with W3C-only and W3C+b3 injection; plus extract
and inject alone for the W3C case. Inject copies a fresh header list each op, as the request path does
when it builds the upstream headers; the copy is timed separately so it can be subtracted.
Run: `python -m benchmarks.micro.bench_trace [--iterations N]`.
"""

from __future__ import annotations

import random
import sys

from benchmarks.micro._common import iterations, ns_per_op, print_results
from proxy.filters.trace import TracePropagator

_COMMON = [
    (b"host", b"campaigns.default.svc.cluster.local"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"*/*"),
    (b"x-request-id", b"4bf92f3577b34da6a3ce929d0e0e4736"),
    (b"content-type", b"application/json"),
]
_TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
_SPAN = b"00f067aa0ba902b7"
_SHAPES: dict[str, list[tuple[bytes, bytes]]] = {
    "w3c": [*_COMMON, (b"traceparent", b"00-%s-%s-01" % (_TRACE, _SPAN)),
            (b"tracestate", b"congo=t61rcWkgMzE")],
    "b3 single": [*_COMMON, (b"b3", b"%s-%s-1" % (_TRACE, _SPAN))],
    "b3 multi": [*_COMMON, (b"x-b3-traceid", _TRACE), (b"x-b3-spanid", _SPAN), (b"x-b3-sampled", b"1")],
    "none (new trace)": list(_COMMON),
}


def main(argv: list[str]) -> None:
    number = iterations(argv, 100_000, __doc__.splitlines()[0])
    w3c = TracePropagator.from_config(["w3c"], 0.01, random.Random(1))
    both = TracePropagator.from_config(["w3c", "b3"], 0.01, random.Random(1))
    results: dict[str, float] = {}
    for shape, headers in _SHAPES.items():
        for label, prop in (("w3c", w3c), ("w3c+b3", both)):
            ns = {"p": prop, "h": headers}
            results[f"extract+inject {shape}, inject {label}"] = ns_per_op(
                "p.inject(list(h), p.extract(h))", ns, number
            )
    w3c_headers = _SHAPES["w3c"]
    ns = {"p": w3c, "h": w3c_headers, "ctx": w3c.extract(w3c_headers)}
    results["extract w3c"] = ns_per_op("p.extract(h)", ns, number)
    results["inject w3c (incl. list copy)"] = ns_per_op("p.inject(list(h), ctx)", ns, number)
    results["list copy alone (baseline)"] = ns_per_op("list(h)", ns, number)
    print_results(number, results)


if __name__ == "__main__":
    main(sys.argv)
