"""The endpoint attempt: one try of a request on one endpoint, from sending it to the end of its answer.

Owns `EndpointAttempt` (one per router, shared by its routes): the per-try deadline, which covers connect
and the response head and is cut short by the route's deadline; taking a stream from the endpoint's pool
(a pooled one the upstream closed while idle is replaced once, when nothing can have been processed
twice); the trace's new child span and `x-sidecar-attempt` on each try; the one classifier's verdict,
which feeds the retry decision, the breaker, outlier detection, the balancer and the attempt metrics
alike (`_settle`, once per attempt); and relaying the answer (its header rules, head, body and trailers,
or the tunnel after a 101) into the request stream. The breaker hears of an attempt after its per-try
timeout, so it sees timeouts as failures, and before the retry decision, so a retry does not go to an
endpoint whose breaker this attempt just opened. Must not parse or frame bytes (the codec does).
"""

from __future__ import annotations

import asyncio
import logging

from proxy.clock import Clock
from proxy.errors import FailureKind, UpstreamError
from proxy.local_reply import Cause, failure_reply, local_reply
from proxy.message import Headers, first_header
from proxy.resilience.classify import Verdict, classify_cancelled, classify_failure, classify_grpc, classify_status
from proxy.resilience.grpc import format_grpc_timeout, grpc_status_of
from proxy.resilience.retry import IDEMPOTENT_METHODS
from proxy.resilience.timeout import Deadline, DeadlineTimers
from proxy.stages.context import RequestContext, expire
from proxy.stream import (
    NO_BODY,
    ROUTE_DEADLINE,
    STREAM_IDLE,
    TRY_DEADLINE,
    CancelReason,
    ResponseReady,
    UpstreamStream,
)
from proxy.telemetry.log_format import correlation
from proxy.telemetry.record import AttemptSpan
from proxy.upstream.endpoint import Endpoint

X_SIDECAR_ATTEMPT = b"x-sidecar-attempt"
# `x-sidecar-attempt: N` headers, made once (attempts beyond the table are made on the fly).
_ATTEMPT_HEADERS = tuple((X_SIDECAR_ATTEMPT, b"%d" % n) for n in range(17))

log = logging.getLogger("proxy.stages.attempt")


class EndpointAttempt:
    """Sends a request to one endpoint and relays (or, for a retry, drops) its answer."""

    __slots__ = ("clock", "deadlines")

    def __init__(self, clock: Clock, deadlines: DeadlineTimers[RequestContext, CancelReason]) -> None:
        self.clock = clock
        self.deadlines = deadlines

    async def run(self, ctx: RequestContext, endpoint: Endpoint, token: int) -> float | None:
        """None when the client got this attempt's answer (or a reset), else the delay before a retry."""
        self._begin(ctx, endpoint, token)
        conn: UpstreamStream | None = None
        try:
            try_timer = self._try_timer(ctx)
            try:
                conn, ready = await self._send(ctx, endpoint)
            except UpstreamError as error:
                return self._failed(ctx, classify_failure(error.kind), not error.kind.before_connect,
                                    error.context, error.kind)
            except asyncio.CancelledError:
                if ctx.stream.cancel_reason is not TRY_DEADLINE:
                    raise
                ctx.stream.cancel_handled()  # our own deadline: this attempt failed, the request goes on
                return self._failed(ctx, classify_failure(FailureKind.TIMEOUT, per_try_timeout=True), True,
                                    f"{endpoint.pool.context}: per-try timeout", FailureKind.TIMEOUT)
            finally:
                if try_timer is not None:
                    try_timer.cancel()
            delay = self._retry_instead(ctx, ready)
            if delay is not None:
                return delay  # the finally closes `conn`: its answer is dropped
            if self._start_relay(ctx, conn, ready):
                conn = None  # answered by the sidecar, or handed to the tunnel
                return None
            try:
                if not conn.attach(ctx.stream):
                    await conn.response_done()
            except UpstreamError as error:
                # A reset, a bad chunk or oversize trailers mid-body: the breaker sees what it was.
                ctx.verdict = classify_failure(error.kind)
                ctx.stream.abort()
                return None
            self._end_relay(ctx, conn)
            conn = None
            return None
        except asyncio.CancelledError:
            # A stream idle timeout or the route deadline is the upstream's slowness: a failure for the
            # breaker. A client that went away is nobody's failure.
            if ctx.verdict is None:
                reason = ctx.stream.cancel_reason
                timed_out = reason is STREAM_IDLE or reason is ROUTE_DEADLINE
                ctx.verdict = classify_failure(FailureKind.TIMEOUT) if timed_out else classify_cancelled()
            raise
        finally:
            self._end(ctx, endpoint, conn)

    def _begin(self, ctx: RequestContext, endpoint: Endpoint, token: int) -> None:
        ctx.upstream = endpoint
        ctx.endpoint = endpoint.address
        ctx.token = token
        ctx.verdict = None
        ctx.settled = False
        trace, tracer = ctx.trace, ctx.tracer
        if trace is not None and tracer is not None:
            ctx.span_id = tracer.inject(ctx.stream.head.headers, trace)
        if ctx.stream.grpc and ctx.deadline is not None:
            set_grpc_timeout(ctx.stream.head.headers, ctx.deadline - self.clock.now())
        endpoint.in_flight += 1
        endpoint.requests += 1
        ctx.sent = self.clock.now()  # the attempt's latency, for the balancer, runs from here to its verdict

    def _end(self, ctx: RequestContext, endpoint: Endpoint, conn: UpstreamStream | None) -> None:
        endpoint.in_flight -= 1
        if ctx.verdict is not None and not ctx.settled:
            self._settle(ctx)
        body = ctx.stream.body
        if body is not None:
            body.detach()
        if conn is not None:
            # Dropped for a retry, cancelled (client gone or deadline) or failed mid-way: the stream's state
            # is unknown, so it is closed rather than pooled.
            conn.detach()
            conn.abort()

    def _try_timer(self, ctx: RequestContext) -> Deadline[RequestContext, CancelReason] | None:
        """The per-try deadline's timer, when it ends before the route's (whose timer covers the rest)."""
        retry = ctx.retry
        if retry is None or retry.policy.per_try_timeout is None:
            return None
        deadline = self.clock.now() + retry.policy.per_try_timeout
        if ctx.deadline is not None and ctx.deadline <= deadline:
            return None
        return self.deadlines.call_at(deadline, expire, ctx, TRY_DEADLINE)

    def _settle(self, ctx: RequestContext) -> None:
        """The attempt's verdict to its endpoint (breaker, outlier detection), the balancer and the attempt
        metrics, once; its latency counts as upstream time in the record."""
        verdict = ctx.verdict
        endpoint = ctx.upstream
        target = ctx.target
        if verdict is None or endpoint is None or target is None:
            return
        ctx.settled = True
        now = self.clock.now()
        latency = now - ctx.sent
        ctx.upstream_time += latency
        spans = ctx.attempt_spans
        if spans is not None:  # a sampled request on a listener exporting spans: this attempt's client span
            spans.append(AttemptSpan(ctx.span_id, ctx.attempts, ctx.sent, now, endpoint.address, verdict))
        cluster = target.cluster
        cluster.report(endpoint, ctx.token, verdict, latency)
        if not verdict.cancelled:
            getattr(cluster.attempts, verdict.label).inc()

    def _failed(self, ctx: RequestContext, verdict: Verdict, reached_upstream: bool, context: str,
                kind: FailureKind) -> float | None:
        """An attempt that produced no response: retry it, or answer for it."""
        ctx.verdict = verdict
        self._settle(ctx)
        retry = ctx.retry
        if retry is not None:
            delay = retry.decide(ctx, verdict, reached_upstream, None)
            if delay is not None:
                return delay
        if kind is FailureKind.PROTOCOL or kind is FailureKind.HEADERS_TOO_LARGE or ctx.attempts > 1:
            _log_failure(ctx, kind, context)
        ctx.answer(failure_reply(kind, context))
        return None

    def _retry_instead(self, ctx: RequestContext, ready: ResponseReady) -> float | None:
        """An answer the policy would retry is settled before deciding: the retry's choice of endpoint must
        see it (a breaker it just opened). Any other answer settles once its body has ended, so a reset
        mid-body still counts as one."""
        status = ready.head.status
        verdict = classify_status(status)
        if ctx.stream.grpc and status == 200:
            verdict = grpc_verdict(ctx, ready.head.headers, verdict)  # a trailers-only answer's grpc-status
        ctx.verdict = verdict
        retry = ctx.retry
        if retry is None or not retry.policy.should_retry(verdict):
            return None
        self._settle(ctx)
        return retry.decide(ctx, verdict, True, ready)

    def _start_relay(self, ctx: RequestContext, conn: UpstreamStream, ready: ResponseReady) -> bool:
        """Write the response head (and the body bytes at hand); True when nothing more is relayed here (a
        101 made a tunnel, or an unexpected 101 was answered)."""
        stream = ctx.stream
        response = ready.head
        route = ctx.route_stage
        if route is not None and route.response_rules is not None:
            route.response_rules.apply(response.headers)
        ctx.status = response.status
        if response.status != 101:
            stream.start_response(response, ready.content_length, ready.no_body, conn.take_body())
            return False
        if not stream.websocket:
            ctx.answer(local_reply(Cause.UPSTREAM_PROTOCOL, f"{conn.context}: unexpected 101"))
            conn.detach()
            conn.abort()
            return True
        stream.start_response(response, None, True)
        stream.start_tunnel(conn)
        conn.start_tunnel(stream.tunnel_end)
        return True

    def _end_relay(self, ctx: RequestContext, conn: UpstreamStream) -> None:
        stream = ctx.stream
        trailers = conn.trailers
        stream.end_response(trailers)
        if stream.grpc and trailers is not None and ctx.verdict is not None:
            # The call's outcome arrives last: the breaker, outlier detection and metrics see grpc-status.
            ctx.verdict = grpc_verdict(ctx, trailers, ctx.verdict)
        body = stream.body
        conn.finish(reusable=body is None or body.complete)

    async def _send(self, ctx: RequestContext, endpoint: Endpoint) -> tuple[UpstreamStream, ResponseReady]:
        """Take a stream (pooled or new), send the request, and wait for the response head."""
        fresh = False
        while True:
            conn = None if fresh else endpoint.pool.take_idle()
            if conn is None:
                conn = await endpoint.pool.connect()
            try:
                self._write_request(ctx, conn)
                return conn, await conn.response_head()
            except UpstreamError as error:
                # A pooled stream the upstream closed while idle: send once more on a new one (not a retry)
                # when nothing can have been processed twice.
                if error.stale and not fresh and self._resendable(ctx):
                    fresh = True
                    continue
                conn.abort()
                raise
            except BaseException:
                conn.abort()
                raise

    def _write_request(self, ctx: RequestContext, conn: UpstreamStream) -> None:
        stream = ctx.stream
        body = stream.body
        whole = ctx.whole
        number = ctx.attempts
        attempt = _ATTEMPT_HEADERS[number] if number < len(_ATTEMPT_HEADERS) else (X_SIDECAR_ATTEMPT, b"%d" % number)
        conn.send(stream.head, attempt, NO_BODY if body is None else body.length, whole,
                  None if body is None else body.trailers, stream.websocket)
        if body is None or whole is not None:
            return
        stream.send_continue()
        # The upstream's write buffer bounds the streamed body: it pauses the client's socket.
        conn.set_body_reader(stream.reader)
        if number == 1:
            body.attach(conn)
        elif not body.reattach(conn):
            raise UpstreamError(FailureKind.RESET, f"{conn.context}: request body cannot be replayed")

    @staticmethod
    def _resendable(ctx: RequestContext) -> bool:
        stream = ctx.stream
        return stream.head.method in IDEMPOTENT_METHODS and (stream.body is None or ctx.whole is not None)


def _log_failure(ctx: RequestContext, kind: FailureKind, context: str) -> None:
    """The failure-path log line about a request (never called on success): an upstream that broke the
    protocol (a warning: its bug, worth a look), or a request that failed after its retries (info: how many
    is bounded by the retry budget). Both name the request and trace ids, to find its access log line and
    trace."""
    ids = correlation(ctx.stream.request_id, ctx.trace_id)
    if kind is FailureKind.PROTOCOL or kind is FailureKind.HEADERS_TOO_LARGE:
        log.warning("%s (request_id=%s trace_id=%s)", context, ids["request_id"], ids["trace_id"], extra=ids)
    else:
        log.info("retries given up after %d attempts: %s (request_id=%s trace_id=%s)", ctx.attempts, context,
                 ids["request_id"], ids["trace_id"], extra=ids)


def grpc_verdict(ctx: RequestContext, headers: Headers, otherwise: Verdict) -> Verdict:
    """The verdict `grpc-status` in `headers` (a trailers-only head, or trailers) gives a gRPC call, noted in
    its record; `otherwise` when there is none or it is malformed."""
    code = grpc_status_of(first_header(headers, b"grpc-status"))
    if code is None:
        return otherwise
    ctx.grpc_status = code
    return classify_grpc(code)


def set_grpc_timeout(headers: Headers, remaining: float) -> None:
    """The upstream learns the time left of the call's deadline in `grpc-timeout` (replacing the caller's)."""
    headers[:] = [h for h in headers if h[0] != b"grpc-timeout"]
    headers.append((b"grpc-timeout", format_grpc_timeout(remaining)))
