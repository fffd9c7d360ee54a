"""The span sink with the SDK's in-memory exporter: unsampled records cost nothing, sampled ones become a
server span and client spans with the record's ids and times, the queue is bounded (drops counted), a
failing exporter's batches are counted as dropped, and close flushes what is queued."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy.clock import ManualClock
from proxy.errors import FailureKind
from proxy.local_reply import Cause
from proxy.resilience.classify import classify_failure, classify_status
from proxy.telemetry import tracing
from proxy.telemetry.record import AttemptSpan, RequestRecord
from proxy.telemetry.tracing import SpanSink

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"


def sampled_record(attempts: int = 1) -> RequestRecord:
    record = RequestRecord("outbound", 100.0, None)
    record.route, record.cluster, record.status, record.duration = "pay", "backend", 200, 0.050
    record.trace_id, record.server_span_id, record.parent_span_id = TRACE, b"00000000000000aa", b"00f067aa0ba902b7"
    record.attempt_spans = [
        AttemptSpan(b"00000000000000b%d" % n, n, 100.001 + n / 100, 100.009 + n / 100, "10.0.0.1:8080",
                    classify_status(503 if n < attempts else 200))
        for n in range(1, attempts + 1)]
    record.attempts = attempts
    return record


@pytest.fixture(autouse=True)
def quick_export(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "EXPORT_INTERVAL", 0.05)  # batches go every 5 s by default


def make_sink(exporter: SpanExporter, drops: list[int]) -> SpanSink:
    return SpanSink(exporter, Resource.create({"service.name": "svc"}), ManualClock(), drops.append)


def wait_for(check, seconds: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_unsampled_records_are_ignored() -> None:
    exporter = InMemorySpanExporter()
    sink = make_sink(exporter, [])
    sink.record(RequestRecord("outbound", 0.0, None))
    sink.close()
    assert exporter.get_finished_spans() == ()


def test_a_sampled_record_becomes_a_server_span_and_its_client_spans() -> None:
    exporter = InMemorySpanExporter()
    sink = make_sink(exporter, [])
    sink.record(sampled_record(attempts=2))
    sink.close()
    server, first, second = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert server.kind is SpanKind.SERVER and server.context.span_id == 0xAA
    assert server.parent is not None and server.parent.span_id == 0x00F067AA0BA902B7
    assert {first.kind, second.kind} == {SpanKind.CLIENT}
    assert first.parent == second.parent == server.context
    assert (first.context.span_id, second.context.span_id) == (0xB1, 0xB2)
    assert first.attributes["error.type"] == "503" and second.attributes["http.request.resend_count"] == 1
    assert (server.end_time or 0) - (server.start_time or 0) == 50_000_000
    assert server.resource.attributes["service.name"] == "svc"


def test_a_local_reply_and_a_failed_attempt_carry_their_causes() -> None:
    exporter = InMemorySpanExporter()
    sink = make_sink(exporter, [])
    record = sampled_record()
    record.status, record.cause = 503, Cause.CONNECT_REFUSED
    record.attempt_spans = [AttemptSpan(b"00000000000000b1", 1, 100.0, 100.1, "10.0.0.1:8080",
                                        classify_failure(FailureKind.CONNECT_REFUSED))]
    sink.record(record)
    sink.close()
    server, client = sorted(exporter.get_finished_spans(), key=lambda s: s.kind.value)
    assert server.attributes["sidecar.local_reply"] == "connection_refused"
    assert client.attributes["error.type"] == "connection_refused"
    assert "http.response.status_code" not in client.attributes


class Failing(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.FAILURE


def test_failed_exports_and_a_full_queue_are_counted_as_drops(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    drops: list[int] = []
    sink = make_sink(Failing(), drops)
    sink.record(sampled_record())
    wait_for(lambda: sum(drops) == 2)  # the server span and its client span
    monkeypatch.setattr(tracing, "MAX_QUEUE", 0)
    sink.record(sampled_record(attempts=3))
    assert drops[-1] == 4  # refused at the door: the server span and three client spans
    sink.close()
