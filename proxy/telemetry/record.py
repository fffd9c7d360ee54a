"""The record of one request, handed to the sinks when the request ends, and the sink interface.

Owns what every request leaves behind: which listener, route, cluster and endpoint served it, how many
attempts it took, the status the client got (or that it was reset), the cause of a local reply, bytes in
and out, the total time, the time spent waiting on upstreams and the sidecar's own share of it, the trace
and span ids, the peer's verified identity (empty without mTLS) and the API client's service name (empty
unless the route's `api_key` recognised the caller's key). A request that was answered, reset or refused
ends with exactly one record: metrics are one sink of it (`proxy.telemetry.metrics.MetricsSink`); the
access log and spans will be others, with no change to the request path.

With a sampled trace on a listener that records spans, the record also holds the request's server span
id and one `AttemptSpan` per upstream attempt (the client spans, whose ids are the ones sent upstream).

The request path's per-request context is a subclass of the record (one object per request, not two),
so a sink must copy what it keeps beyond its `record` call. Must not do I/O or hold state of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.local_reply import Cause
    from proxy.message import RequestHead
    from proxy.resilience.classify import Verdict
    from proxy.telemetry.metrics import RouteMetrics


class AttemptSpan:
    """One upstream attempt of a request whose trace is recorded: its client span's id (the one injected
    upstream), when it was sent and settled (the request path's clock), the endpoint and its verdict."""

    __slots__ = ("attempt", "ended", "endpoint", "span_id", "started", "verdict")

    def __init__(self, span_id: bytes, attempt: int, started: float, ended: float, endpoint: str,
                 verdict: Verdict) -> None:
        self.span_id = span_id
        self.attempt = attempt
        self.started = started
        self.ended = ended
        self.endpoint = endpoint
        self.verdict = verdict


class RequestRecord:
    """What a request did, complete when the sinks get it.

    Times are in seconds of the request path's clock. `status` is what the client got (499 when it left
    first); `reset` says the response was broken off after it started. `cause` is set when the sidecar
    answered itself. `counted_in` is the bound metric child the request counts in, chosen by the stage
    that decided the answer.
    """

    __slots__ = ("api_client", "attempt_spans", "attempts", "bytes_in", "bytes_out", "cause", "cluster", "counted_in",
                 "duration", "endpoint", "grpc_status", "head", "listener", "parent_span_id", "path", "peer_identity",
                 "request_id", "reset", "route", "sampled", "server_span_id", "span_id", "started_at", "status",
                 "trace_id", "upstream_time")

    def __init__(self, listener: str, started_at: float, counted_in: RouteMetrics | None) -> None:
        self.listener = listener
        self.route = ""
        self.cluster = ""
        self.endpoint = ""
        self.attempts = 0
        self.status = 0
        self.reset = False
        self.cause: Cause | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.started_at = started_at
        self.duration = 0.0
        self.upstream_time = 0.0
        self.request_id = b""
        # The request's head (its method, headers and authority as forwarded), and its path as it arrived,
        # before any rewrite: set by the edge (None for a request refused before it had a head).
        self.head: RequestHead | None = None
        self.path = ""
        self.trace_id = b""
        # The last attempt's span id (the one injected upstream).
        self.span_id = b""
        # Whether the trace is sampled; when the listener records spans and it is, the request's server span
        # id, its parent (the incoming span, None for a trace started here) and one `AttemptSpan` per attempt
        # (None when spans are not recorded: unsampled requests pay for nothing more).
        self.sampled = False
        self.server_span_id = b""
        self.parent_span_id: bytes | None = None
        self.attempt_spans: list[AttemptSpan] | None = None
        # A gRPC call's grpc-status (the upstream's, or its local reply's); -1 for everything else.
        self.grpc_status = -1
        self.peer_identity = ""
        # The service a route's `api_key` check recognised the caller's key as ("" without one).
        self.api_client = ""
        self.counted_in = counted_in

    @property
    def sidecar_time(self) -> float:
        """The sidecar's own share of the request's time: everything not spent waiting on an upstream."""
        return max(0.0, self.duration - self.upstream_time)


class RecordSink(Protocol):
    """Where finished requests go. Called once per request, on the event loop: must not block.

    A Protocol, not a base class: sinks written in interpreted modules (the access log, spans) cannot
    inherit from a class this compiled module defines, and need not."""

    def record(self, request: RequestRecord) -> None: ...
