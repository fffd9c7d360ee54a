"""The edge stage: what every request gets before routing, on every listener.

Owns, in this order: the listener's cap on requests in flight (a 503 before any work); the request id
(the client's one `x-request-id`, else a new one: every answer, local ones included, carries it); the
trace context (extracted once, so local replies can be traced too); and the forwarding headers
(`x-forwarded-for` gets the peer, `x-forwarded-proto` the listener's scheme unless present, and
`x-forwarded-client-cert` is removed from what the client sent and, on an mTLS listener, set to the value
the connection's handshake produced: the caller's identity as this sidecar verified it, made once per
connection, not per request), added before the route's hooks and header rules as Envoy's connection
manager does, so those see what the upstream will. Must not route or answer for anything but the cap.
"""

from __future__ import annotations

import random

from proxy.filters.trace import TraceContext, TracePropagator
from proxy.http.headers import stamp_edge_headers, stamp_request_id
from proxy.stages.context import RequestContext


class Edge:
    """A listener's edge: its in-flight cap, request ids, trace extraction and forwarding headers."""

    __slots__ = ("forwarded_proto", "max_in_flight", "record_spans", "rng", "trace")

    def __init__(self, max_in_flight: int, forwarded_proto: bytes, trace: TracePropagator,
                 rng: random.Random) -> None:
        self.max_in_flight = max_in_flight  # 0: no cap
        self.forwarded_proto = forwarded_proto
        self.trace = trace
        self.rng = rng
        # Set by the wiring when spans are exported: sampled requests then get a server span and attempt spans.
        self.record_spans = False

    def over_cap(self, in_flight: int) -> bool:
        return self.max_in_flight > 0 and in_flight >= self.max_in_flight

    def stamp(self, ctx: RequestContext) -> None:
        """Give the request its id (also for requests answered without a handler)."""
        stream = ctx.stream
        head = stream.head
        ctx.head = head
        ctx.path = head.path
        stream.request_id = stamp_request_id(head.headers, self.rng)

    def enter(self, ctx: RequestContext) -> None:
        """The request id, the trace context and the forwarding headers, once per logical request."""
        stream = ctx.stream
        head = stream.head
        ctx.head = head
        ctx.path = head.path  # before any rewrite: what the access log shows
        headers = head.headers
        stream.request_id = stamp_edge_headers(headers, stream.peer_ip, self.forwarded_proto, self.rng,
                                               stream.forwarded_client_cert)
        trace = self.trace.extract(headers)
        ctx.tracer = self.trace
        ctx.trace_id = trace.trace_id
        if trace.sampled:
            ctx.sampled = True
            if self.record_spans:
                trace = self._server_span(ctx, trace)
        ctx.trace = trace

    def _server_span(self, ctx: RequestContext, incoming: TraceContext) -> TraceContext:
        """A sampled request on a listener that exports spans: its server span, child of the incoming span;
        the trace the attempts inject has it as their parent (B3's ParentSpanId names it)."""
        span = self.trace.new_span_id()
        ctx.server_span_id = span
        ctx.parent_span_id = incoming.parent_span_id
        ctx.attempt_spans = []
        return TraceContext(incoming.trace_id, span, True, incoming.tracestate, incoming.incoming_format)
