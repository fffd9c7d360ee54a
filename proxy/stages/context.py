"""The per-request state of the request path: one slotted object that every stage reads and fills in.

Owns `RequestContext`: the stream being served, what the stages decided (route, cluster, trace, the
route deadline, the body sent whole, the endpoints tried), the current attempt's state (endpoint, its
balancer token, when it was sent, its verdict) and, being a `RequestRecord`, the record the sinks get when
the request ends. Stages pass it instead of parameters; attempts run one after another, so the attempt
fields are reused. Must not do I/O or decide anything (the stages do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.stream import ROUTE_DEADLINE, CancelReason, RequestStream
from proxy.telemetry.record import RequestRecord

if TYPE_CHECKING:
    from proxy.filters.trace import TraceContext, TracePropagator
    from proxy.local_reply import LocalReply
    from proxy.resilience.classify import Verdict
    from proxy.stages.cluster import ClusterStage
    from proxy.stages.retry import RetryLoop
    from proxy.stages.route import RouteStage
    from proxy.telemetry.metrics import RouteMetrics
    from proxy.upstream.endpoint import Endpoint


class RequestContext(RequestRecord):
    """One request on its way through the stages (and, at its end, its record)."""

    __slots__ = ("deadline", "retry", "route_stage", "sent", "settled", "stream", "target", "token", "trace",
                 "tracer", "tried", "upstream", "verdict", "whole")

    def __init__(self, listener: str, stream: RequestStream, counted_in: RouteMetrics | None) -> None:
        super().__init__(listener, stream.started_at, counted_in)
        self.stream = stream
        self.route_stage: RouteStage | None = None
        self.target: ClusterStage | None = None
        self.retry: RetryLoop | None = None
        # The trace the request belongs to, and the listener's propagator that injects each attempt's span.
        self.trace: TraceContext | None = None
        self.tracer: TracePropagator | None = None
        # The route deadline (clock time), None without a route timeout.
        self.deadline: float | None = None
        # The request body when it had fully arrived before the first attempt: sent in one write, and
        # replayed from here by a retry.
        self.whole: bytes | None = None
        # Endpoints tried so far (with a retry policy: the balancer avoids them).
        self.tried: list[Endpoint] | None = None
        # The current attempt: its endpoint and balancer token, when it was sent, its verdict, and whether
        # that verdict has gone to the breaker, outlier detection, balancer and metrics.
        self.upstream: Endpoint | None = None
        self.token = 0
        self.sent = 0.0
        self.verdict: Verdict | None = None
        self.settled = False

    def answer(self, reply: LocalReply) -> None:
        """Answer with a local reply, or reset a response that has started, and note it for the record."""
        stream = self.stream
        if stream.response_started:
            stream.abort()  # the only honest signal left once a status line went out
            self.status = stream.response_status
            return
        self.status = stream.send_reply(reply)
        self.cause = reply.cause


def expire(ctx: RequestContext, reason: CancelReason) -> None:
    """Deadline callback (the route's or an attempt's deadline passed): cancel the request for it."""
    route = ctx.route_stage
    ctx.stream.cancel(reason, route.timeout_reply if route is not None and reason is ROUTE_DEADLINE else None)
