"""The request path of a listener: runs the stages for each request and hands its record to the sinks.

Owns `RequestPath`, what a listener's codec calls (it implements the codec's `Listener`): for each
request, the edge (`Edge`), the route table of the current `Router` snapshot (read once per request, so a
reload applies from the next request and in-flight ones finish on the config they started with), then
the matched `RouteStage`, which runs the retry loop, cluster stage and endpoint attempt below it. It is
the one place a request's cancellation is turned into an answer (`RequestStream.answer_cancelled`, for
every `CancelReason` but a per-try deadline, which the attempt recovers from), and the one place a
request ends: its record (`RequestContext`) goes to every sink, whether the request was answered, reset
or refused. Requests the codec refuses without a handler (malformed, 413, 405 CONNECT, cancelled before
its first step) come in through `refuse` and get a request id and a record too. The same class serves
every listener. Must not parse bytes (the codec does) or hold policy state (the stages do).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from proxy.clock import Clock
from proxy.filters.trace import TracePropagator
from proxy.http.settings import ServerSettings
from proxy.local_reply import Cause, LocalReply, local_reply
from proxy.stages.context import RequestContext
from proxy.stages.edge import Edge
from proxy.stages.route import Router
from proxy.stream import CLIENT_CLOSED, DownstreamConnection, RequestStream
from proxy.telemetry.log_format import correlation
from proxy.telemetry.metrics import Metrics, MetricsSink
from proxy.telemetry.record import RecordSink

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger("proxy.stages.path")


class RequestPath:
    """A listener's request handler and state (implements the codec's `Listener` protocol)."""

    __slots__ = ("_clock", "_conn_gauge", "_connections", "_http2_protections", "_metrics", "edge", "in_flight",
                 "metrics_sink", "name", "record_spans", "router", "settings", "sinks", "traffic")

    def __init__(self, name: str, settings: ServerSettings, router: Router, trace: TracePropagator,
                 metrics: Metrics, clock: Clock) -> None:
        self.name = name
        self.in_flight = 0
        self._clock = clock
        self._connections: set[DownstreamConnection] = set()
        self._conn_gauge = metrics.downstream_connections(name)
        # Connections report their bytes here (the codec's `Listener.traffic`).
        self.traffic = metrics.listener_traffic(name)
        self._metrics = metrics
        # sidecar_http2_protections_total children, bound on first use per reason.
        self._http2_protections: dict[str, Counter] = {}
        # Metrics for every request (a native call); the access log and spans when configured (`set_sinks`).
        self.metrics_sink = MetricsSink(clock, metrics.grpc_requests)
        self.sinks: tuple[RecordSink, ...] = ()
        # Whether sampled requests record a server span and attempt spans (a span sink is among the sinks).
        self.record_spans = False
        self.update(settings, router, trace)

    def update(self, settings: ServerSettings, router: Router, trace: TracePropagator) -> None:
        """Take a new config's settings, routes and tracing, from the next request on (a reload)."""
        self.settings = settings
        self.router = router
        self.edge = Edge(settings.max_requests_in_flight, settings.scheme, trace, self._clock.random)
        self.edge.record_spans = self.record_spans

    def set_sinks(self, sinks: tuple[RecordSink, ...], record_spans: bool) -> None:
        """Where finished requests go besides the metrics (access log, spans), from the next request on."""
        self.sinks = sinks
        self.record_spans = record_spans
        self.edge.record_spans = record_spans

    # -- Listener protocol -------------------------------------------------------------------------

    def connection_opened(self, conn: DownstreamConnection) -> None:
        self._connections.add(conn)
        self._conn_gauge.inc()
        self.traffic.connections.inc()

    def connection_closed(self, conn: DownstreamConnection) -> None:
        self._connections.discard(conn)
        self._conn_gauge.dec()

    def http2_protection(self, reason: str) -> None:
        """The HTTP/2 codec refused a stream or closed a connection for `reason` (a protection)."""
        counter = self._http2_protections.get(reason)
        if counter is None:
            counter = self._http2_protections[reason] = self._metrics.http2_protections(self.name, reason)
        counter.inc()

    @property
    def connections(self) -> set[DownstreamConnection]:
        return self._connections

    def drain(self) -> None:
        for conn in list(self._connections):
            conn.drain()

    def refuse(self, stream: RequestStream, reply: LocalReply | None) -> None:
        """A request the codec answers without running a handler: `reply`, or (None) the cancellation that
        stopped its handler before the first step."""
        ctx = RequestContext(self.name, stream, self.router.no_route)
        self.edge.stamp(ctx)
        if reply is not None:
            ctx.answer(reply)
        else:
            ctx.status = stream.answer_cancelled()
        self._finish(ctx)

    async def handle(self, stream: RequestStream) -> None:
        """Serve one request: the edge, the route, and the stages below it; then the record to the sinks."""
        router = self.router  # one snapshot for the whole request, whatever reloads happen meanwhile
        ctx = RequestContext(self.name, stream, router.no_route)
        edge = self.edge
        if edge.over_cap(self.in_flight):
            edge.stamp(ctx)
            ctx.answer(local_reply(Cause.LISTENER_LIMIT, "listener limit"))
            self._finish(ctx)
            return
        self.in_flight += 1
        try:
            edge.enter(ctx)
            head = stream.head
            route = router.table.find(head, stream.peer_identity)
            if route is None:
                ctx.answer(local_reply(Cause.NO_ROUTE, f"no route for {head.authority or '-'}{head.path}"))
            else:
                await router.routes[route.index].run(ctx)
        except asyncio.CancelledError:
            if not self._answer_cancelled(ctx):
                raise
        except Exception:
            # A bug must never show a client a traceback: log it, and answer 500 or reset.
            ids = correlation(stream.request_id, ctx.trace_id)
            log.exception("request handler failed (request_id=%s trace_id=%s)", ids["request_id"], ids["trace_id"],
                          extra=ids)
            ctx.answer(local_reply(Cause.INTERNAL))
        finally:
            self.in_flight -= 1
            self._finish(ctx)

    def _answer_cancelled(self, ctx: RequestContext) -> bool:
        """Answer a cancelled request; True when the cancellation was the request path's to handle. With no
        reason, the task was cancelled from outside (the worker stopping): the client is reset and the
        cancellation goes on."""
        stream = ctx.stream
        reply = stream.cancel_reply
        if reply is not None and not stream.response_started and not stream.response_done:
            ctx.cause = reply.cause
        ctx.status = stream.answer_cancelled()
        task = stream.task
        if stream.cancel_reason is None or task is None:
            return False
        task.uncancel()
        return True

    def _finish(self, ctx: RequestContext) -> None:
        """The request has ended: complete its record and hand it to every sink."""
        stream = ctx.stream
        ctx.duration = self._clock.now() - ctx.started_at
        ctx.request_id = stream.request_id
        ctx.bytes_out = stream.bytes_out
        ctx.reset = stream.aborted
        ctx.peer_identity = stream.peer_identity
        body = stream.body
        if body is not None:
            ctx.bytes_in = body.received
        if not ctx.status:
            ctx.status = CLIENT_CLOSED
        if stream.grpc and ctx.grpc_status < 0 and ctx.cause is not None:
            ctx.grpc_status = ctx.cause.grpc_status  # the sidecar answered the call itself
        self.metrics_sink.record(ctx)
        for sink in self.sinks:
            sink.record(ctx)
