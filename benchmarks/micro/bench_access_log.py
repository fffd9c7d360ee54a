"""Micro-benchmark: cost per request of the access log on the event loop (`AccessLogSink.record`).

Times what the loop pays per request with `access_log:` on: formatting a JSON line and queueing it, the
text format, and a successful request sampled out (`success_sample: 0`). The writer thread writes to
/dev/null meanwhile (its cost is off the loop). With `access_log:` absent no sink exists: nothing to time.
Run: `python -m benchmarks.micro.bench_access_log [--iterations N]`.
"""

from __future__ import annotations

import os
import sys

from prometheus_client import CollectorRegistry

from benchmarks.micro._common import iterations, ns_per_op, print_results
from proxy.message import RequestHead
from proxy.telemetry.access_log import AccessLogSink
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.record import RequestRecord


def a_record() -> RequestRecord:
    record = RequestRecord("outbound", 0.0, None)
    record.head = RequestHead(b"GET", "/api/campaigns/42", b"page=2", "campaign-service", b"campaign-service",
                              [(b"host", b"campaign-service"), (b"user-agent", b"python-requests/2.31")])
    record.path = "/api/campaigns/42"
    record.route, record.cluster, record.endpoint = "campaign-split", "campaign-v1", "10.0.0.7:8080"
    record.attempts, record.status, record.bytes_out, record.duration, record.upstream_time = 1, 200, 512, 0.004, 0.003
    record.request_id = b"7f3e1c2a-52b4-4f4e-9a4e-0c1d2e3f4a5b"
    record.trace_id = b"4bf92f3577b34da6a3ce929d0e0e4736"
    record.span_id = b"00f067aa0ba902b7"
    return record


def main(argv: list[str]) -> None:
    number = iterations(argv, 100_000, __doc__.splitlines()[0])
    dropped = Metrics(CollectorRegistry()).access_log_lines_dropped
    # A queue as deep as the run, so the writer's pace never turns a timed line into a drop.
    sinks = {name: AccessLogSink(os.devnull, fmt, sample, dropped, queue_lines=number * 6)
             for name, fmt, sample in (("json", "json", 1.0), ("text", "text", 1.0), ("sampled_out", "json", 0.0))}
    ns = {"record": a_record(), **sinks}
    results = {
        "record() json line": ns_per_op("json.record(record)", ns, number),
        "record() text line": ns_per_op("text.record(record)", ns, number),
        "record() success sampled out": ns_per_op("sampled_out.record(record)", ns, number),
    }
    for sink in sinks.values():
        sink.close()
    print_results(number, results)


if __name__ == "__main__":
    main(sys.argv)
