"""The retry loop: attempts until one answer goes to the client, within the route's retry policy.

Owns `RetryLoop` (one per route with a retry policy): the loop itself (the retry budget's request count,
holding a retry slot while a retry is in flight, the backoff between attempts) and `decide`, the one
place a failed or retryable attempt becomes a retry. It sits above the cluster stage, so every attempt is
admitted by the cluster's bulkhead on its own and a retry storm cannot bypass it. A retry replays the
whole body or does not happen: a body over `replay_buffer`, or a streamed one not kept in full, keeps the
answer in hand (`RequestBody.can_replay` is the one replay rule). A retry is not sent, and the answer in
hand not dropped, when no endpoint could take it (every one ejected or refused by its breaker).
Must not send anything itself (the attempt stage does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.clock import Clock
from proxy.message import first_header
from proxy.resilience.budget import BudgetDecision
from proxy.resilience.classify import Verdict
from proxy.resilience.retry import CompiledRetryPolicy
from proxy.stages.context import RequestContext
from proxy.stream import ResponseReady

if TYPE_CHECKING:
    from proxy.stages.cluster import ClusterStage

IDEMPOTENCY_KEY = b"idempotency-key"
RETRY_AFTER = b"retry-after"


class RetryLoop:
    """A route's retry policy, run as a loop around the cluster stage."""

    __slots__ = ("clock", "policy")

    def __init__(self, policy: CompiledRetryPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock

    async def run(self, ctx: RequestContext, target: ClusterStage) -> None:
        """Attempts until one answers the client (the attempt stage sets the record's status)."""
        policy = self.policy
        body = ctx.stream.body
        policy.budget.record_request()
        if body is not None and ctx.whole is None:
            body.keep_for_replay(policy.replay_buffer)
        ctx.tried = []
        holding_retry = False
        try:
            while True:
                delay = await target.run(ctx)
                if holding_retry:
                    policy.budget.release_retry()
                    holding_retry = False
                if delay is None:
                    return
                holding_retry = True
                if delay > 0:
                    await self.clock.sleep(delay)
        finally:
            if holding_retry:
                policy.budget.release_retry()

    def decide(self, ctx: RequestContext, verdict: Verdict, reached_upstream: bool,
               ready: ResponseReady | None) -> float | None:
        """May this attempt's outcome be retried? The delay before the retry, or None. Checks the policy,
        the request, the body, the endpoints and the budget, and counts the decision."""
        policy = self.policy
        stream = ctx.stream
        target = ctx.target
        if (target is None or ctx.attempts > policy.attempts or not policy.should_retry(verdict)
                or stream.response_started or stream.response_done):
            return None
        head = stream.head
        # A gRPC call is retried under the route's conditions whatever its method (always POST): the route
        # names the grpc-status codes that are safe to retry, as gRPC's own retry policy does.
        keyed = stream.grpc or head.header(IDEMPOTENCY_KEY) is not None
        if not policy.may_retry_request(head.method, keyed, reached_upstream):
            return None
        if not self._replayable(ctx) or not target.cluster.available():
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
        delay = policy.backoff.delay(ctx.attempts)
        if ready is not None:
            hint = policy.retry_after_delay(first_header(ready.head.headers, RETRY_AFTER), ready.head.status,
                                            self.clock.wall())
            if hint is not None and hint > delay:
                delay = hint
        return delay

    def _replayable(self, ctx: RequestContext) -> bool:
        """Can the request body be sent again in full?"""
        body = ctx.stream.body
        if body is None:
            return True
        whole = ctx.whole
        if whole is not None:
            return len(whole) <= self.policy.replay_buffer  # arrived at once, but maybe over the buffer
        return body.can_replay()  # a streamed body: only when every byte so far was kept
