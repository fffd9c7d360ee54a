"""The request path, assembled: listener edge -> router -> route stages -> cluster -> endpoint attempt.

Owns the wiring of the stages (the only place that composes them), each compiled once per route and
cluster when a config is loaded, never per request. The order, and why:
- edge (request id, forwarding headers, trace extract, timer) first, so every answer, local ones
  included, carries the request id and is counted;
- router next: the route table is a snapshot read once per request, so a reload applies from the next
  request and in-flight ones finish on the config they started with;
- hooks (rate limit, then fault injection) before any upstream work: a limited or faulted request costs
  the upstream nothing; header rules after them, on what will actually be sent;
- route deadline above the retry loop, so it bounds all attempts and backoff; fault delays sit outside it
  (Istio: no timeouts or retries apply to injected faults);
- split picks the cluster once per logical request, before any retry;
- retry loop (policy, budget, backoff, body replay) above the cluster bulkhead, so every attempt is
  admitted by the bulkhead on its own and a retry storm cannot bypass it;
- attempt: the balancer offers endpoints whose breaker admits (avoiding those tried), the per-try
  deadline covers connect and the response head, a new span id and `x-sidecar-attempt` go on each try;
- the one classifier's verdict feeds retry, breaker, outlier detection and attempt metrics alike; the
  breaker records after the per-try timeout so it sees timeouts as failures, and before the retry
  decision, so a retry is not sent (and the answer in hand not dropped) when no endpoint can take it;
- a retry replays the whole body or does not happen: a body over `replay_buffer`, or a streamed one not
  kept in full, keeps the answer in hand.
Must not parse bytes (the codec does) or hold policy state of its own (the concern packages do).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence

from proxy.clock import Clock
from proxy.errors import FailureKind, UpstreamError
from proxy.filters.headers import HeaderRewriter
from proxy.filters.ratelimit import RateLimiter, retry_after
from proxy.filters.rewrite import Rewriter
from proxy.filters.trace import TraceContext, TracePropagator
from proxy.http.headers import X_FORWARDED_FOR, X_FORWARDED_PROTO
from proxy.http.settings import ServerSettings
from proxy.local_reply import Cause, LocalReply, failure_reply, local_reply
from proxy.message import first_header
from proxy.resilience.budget import BudgetDecision
from proxy.resilience.classify import Verdict, classify_cancelled, classify_failure, classify_status
from proxy.resilience.fault import FaultInjector
from proxy.resilience.limits import LimitDecision
from proxy.resilience.retry import IDEMPOTENT_METHODS, CompiledRetryPolicy
from proxy.resilience.timeout import DeadlineTimers
from proxy.routing.split import Split
from proxy.routing.table import RouteTable
from proxy.stream import NO_BODY, DownstreamConnection, RequestStream, ResponseReady, UpstreamStream
from proxy.telemetry.cells import CounterCell
from proxy.telemetry.metrics import Metrics, RetryMetrics, RouteMetrics
from proxy.upstream.cluster import Cluster
from proxy.upstream.endpoint import Endpoint

log = logging.getLogger("proxy.outbound")

CLIENT_CLOSED = 499  # nginx's convention for "the client went away before the answer" in metrics
IDEMPOTENCY_KEY = b"idempotency-key"
RETRY_AFTER = b"retry-after"
X_SIDECAR_ATTEMPT = b"x-sidecar-attempt"
# `x-sidecar-attempt: N` headers, made once (attempts beyond the table are made on the fly).
_ATTEMPT_HEADERS = tuple((X_SIDECAR_ATTEMPT, b"%d" % n) for n in range(17))
_LIMIT_CAUSES = {
    LimitDecision.REJECTED_MAX_REQUESTS: (Cause.CLUSTER_LIMIT, "max_requests"),
    LimitDecision.REJECTED_MAX_PENDING: (Cause.CLUSTER_LIMIT, "max_pending"),
    LimitDecision.REJECTED_PENDING_TIMEOUT: (Cause.PENDING_TIMEOUT, "pending_timeout"),
}


# Which deadline of the request path cancelled a handler (the values of `RequestStream.expired`).
ROUTE_DEADLINE = "route"
TRY_DEADLINE = "try"


def _expire(exchange: RequestStream, which: str) -> None:
    """Timer callback: a deadline passed. Cancels the handler; `exchange.expired` says which deadline."""
    task = exchange.task
    if exchange.timed_out or task is None or task.done():
        return
    if exchange.expired is None:
        exchange.expired = which
        task.cancel()
    elif which is ROUTE_DEADLINE:
        # Both fired before the handler ran: its one pending cancellation now means the route's deadline.
        exchange.expired = ROUTE_DEADLINE


class Target:
    """One (route, cluster) pair: the cluster and the metric children bound for the pair."""

    __slots__ = ("cluster", "metrics", "retries")

    def __init__(self, cluster: Cluster, metrics: RouteMetrics, retries: RetryMetrics) -> None:
        self.cluster = cluster
        self.metrics = metrics
        self.retries = retries


class RoutePath:
    """A route's compiled stages (None where the route has no such stage: it then costs nothing)."""

    __slots__ = ("fault", "local", "name", "rate_limited", "rate_limiter", "request_rules", "response_rules",
                 "retry", "rewriter", "split", "targets", "timeout")

    def __init__(self, name: str, split: Split, targets: dict[str, Target], timeout: float | None) -> None:
        self.name = name
        self.split = split
        self.targets = targets
        self.timeout = timeout
        self.request_rules: HeaderRewriter | None = None
        self.response_rules: HeaderRewriter | None = None
        self.rewriter: Rewriter | None = None
        self.retry: CompiledRetryPolicy | None = None
        self.rate_limiter: RateLimiter | None = None
        self.fault: FaultInjector | None = None
        self.rate_limited: CounterCell | None = None
        # Answers made on this route before a cluster is chosen (rate limited, fault abort).
        self.local: RouteMetrics | None = None


class Router:
    """An immutable snapshot: the route table and each route's compiled path (swapped whole on reload)."""

    __slots__ = ("no_route", "paths", "table")

    def __init__(self, table: RouteTable, paths: Sequence[RoutePath], no_route: RouteMetrics) -> None:
        self.table = table
        self.paths = tuple(paths)
        self.no_route = no_route


def build_router(listener_name: str, table: RouteTable, clusters: dict[str, Cluster], metrics: Metrics,
                 clock: Clock) -> Router:
    """Compile every route of a listener once: hooks, header rules, rewrite, retry policy, split targets
    and the metric children each needs."""
    paths: list[RoutePath] = []
    for route in table.routes:
        config = route.config
        targets = {
            name: Target(clusters[name], metrics.for_route(listener_name, route.name, name),
                         metrics.retries(route.name, name))
            for name in route.split.names
        }
        path = RoutePath(route.name, route.split, targets, config.timeout)
        rules = config.headers
        path.request_rules = HeaderRewriter.from_config(rules.request if rules else None)
        path.response_rules = HeaderRewriter.from_config(rules.response if rules else None)
        path.rewriter = Rewriter.from_config(config.rewrite, config.match)
        if config.retries is not None and config.retries.attempts > 0:
            path.retry = CompiledRetryPolicy.from_config(config.retries, clock)
        if config.rate_limit is not None:
            path.rate_limiter = RateLimiter.from_config(config.rate_limit, clock)
            path.rate_limited = metrics.rate_limited(listener_name, route.name)
        path.fault = FaultInjector.from_config(config.fault, clock.random)
        if path.rate_limiter is not None or path.fault is not None:
            path.local = metrics.for_route(listener_name, route.name, "")
        paths.append(path)
    return Router(table, paths, metrics.for_local(listener_name))


class _Retry:
    """An attempt's answer that will not reach the client: try again after `delay` seconds."""

    __slots__ = ("delay",)

    def __init__(self, delay: float) -> None:
        self.delay = delay


class OutboundListener:
    """A listener's request handler and state (implements the codec's `Listener` protocol)."""

    __slots__ = ("_clock", "_conn_gauge", "_connections", "_deadlines", "_forwarded_proto", "_loop", "in_flight",
                 "name", "rng", "router", "settings", "trace")

    def __init__(self, name: str, settings: ServerSettings, router: Router, trace: TracePropagator,
                 metrics: Metrics, clock: Clock) -> None:
        self.name = name
        self.settings = settings
        self.router = router
        self.trace = trace
        self.in_flight = 0
        self._clock = clock
        self.rng: random.Random = clock.random
        self._loop = asyncio.get_running_loop()
        # Route and per-try deadlines share one loop timer (a timer per deadline cost ~7 % of a request).
        self._deadlines: DeadlineTimers[RequestStream, str] = DeadlineTimers(clock)
        self._connections: set[DownstreamConnection] = set()
        self._conn_gauge = metrics.downstream_connections(name)
        self._forwarded_proto = settings.scheme

    # -- Listener protocol -------------------------------------------------------------------------

    def connection_opened(self, conn: DownstreamConnection) -> None:
        self._connections.add(conn)
        self._conn_gauge.inc()

    def connection_closed(self, conn: DownstreamConnection) -> None:
        self._connections.discard(conn)
        self._conn_gauge.dec()

    def local_reply_sent(self, exchange: RequestStream, reply: LocalReply) -> None:
        """Replies the codec makes itself (malformed requests, 413 on a declared length, CONNECT) never
        reach `handle`: count them here."""
        if exchange.local is not None and exchange.task is None:
            self.router.no_route.record(reply.head.status, self._loop.time() - exchange.started_at)

    @property
    def connections(self) -> set[DownstreamConnection]:
        return self._connections

    def drain(self) -> None:
        for conn in list(self._connections):
            conn.drain()

    async def handle(self, exchange: RequestStream) -> None:
        """Serve one request: the edge, then the route's stages."""
        settings = self.settings
        if settings.max_requests_in_flight and self.in_flight >= settings.max_requests_in_flight:
            self._answer_local(
                exchange, self.router.no_route, local_reply(Cause.LISTENER_LIMIT, "listener limit")
            )
            return
        self.in_flight += 1
        try:
            await self._serve(exchange)
        finally:
            self.in_flight -= 1

    # -- the stages --------------------------------------------------------------------------------

    async def _serve(self, exchange: RequestStream) -> None:
        router = self.router  # one snapshot for the whole request, whatever reloads happen meanwhile
        head = exchange.head
        route = router.table.find(head)
        if route is None:
            reply = local_reply(Cause.NO_ROUTE, f"no route for {head.authority or '-'}{head.path}")
            self._answer_local(exchange, router.no_route, reply)
            return
        path = router.paths[route.index]
        if path.rate_limiter is not None:
            wait = path.rate_limiter.check(head.headers)
            if wait:
                if path.rate_limited is not None:
                    path.rate_limited.inc()
                reply = local_reply(Cause.RATE_LIMITED, f"route {path.name}: rate limited",
                                    retry_after=retry_after(wait))
                self._answer_local(exchange, path.local, reply)
                return
        deadline_base = exchange.started_at
        if path.fault is not None:
            decision = path.fault.decide()
            if decision.delay:
                await self._clock.sleep(decision.delay)
                deadline_base = self._clock.now()  # the injected delay is not the upstream's time
            if decision.abort is not None:
                reply = local_reply(Cause.FAULT_ABORT, f"route {path.name}: fault injected", status=decision.abort)
                self._answer_local(exchange, path.local, reply)
                return
        target = path.targets[path.split.pick(self.rng)]
        # Edge headers, once per logical request.
        headers = head.headers
        _append_forwarded(headers, exchange.peer_ip, self._forwarded_proto)
        if path.rewriter is not None:
            path.rewriter.apply(head)
        if path.request_rules is not None:
            path.request_rules.apply(headers)
        trace_ctx = self.trace.extract(headers)
        code = 0
        try:
            if path.timeout is None:
                code = await self._attempts(exchange, path, target, trace_ctx, None)
            else:
                deadline = deadline_base + path.timeout
                # A deadline on the listener's shared timer, not asyncio.timeout: that context manager (Timeout
                # object, current_task, reschedule, uncancel) cost ~15% of a request's CPU in profiles.
                timer = self._deadlines.call_at(deadline, _expire, exchange, ROUTE_DEADLINE)
                try:
                    code = await self._attempts(exchange, path, target, trace_ctx, deadline)
                except asyncio.CancelledError:
                    if exchange.expired is not ROUTE_DEADLINE or exchange.task is None:
                        raise
                    exchange.task.uncancel()  # our own cancellation: the request goes on to answer 504
                    code = self._timed_out(exchange, path)
                finally:
                    timer.cancel()
        except asyncio.CancelledError:
            # Cancelled by the codec: the stream idle timer (504), a malformed or oversize body or trailers
            # (400/413/431; both answered by the codec with the reply waiting in `local`), or the client left.
            local = exchange.local
            if exchange.timed_out:
                code = 504
            elif local is not None and not exchange.response_started and not exchange.response_done:
                code = local.head.status
            else:
                code = CLIENT_CLOSED
            raise
        finally:
            target.metrics.record(code or CLIENT_CLOSED, self._loop.time() - exchange.started_at)

    def _timed_out(self, exchange: RequestStream, path: RoutePath) -> int:
        if not exchange.response_started:
            reply = local_reply(Cause.TIMEOUT, f"route {path.name}: timeout after {path.timeout:g}s")
            exchange.send_local(reply)
            return reply.head.status
        # The response has started: the only honest signal left is a broken connection.
        exchange.abort()
        return exchange.response_status

    def _answer_local(self, exchange: RequestStream, metrics: RouteMetrics | None, reply: LocalReply) -> None:
        exchange.send_local(reply)
        if metrics is not None:
            metrics.record(reply.head.status, self._loop.time() - exchange.started_at)

    async def _attempts(self, exchange: RequestStream, path: RoutePath, target: Target, trace_ctx: TraceContext,
                        deadline: float | None) -> int:
        """The retry loop: attempts until one answer goes to the client; returns its status code."""
        policy = path.retry
        body = exchange.body
        whole: bytes | None = None
        if body is not None and not exchange.expect_continue:
            whole = body.take_complete()  # the small-request fast path: the body goes out in one write
        if policy is None:
            result = await self._attempt(exchange, path, target, trace_ctx, 1, None, None, whole, deadline)
            assert isinstance(result, int)
            return result
        policy.budget.record_request()
        if body is not None and whole is None:
            body.keep_for_replay(policy.replay_buffer)
        tried: list[Endpoint] = []
        number = 1
        holding_retry = False
        try:
            while True:
                result = await self._attempt(exchange, path, target, trace_ctx, number, policy, tried, whole,
                                             deadline)
                if holding_retry:
                    policy.budget.release_retry()
                    holding_retry = False
                if isinstance(result, int):
                    return result
                holding_retry = True
                if result.delay > 0:
                    await self._clock.sleep(result.delay)
                number += 1
        finally:
            if holding_retry:
                policy.budget.release_retry()

    def _retry_decision(self, exchange: RequestStream, policy: CompiledRetryPolicy | None, target: Target, number: int,
                        verdict: Verdict, reached_upstream: bool, ready: ResponseReady | None,
                        whole: bytes | None) -> _Retry | None:
        """May this attempt's outcome be retried? Checks the policy, the request, the budget; counts."""
        if policy is None or number > policy.attempts or not policy.should_retry(verdict) or exchange.response_done:
            return None
        head = exchange.head
        if exchange.response_started or not policy.may_retry_request(
                head.method, head.header(IDEMPOTENCY_KEY) is not None, reached_upstream):
            return None
        body = exchange.body
        if body is not None:
            if whole is not None:
                if len(whole) > policy.replay_buffer:
                    return None  # the whole body arrived at once, but is larger than the replay buffer
            elif not body.can_replay():
                return None  # a streamed body that outgrew the replay buffer (or was not kept whole)
        if not target.cluster.available():
            # Every endpoint is ejected or refused by its breaker: a retry could only end in a local 503,
            # so the answer in hand (the upstream's, or the failure's own reply) is the better one.
            return None
        decision = policy.budget.try_acquire_retry()
        if decision is not BudgetDecision.ALLOWED:
            if decision is BudgetDecision.BUDGET_EXHAUSTED:
                target.retries.budget_exhausted.inc()
            else:
                target.retries.limit_exceeded.inc()
            return None
        target.retries.retried.inc()
        delay = policy.backoff.delay(number)
        if ready is not None:
            hint = policy.retry_after_delay(first_header(ready.head.headers, RETRY_AFTER), ready.head.status,
                                            self._clock.wall())
            if hint is not None and hint > delay:
                delay = hint
        return _Retry(delay)

    async def _attempt(self, exchange: RequestStream, path: RoutePath, target: Target, trace_ctx: TraceContext,
                       number: int, policy: CompiledRetryPolicy | None, tried: list[Endpoint] | None,
                       whole: bytes | None, deadline: float | None) -> int | _Retry:
        """One attempt on one endpoint: the status code the client got, or a decision to retry."""
        cluster = target.cluster
        bulkhead = cluster.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            decision = bulkhead.rejection() or await bulkhead.acquire()
            if decision is not LimitDecision.ADMITTED:
                cause, reason = _LIMIT_CAUSES[decision]
                getattr(cluster.limits_rejected, reason).inc()
                reply = local_reply(cause, f"cluster {cluster.name}: {reason}")
                exchange.send_local(reply)
                return reply.head.status
        try:
            picked = cluster.pick(tried)
            if picked is None:
                reply = local_reply(Cause.UNAVAILABLE, f"cluster {cluster.name}: no endpoint available "
                                    "(none known, ejected, or breakers open)")
                exchange.send_local(reply)
                return reply.head.status
            endpoint, token = picked
            if tried is not None:
                tried.append(endpoint)
            # The attempt's own deadline: the per-try timeout, cut short by the route deadline, so a
            # timeout while waiting for the head is seen (and classified) here as the attempt's failure.
            attempt_deadline = deadline
            if policy is not None and policy.per_try_timeout is not None:
                per_try_end = self._clock.now() + policy.per_try_timeout
                if attempt_deadline is None or per_try_end < attempt_deadline:
                    attempt_deadline = per_try_end
            return await self._exchange(exchange, path, target, trace_ctx, number, policy, endpoint, token,
                                        attempt_deadline, deadline, whole)
        finally:
            if bulkhead is not None:
                bulkhead.release()

    async def _exchange(self, exchange: RequestStream, path: RoutePath, target: Target, trace_ctx: TraceContext,
                        number: int, policy: CompiledRetryPolicy | None, endpoint: Endpoint, token: int,
                        attempt_deadline: float | None, deadline: float | None,
                        whole: bytes | None) -> int | _Retry:
        """Send the request to `endpoint` and relay (or, for a retry, drop) its answer."""
        cluster = target.cluster
        head = exchange.head
        self.trace.inject(head.headers, trace_ctx)
        body = exchange.body
        attempt = _ATTEMPT_HEADERS[number] if number < len(_ATTEMPT_HEADERS) else (X_SIDECAR_ATTEMPT, b"%d" % number)
        endpoint.in_flight += 1
        endpoint.requests += 1
        sent = self._clock.now()  # the attempt's latency, for the balancer, runs from here to its verdict
        conn: UpstreamStream | None = None
        verdict: Verdict | None = None
        settled = False  # the verdict went to the breaker, outlier detection and metrics
        try:
            # The per-try deadline covers connect and the response head; the route's timer (in _serve)
            # covers the rest. Only a per-try deadline earlier than the route's needs a timer of its own.
            try_timer = None
            if attempt_deadline is not None and (deadline is None or attempt_deadline < deadline):
                try_timer = self._deadlines.call_at(attempt_deadline, _expire, exchange, TRY_DEADLINE)
            try:
                conn, ready = await self._send(exchange, endpoint, attempt, whole, number)
            except asyncio.CancelledError:
                if exchange.expired is ROUTE_DEADLINE:
                    # The route deadline: a failure for the breaker; _serve answers 504.
                    verdict = classify_failure(FailureKind.TIMEOUT)
                    settled = _settle(cluster, endpoint, token, verdict, self._clock.now() - sent)
                    raise
                if exchange.expired is not TRY_DEADLINE or exchange.task is None:
                    raise
                exchange.expired = None
                exchange.task.uncancel()
                verdict = classify_failure(FailureKind.TIMEOUT, per_try_timeout=True)
                settled = _settle(cluster, endpoint, token, verdict, self._clock.now() - sent)
                return self._failed(exchange, target, number, policy, verdict, True,
                                    f"{endpoint.pool.context}: per-try timeout", FailureKind.TIMEOUT, whole)
            except UpstreamError as error:
                verdict = classify_failure(error.kind)
                settled = _settle(cluster, endpoint, token, verdict, self._clock.now() - sent)
                return self._failed(exchange, target, number, policy, verdict, not error.kind.before_connect,
                                    error.context, error.kind, whole)
            finally:
                if try_timer is not None:
                    try_timer.cancel()
            response = ready.head
            verdict = classify_status(response.status)
            # An answer the policy would retry is settled before deciding: the retry's choice of endpoint
            # must see it (a breaker it just opened). Any other answer settles once its body has ended,
            # so a reset mid-body still counts as one.
            retry = None
            if policy is not None and policy.should_retry(verdict):
                settled = _settle(cluster, endpoint, token, verdict, self._clock.now() - sent)
                retry = self._retry_decision(exchange, policy, target, number, verdict, True, ready, whole)
            if retry is not None:
                return retry  # the finally closes `conn`: its answer is dropped
            if path.response_rules is not None:
                path.response_rules.apply(response.headers)
            if response.status == 101:
                if not exchange.websocket:
                    reply = local_reply(Cause.UPSTREAM_PROTOCOL, f"{conn.context}: unexpected 101")
                    exchange.send_local(reply)
                    return reply.head.status
                exchange.start_response(response, None, True)
                exchange.start_tunnel(conn)
                conn.start_tunnel(exchange.tunnel_end)
                conn = None  # the tunnel owns it now
                return 101
            exchange.start_response(response, ready.content_length, ready.no_body, conn.take_body())
            try:
                if not conn.attach(exchange):
                    await conn.response_done()
            except UpstreamError as error:
                # A reset, a bad chunk or oversize trailers mid-body: the breaker sees what it was.
                verdict = classify_failure(error.kind)
                exchange.abort()
                return response.status
            exchange.end_response(conn.trailers)
            conn.finish(reusable=body is None or body.complete)
            conn = None
            return response.status
        except asyncio.CancelledError:
            # A stream idle timeout or the route deadline is the upstream's slowness: a failure for the
            # breaker. A client that went away is nobody's failure.
            if verdict is None:
                timed_out = exchange.timed_out or exchange.expired is ROUTE_DEADLINE
                verdict = classify_failure(FailureKind.TIMEOUT) if timed_out else classify_cancelled()
            raise
        finally:
            endpoint.in_flight -= 1
            if verdict is not None and not settled:
                _settle(cluster, endpoint, token, verdict, self._clock.now() - sent)
            if body is not None:
                body.detach()
            if conn is not None:
                # Dropped for a retry, cancelled (client gone or deadline) or failed mid-way: the
                # connection's state is unknown, so it is closed rather than pooled.
                conn.detach()
                conn.abort()

    def _failed(self, exchange: RequestStream, target: Target, number: int, policy: CompiledRetryPolicy | None,
                verdict: Verdict, reached_upstream: bool, context: str, kind: FailureKind,
                whole: bytes | None) -> int | _Retry:
        """An attempt that produced no response: retry it, or answer for it."""
        retry = self._retry_decision(exchange, policy, target, number, verdict, reached_upstream, None, whole)
        if retry is not None:
            return retry
        if exchange.response_started:
            exchange.abort()
            return exchange.response_status
        reply = failure_reply(kind, context)
        exchange.send_local(reply)
        return reply.head.status

    async def _send(self, exchange: RequestStream, endpoint: Endpoint, attempt: tuple[bytes, bytes],
                    whole: bytes | None, number: int) -> tuple[UpstreamStream, ResponseReady]:
        """Take a connection (pooled or new), send the request, and wait for the response head."""
        head = exchange.head
        body = exchange.body
        fresh = False
        while True:
            conn = None if fresh else endpoint.pool.take_idle()
            if conn is None:
                conn = await endpoint.pool.connect()
            try:
                conn.send(head, attempt, NO_BODY if body is None else body.length, whole,
                          None if body is None else body.trailers, exchange.websocket)
                if body is not None and whole is None:
                    exchange.send_continue()
                    # The upstream's write buffer bounds the streamed body: it pauses the client's socket.
                    conn.set_body_reader(exchange.reader)
                    if number == 1:
                        body.attach(conn)
                    elif not body.reattach(conn):
                        raise UpstreamError(FailureKind.RESET, f"{conn.context}: request body cannot be replayed")
                return conn, await conn.response_head()
            except UpstreamError as error:
                # A pooled connection the upstream closed while idle: send once more on a new one (not a
                # retry) when nothing can have been processed twice.
                replayable = body is None or whole is not None
                if error.stale and not fresh and head.method in IDEMPOTENT_METHODS and replayable:
                    fresh = True
                    continue
                conn.abort()
                raise
            except BaseException:
                conn.abort()
                raise


def _append_forwarded(headers: list[tuple[bytes, bytes]], peer_ip: bytes, proto: bytes) -> None:
    """x-forwarded-for gets the peer appended; x-forwarded-proto is kept, or set to the listener's scheme."""
    forwarded_for = -1
    has_proto = False
    for index, (name, _) in enumerate(headers):
        if name == X_FORWARDED_FOR:
            forwarded_for = index
        elif name == X_FORWARDED_PROTO:
            has_proto = True
    if forwarded_for >= 0:
        name, value = headers[forwarded_for]
        headers[forwarded_for] = (name, value + b", " + peer_ip)
    elif peer_ip:
        headers.append((X_FORWARDED_FOR, peer_ip))
    if not has_proto:
        headers.append((X_FORWARDED_PROTO, proto))


def _settle(cluster: Cluster, endpoint: Endpoint, token: int, verdict: Verdict, latency: float) -> bool:
    """An attempt's verdict to its endpoint (breaker, outlier detection), the balancer and the attempt metrics,
    once."""
    cluster.report(endpoint, token, verdict, latency)
    if not verdict.cancelled:
        getattr(cluster.attempts, verdict.label).inc()
    return True
