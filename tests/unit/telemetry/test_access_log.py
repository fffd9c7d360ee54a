"""The access log sink: every field of a hand-built record, the text format, sampling, drops, reopen, close."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.local_reply import Cause
from proxy.message import RequestHead
from proxy.telemetry.access_log import AccessLogSink, fields, is_error
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.record import RequestRecord

# 2026-01-02T03:04:05.678Z, the request's end; it lasted 0.25 s.
END = 1767323045.928


def a_record(status: int = 200) -> RequestRecord:
    record = RequestRecord("outbound", 100.0, None)
    record.head = RequestHead(b"GET", "/api/rewritten", b"a=1&b=%20", "campaign-service",
                              b"campaign-service:8080",
                              [(b"host", b"campaign-service:8080"), (b"user-agent", b"curl/8.5 \"q\"")])
    record.path = "/api/x"
    record.route = "campaign"
    record.cluster = "campaign-v1"
    record.endpoint = "10.0.0.7:8080"
    record.attempts = 2
    record.status = status
    record.bytes_in = 12
    record.bytes_out = 345
    record.duration = 0.25
    record.upstream_time = 0.2
    record.request_id = b"rid-1"
    record.trace_id = b"4bf92f3577b34da6a3ce929d0e0e4736"
    record.span_id = b"00f067aa0ba902b7"
    record.sampled = True
    record.peer_identity = "spiffe://cluster.local/ns/default/sa/web"
    record.api_client = "billing"
    return record


def test_every_field_of_a_record() -> None:
    assert fields(a_record(), END, [None, ""]) == {
        "start_time": "2026-01-02T03:04:05.678Z",
        "method": "GET",
        "authority": "campaign-service:8080",
        "path": "/api/x?a=1&b=%20",
        "status": 200,
        "duration_ms": 250.0,
        "upstream_ms": 200.0,
        "sidecar_ms": 50.0,
        "bytes_in": 12,
        "bytes_out": 345,
        "listener": "outbound",
        "route": "campaign",
        "cluster": "campaign-v1",
        "endpoint": "10.0.0.7:8080",
        "attempts": 2,
        "cause": None,
        "reset": False,
        "request_id": "rid-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": "00f067aa0ba902b7",
        "sampled": True,
        "peer_identity": "spiffe://cluster.local/ns/default/sa/web",
        "api_client": "billing",
        "user_agent": 'curl/8.5 "q"',
    }


def test_a_local_reply_refused_before_its_head() -> None:
    record = RequestRecord("outbound", 0.0, None)
    record.status = 400
    record.cause = Cause.BAD_REQUEST
    record.request_id = b"rid-2"
    line = fields(record, END, [None, ""])
    assert line["cause"] == "http_request_error"
    assert line["method"] is None and line["path"] is None and line["route"] is None
    assert line["attempts"] == 0 and line["trace_id"] is None
    assert is_error(record)


def sink(tmp_path: Path, *, line_format: str = "json", sample: float = 1.0,
         queue_lines: int = 1000) -> tuple[AccessLogSink, Metrics, Path]:
    metrics = Metrics(CollectorRegistry())
    path = tmp_path / "access.log"
    return (AccessLogSink(str(path), line_format, sample, metrics.access_log_lines_dropped,
                          rng=random.Random(7), wall=lambda: END, queue_lines=queue_lines), metrics, path)


def dropped(metrics: Metrics) -> float:
    return metrics.access_log_lines_dropped._value.get()


def test_lines_are_written_in_order_and_flushed_by_close(tmp_path: Path) -> None:
    log, _metrics, path = sink(tmp_path)
    for status in (200, 201, 503):
        log.record(a_record(status))
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["status"] for line in lines] == [200, 201, 503]
    assert list(lines[0]) == list(fields(a_record(), END, [None, ""]))  # the fixed key order


def test_text_format(tmp_path: Path) -> None:
    log, _metrics, path = sink(tmp_path, line_format="text")
    reply = a_record(404)
    reply.cause = Cause.NO_ROUTE
    reply.route = reply.cluster = reply.endpoint = ""
    reply.attempts = 0
    log.record(a_record())
    log.record(reply)
    log.close()
    first, second = path.read_text().splitlines()
    assert first == ('[2026-01-02T03:04:05.678Z] "GET /api/x?a=1&b=%20" 200 - 12 345 250.0 200.0 50.0 '
                     '"curl/8.5 \\"q\\"" "rid-1" "campaign-service:8080" "10.0.0.7:8080" outbound campaign '
                     'campaign-v1 2 - 4bf92f3577b34da6a3ce929d0e0e4736 "spiffe://cluster.local/ns/default/sa/web"')
    assert second.startswith('[2026-01-02T03:04:05.678Z] "GET /api/x?a=1&b=%20" 404 destination_not_found ')
    assert ' "-" outbound - - 0 - ' in second


def test_sampling_keeps_every_error(tmp_path: Path) -> None:
    log, _metrics, path = sink(tmp_path, sample=0.0)
    reset = a_record(200)
    reset.reset = True
    local = a_record(200)
    local.cause = Cause.FAULT_ABORT
    for record in (a_record(200), a_record(302), a_record(404), a_record(499), a_record(503), reset, local):
        log.record(record)
    log.close()
    statuses = [json.loads(line)["status"] for line in path.read_text().splitlines()]
    assert statuses == [404, 499, 503, 200, 200]


def test_sampling_logs_a_share_of_successes(tmp_path: Path) -> None:
    log, _metrics, path = sink(tmp_path, sample=0.25)
    for _ in range(2000):
        log.record(a_record(200))
    log.close()
    assert 400 < len(path.read_text().splitlines()) < 600


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    log, metrics, path = sink(tmp_path, queue_lines=3)
    stall = threading.Event()
    write = log._write
    # Hold the writer in its first write, so the queue fills behind it.
    entered = threading.Event()

    def slow_write(data: bytes, count: int) -> None:
        entered.set()
        stall.wait(5)
        write(data, count)

    log._write = slow_write  # type: ignore[method-assign]
    log.record(a_record(201))
    assert entered.wait(5)
    for _ in range(5):
        log.record(a_record(200))
    assert dropped(metrics) == 2  # three queued, two dropped: never blocked, never grew
    stall.set()
    log.close()
    assert len(path.read_text().splitlines()) == 4
    log.record(a_record(200))  # after close: dropped, counted
    assert dropped(metrics) == 3


def test_reopen_after_a_rename(tmp_path: Path) -> None:
    log, _metrics, path = sink(tmp_path)
    log.record(a_record(200))
    rotated = tmp_path / "access.log.1"
    # Wait (bounded) until the first line is written, then rotate as logrotate's `create` does.
    for _ in range(500):
        if path.exists() and path.read_text():
            break
        threading.Event().wait(0.01)
    path.rename(rotated)
    log.reopen()
    log.record(a_record(201))
    log.close()
    assert [json.loads(line)["status"] for line in rotated.read_text().splitlines()] == [200]
    assert [json.loads(line)["status"] for line in path.read_text().splitlines()] == [201]


def test_a_failed_write_counts_its_lines(tmp_path: Path) -> None:
    log, metrics, _path = sink(tmp_path)
    log.close()
    log._write(b"x\n" * 3, 3)  # the file is closed: EBADF
    assert dropped(metrics) == 3


def test_the_json_line_is_the_fields_in_order_whatever_they_hold() -> None:
    from proxy.telemetry.access_log import json_line

    local = a_record(503)
    local.cause, local.reset, local.route = Cause.CONNECT_REFUSED, True, ""
    odd = a_record()
    odd.peer_identity = 'spiffe://td/ns/"q"/sa/ü\\x'
    odd.api_client = "büro\n"
    headless = RequestRecord("outbound", 0.0, None)
    headless.path, headless.status = "/x", 400
    for record in (a_record(), local, odd, headless):
        line = json_line(record, END, [None, ""])
        assert line.endswith("\n") and line.count("\n") == 1 and line.isascii()
        decoded = json.loads(line)
        expected = fields(record, END, [None, ""])
        assert list(decoded) == list(expected) and decoded == expected
