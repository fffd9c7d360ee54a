"""The record of one request, handed to the sinks when the request ends, and the sink interface.

Owns what every request leaves behind: which listener, route, cluster and endpoint served it, how many
attempts it took, the status the client got (or that it was reset), the cause of a local reply, bytes in
and out, the total time, the time spent waiting on upstreams and the sidecar's own share of it, the trace
and span ids, the peer's verified identity (empty without mTLS) and the API client's service name (empty
unless the route's `api_key` recognised the caller's key). A request that was answered, reset or refused
ends with exactly one record: metrics are one sink of it (`proxy.telemetry.metrics.MetricsSink`); the
access log and spans will be others, with no change to the request path.

The request path's per-request context is a subclass of the record (one object per request, not two),
so a sink must copy what it keeps beyond its `record` call. Must not do I/O or hold state of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.local_reply import Cause
    from proxy.telemetry.metrics import RouteMetrics


class RequestRecord:
    """What a request did, complete when the sinks get it.

    Times are in seconds of the request path's clock. `status` is what the client got (499 when it left
    first); `reset` says the response was broken off after it started. `cause` is set when the sidecar
    answered itself. `counted_in` is the bound metric child the request counts in, chosen by the stage
    that decided the answer.
    """

    __slots__ = ("api_client", "attempts", "bytes_in", "bytes_out", "cause", "cluster", "counted_in", "duration",
                 "endpoint", "listener", "peer_identity", "request_id", "reset", "route", "span_id", "started_at",
                 "status", "trace_id", "upstream_time")

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
        self.trace_id = b""
        self.span_id = b""
        self.peer_identity = ""
        # The service a route's `api_key` check recognised the caller's key as ("" without one).
        self.api_client = ""
        self.counted_in = counted_in

    @property
    def sidecar_time(self) -> float:
        """The sidecar's own share of the request's time: everything not spent waiting on an upstream."""
        return max(0.0, self.duration - self.upstream_time)


class RecordSink:
    """Where finished requests go. Called once per request, on the event loop: must not block."""

    def record(self, request: RequestRecord) -> None:
        raise NotImplementedError
