"""The route stage: what a matched route does before its cluster is asked, and the route deadline.

Owns `RouteStage`, one per route, compiled when a config is loaded (a hook the route does not have is
None and costs nothing), and `Router`, the immutable snapshot of a listener's route table and stages
(swapped whole on reload: a request reads it once, so it finishes on the config it started with). The
order, and why:
- authorization first (a `RequestCheck`, proxy/filters/check.py: the route's `authz` identity rules, then
  its `api_key`), so a refused caller costs nothing else;
- rate limit, then fault injection, before any upstream work: a limited or faulted request costs the
  upstream nothing. Fault delays sit outside the route deadline (Istio: no timeouts or retries apply to
  injected faults), so the deadline starts after them;
- the split picks the cluster once per logical request, before any retry;
- rewrite and request header rules on what will actually be sent;
- the route deadline above the retry loop, so it bounds all attempts and backoff; on expiry it cancels
  the request (`CancelReason.ROUTE_DEADLINE`) and the request path answers 504, or resets a started
  response.
Must not touch endpoints or connections (the cluster and attempt stages do).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from proxy.clock import Clock
from proxy.filters.check import RequestCheck
from proxy.filters.headers import HeaderRewriter
from proxy.filters.ratelimit import RateLimiter, retry_after
from proxy.filters.rewrite import Rewriter
from proxy.local_reply import Cause, LocalReply, local_reply
from proxy.message import RequestHead
from proxy.resilience.fault import FaultInjector
from proxy.resilience.grpc import parse_grpc_timeout
from proxy.resilience.timeout import DeadlineTimers
from proxy.routing.split import Split
from proxy.routing.table import RouteTable
from proxy.stages.cluster import ClusterStage
from proxy.stages.context import RequestContext, expire
from proxy.stages.retry import RetryLoop
from proxy.stream import ROUTE_DEADLINE, CancelReason
from proxy.telemetry.cells import CounterCell
from proxy.telemetry.metrics import RouteMetrics


class RouteStage:
    """A route's compiled stages."""

    __slots__ = ("authorization", "clock", "deadlines", "fault", "local", "name", "rate_limited", "rate_limiter",
                 "request_rules", "response_rules", "retry", "rewriter", "rng", "split", "targets", "timeout",
                 "timeout_reply")

    def __init__(self, name: str, split: Split, targets: dict[str, ClusterStage], local: RouteMetrics,
                 clock: Clock, deadlines: DeadlineTimers[RequestContext, CancelReason]) -> None:
        self.name = name
        self.split = split
        self.targets = targets
        # Answers made on this route before a cluster is chosen (refused, rate limited, fault abort).
        self.local = local
        self.clock = clock
        self.rng: random.Random = clock.random
        self.deadlines = deadlines
        self.timeout: float | None = None
        self.timeout_reply: LocalReply | None = None
        self.authorization: RequestCheck | None = None
        self.request_rules: HeaderRewriter | None = None
        self.response_rules: HeaderRewriter | None = None
        self.rewriter: Rewriter | None = None
        self.retry: RetryLoop | None = None
        self.rate_limiter: RateLimiter | None = None
        self.rate_limited: CounterCell | None = None
        self.fault: FaultInjector | None = None

    def set_timeout(self, timeout: float | None) -> None:
        self.timeout = timeout
        if timeout is not None:
            self.timeout_reply = local_reply(Cause.TIMEOUT, f"route {self.name}: timeout after {timeout:g}s")

    async def run(self, ctx: RequestContext) -> None:
        """Serve a request this route matched: its hooks, then its cluster under the route deadline."""
        ctx.route_stage = self
        ctx.route = self.name
        ctx.counted_in = self.local
        started = ctx.started_at
        if self.authorization is not None or self.rate_limiter is not None or self.fault is not None:
            reply = self._refusal(ctx)
            if reply is None and self.fault is not None:
                decision = self.fault.decide()
                if decision.delay:
                    await self.clock.sleep(decision.delay)
                    started = self.clock.now()  # the injected delay is not the upstream's time
                if decision.abort is not None:
                    reply = local_reply(Cause.FAULT_ABORT, f"route {self.name}: fault injected",
                                        status=decision.abort)
            if reply is not None:
                ctx.answer(reply)
                return
        target = self.targets[self.split.pick(self.rng)]
        ctx.target = target
        ctx.cluster = target.cluster.name
        ctx.counted_in = target.metrics
        ctx.retry = self.retry
        head = ctx.stream.head
        if self.rewriter is not None:
            self.rewriter.apply(head)
        if self.request_rules is not None:
            self.request_rules.apply(head.headers)
        body = ctx.stream.body
        if body is not None and not ctx.stream.expect_continue:
            ctx.whole = body.take_complete()  # the small-request fast path: the body goes out in one write
        retry = self.retry
        timeout = grpc_timeout(self.timeout, head) if ctx.stream.grpc else self.timeout
        if timeout is None:
            # The retry loop, or the one attempt, awaited here directly: a coroutine level costs per request.
            if retry is None:
                await target.run(ctx)
            else:
                await retry.run(ctx, target)
            return
        deadline = ctx.deadline = started + timeout
        # A deadline on the shared timer wheel, not asyncio.timeout: that context manager (Timeout object,
        # current_task, reschedule, uncancel) cost ~15% of a request's CPU in profiles.
        timer = self.deadlines.call_at(deadline, expire, ctx, ROUTE_DEADLINE)
        try:
            if retry is None:
                await target.run(ctx)
            else:
                await retry.run(ctx, target)
        finally:
            timer.cancel()

    def _refusal(self, ctx: RequestContext) -> LocalReply | None:
        """The route's own refusals, in order: authorization, then the rate limit."""
        if self.authorization is not None:
            reply = self.authorization.check(ctx.stream, ctx)
            if reply is not None:
                return reply
        if self.rate_limiter is not None:
            stream = ctx.stream
            wait = self.rate_limiter.check(stream.head.headers, stream.peer_identity)
            if wait:
                if self.rate_limited is not None:
                    self.rate_limited.inc()
                return local_reply(Cause.RATE_LIMITED, f"route {self.name}: rate limited",
                                   retry_after=retry_after(wait))
        return None


class Router:
    """An immutable snapshot: the route table and each route's stages (swapped whole on reload)."""

    __slots__ = ("no_route", "routes", "table")

    def __init__(self, table: RouteTable, routes: Sequence[RouteStage], no_route: RouteMetrics) -> None:
        self.table = table
        self.routes = tuple(routes)
        # Answers made before any route was chosen (no route, the listener cap, refused requests).
        self.no_route = no_route


def grpc_timeout(timeout: float | None, head: RequestHead) -> float | None:
    """A gRPC call's deadline: its `grpc-timeout`, capped by the route's timeout (either may be absent)."""
    asked = parse_grpc_timeout(head.header(b"grpc-timeout"))
    if asked is None:
        return timeout
    return asked if timeout is None or asked < timeout else timeout
