"""Span export: a server span per sampled request and a client span per upstream attempt, sent over OTLP/HTTP.

Owns turning the end-of-request record of a sampled request (its server span id, its parent, one
`AttemptSpan` per attempt: the ids already sent on the wire by `proxy.filters.trace`) into OpenTelemetry
SDK spans (`ReadableSpan`, with the HTTP semantic conventions' attributes and the sidecar's own: route,
cluster, endpoint, attempt, local-reply cause, peer identity), and exporting them with the SDK's OTLP/HTTP
exporter from a thread of its own.

On the event loop a sampled request costs one tuple appended to a bounded queue (`SpanSink.record`); an
unsampled one returns at the first test and pays for nothing of the SDK. The export thread builds the
spans and posts them in batches (`MAX_BATCH`, or whatever arrived within `EXPORT_INTERVAL`; the SDK
batch processor's defaults: each POST costs milliseconds of CPU in `requests`, so few and full is cheaper). When the
queue is full (a collector that is down or slow) new spans are dropped, and when an export fails its
batch is dropped: both counted in `sidecar_trace_spans_dropped_total`; memory stays bounded and the
request path never waits. `close()` flushes what is queued, within a deadline. Must not block the loop or
decide sampling (the propagator does).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from proxy.clock import Clock
from proxy.telemetry.record import AttemptSpan, RequestRecord

log = logging.getLogger("proxy.telemetry.tracing")

MAX_QUEUE: Final = 2048        # requests whose spans wait for export (the SDK's BatchSpanProcessor default)
MAX_BATCH: Final = 512         # spans per OTLP request
EXPORT_INTERVAL: Final = 5.0   # seconds a span waits at most before its batch goes (the SDK's schedule delay)
EXPORT_TIMEOUT: Final = 5.0    # one OTLP request (the exporter's own retries included)
CLOSE_TIMEOUT: Final = 5.0     # flushing on shutdown

SCOPE: Final = InstrumentationScope("horizon-sidecar", "0.1.0")
SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_NS: Final = 1_000_000_000


class FinishedRequest:
    """What the export thread needs of a sampled request: copied off the record on the loop (the record is
    reused by nothing, but it holds the stream; the thread must not touch live objects)."""

    __slots__ = ("attempts", "attributes", "end_ns", "method", "parent", "route", "server_span", "start_ns",
                 "status", "trace_id", "wall_offset")

    def __init__(self, record: RequestRecord, wall_offset: float, attributes: dict[str, Any],
                 attempts: list[AttemptSpan]) -> None:
        self.trace_id = int(record.trace_id, 16)
        self.server_span = int(record.server_span_id, 16)
        self.parent = int(record.parent_span_id, 16) if record.parent_span_id else None
        self.wall_offset = wall_offset
        self.start_ns = int((record.started_at + wall_offset) * _NS)
        self.end_ns = self.start_ns + round(record.duration * _NS)  # the duration exactly, not two roundings
        self.status = record.status
        self.method = attributes.get("http.request.method", "")
        self.route = record.route
        self.attributes = attributes
        self.attempts = attempts


def request_attributes(record: RequestRecord) -> dict[str, Any]:
    """The server span's attributes: OTel HTTP semantic conventions, then the sidecar's own."""
    attributes: dict[str, Any] = {"sidecar.listener": record.listener, "http.response.status_code": record.status}
    head = record.head
    if head is not None:
        attributes["http.request.method"] = head.method.decode("latin-1")
        attributes["url.path"] = record.path
        if head.query:
            attributes["url.query"] = head.query.decode("latin-1")
        if head.authority:
            attributes["server.address"] = head.authority
        agent = head.header(b"user-agent")
        if agent is not None:
            attributes["user_agent.original"] = agent.decode("latin-1")
        attributes["network.protocol.version"] = "1.1"
    optional = (("sidecar.route", record.route), ("sidecar.cluster", record.cluster),
                ("sidecar.endpoint", record.endpoint), ("sidecar.peer_identity", record.peer_identity),
                ("sidecar.request_id", record.request_id.decode("latin-1")))
    for key, value in optional:
        if value:
            attributes[key] = value
    attributes["sidecar.attempts"] = record.attempts
    if record.cause is not None:
        attributes["sidecar.local_reply"] = record.cause.error  # the Proxy-Status error token
    if record.reset:
        attributes["error.type"] = "reset"
    elif record.status >= 500:
        attributes["error.type"] = str(record.status)
    return attributes


class SpanSink:
    """The record sink (`RecordSink`) that queues sampled requests' spans for export."""

    def __init__(self, exporter: SpanExporter, resource: Resource, clock: Clock,
                 on_drop: Callable[[int], None]) -> None:
        self._clock = clock
        self._queue: deque[FinishedRequest] = deque()
        self._wake = threading.Condition()
        self._on_drop = on_drop
        self._exporter = exporter
        self._resource = resource
        self._closing = False
        self.exported = 0
        self._thread = threading.Thread(target=self._run, name="span export", daemon=True)
        self._thread.start()

    @classmethod
    def otlp(cls, endpoint: str, service: str | None, namespace: str | None, clock: Clock,
             on_drop: Callable[[int], None]) -> SpanSink:
        """Spans to an OTLP/HTTP collector at `endpoint` (its full URL, e.g. http://collector:4318/v1/traces)."""
        attributes: dict[str, str] = {"service.name": service or "horizon-sidecar"}
        if namespace:
            attributes["service.namespace"] = namespace
        return cls(OTLPSpanExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT), Resource.create(attributes),
                   clock, on_drop)

    # -- on the event loop ---------------------------------------------------------------------------

    def record(self, request: RequestRecord) -> None:
        attempts = request.attempt_spans
        if attempts is None:  # unsampled, or a listener that does not export: nothing to do
            return
        if len(self._queue) >= MAX_QUEUE:
            self._on_drop(1 + len(attempts))
            return
        offset = time.time() - self._clock.now()
        self._queue.append(FinishedRequest(request, offset, request_attributes(request), attempts))
        if len(self._queue) >= MAX_BATCH // 2:  # about a batch of spans (a server span and a client span each)
            with self._wake:
                self._wake.notify()

    def close(self) -> None:
        """Export what is queued (within `CLOSE_TIMEOUT`), then stop the thread and the exporter."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(CLOSE_TIMEOUT)
        self._exporter.shutdown()

    # -- the export thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._queue and not self._closing:
                    self._wake.wait(EXPORT_INTERVAL)
                closing = self._closing
            self._export_queued()
            if closing:
                return

    def _export_queued(self) -> None:
        while self._queue:
            spans: list[ReadableSpan] = []
            while self._queue and len(spans) < MAX_BATCH:
                spans.extend(self.spans_of(self._queue.popleft()))
            self._export(spans)

    def _export(self, spans: Sequence[ReadableSpan]) -> None:
        try:
            result = self._exporter.export(spans)
        except Exception:  # a failing exporter must not end the thread: the batch is lost, and counted
            log.exception("exporting %d spans failed", len(spans))
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            log.warning("span export failed: %d spans dropped", len(spans))
            self._on_drop(len(spans))

    def spans_of(self, request: FinishedRequest) -> list[ReadableSpan]:
        """The request's server span and its attempts' client spans."""
        server = SpanContext(request.trace_id, request.server_span, is_remote=False, trace_flags=SAMPLED)
        parent = (SpanContext(request.trace_id, request.parent, is_remote=True, trace_flags=SAMPLED)
                  if request.parent is not None else None)
        failed = request.status >= 500 or "error.type" in request.attributes
        name = f"{request.method} {request.route}" if request.route else request.method or "HTTP"
        spans = [ReadableSpan(
            name, context=server, parent=parent, resource=self._resource, attributes=request.attributes,
            kind=SpanKind.SERVER, status=Status(StatusCode.ERROR) if failed else Status(StatusCode.UNSET),
            start_time=request.start_ns, end_time=request.end_ns, instrumentation_scope=SCOPE)]
        for attempt in request.attempts:
            spans.append(self._client_span(request, server, attempt))
        return spans

    def _client_span(self, request: FinishedRequest, server: SpanContext, attempt: AttemptSpan) -> ReadableSpan:
        verdict = attempt.verdict
        host, _, port = attempt.endpoint.rpartition(":")
        attributes: dict[str, Any] = {
            "http.request.method": request.method, "server.address": host.strip("[]"),
            "sidecar.endpoint": attempt.endpoint, "sidecar.attempt": attempt.attempt,
            "sidecar.outcome": verdict.label,
        }
        if port.isdigit():
            attributes["server.port"] = int(port)
        cluster = request.attributes.get("sidecar.cluster")
        if cluster:
            attributes["sidecar.cluster"] = cluster
        if attempt.attempt > 1:
            attributes["http.request.resend_count"] = attempt.attempt - 1
        if verdict.status:
            attributes["http.response.status_code"] = verdict.status
        if verdict.is_failure:
            attributes["error.type"] = verdict.kind.value if verdict.kind is not None else str(verdict.status)
        offset = request.wall_offset
        return ReadableSpan(
            request.method or "HTTP",
            context=SpanContext(request.trace_id, int(attempt.span_id, 16), is_remote=False, trace_flags=SAMPLED),
            parent=server, resource=self._resource, attributes=attributes, kind=SpanKind.CLIENT,
            status=Status(StatusCode.ERROR) if verdict.is_failure else Status(StatusCode.UNSET),
            start_time=int((attempt.started + offset) * _NS), end_time=int((attempt.ended + offset) * _NS),
            instrumentation_scope=SCOPE)
