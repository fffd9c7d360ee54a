"""The cluster stage: admission by the cluster's bulkhead and the balancer's choice of endpoint.

Owns `ClusterStage`, one per (route, cluster) pair of a route's split: the cluster, the metric children
bound for the pair, and the endpoint attempt it hands the chosen endpoint to. Every attempt, a retry's
too, is admitted by the bulkhead on its own (max requests, then max pending with its timeout) and gets an
endpoint from the balancer, which offers only endpoints whose breaker admits and, with a retry policy,
avoids those already tried. A full bulkhead or no endpoint is answered here (503). Must not send anything
(the attempt stage does) or decide retries (the retry loop does).
"""

from __future__ import annotations

from proxy.local_reply import Cause, local_reply
from proxy.resilience.limits import LimitDecision
from proxy.stages.attempt import EndpointAttempt
from proxy.stages.context import RequestContext
from proxy.telemetry.metrics import RetryMetrics, RouteMetrics
from proxy.upstream.cluster import Cluster

_LIMIT_CAUSES = {
    LimitDecision.REJECTED_MAX_REQUESTS: (Cause.CLUSTER_LIMIT, "max_requests"),
    LimitDecision.REJECTED_MAX_PENDING: (Cause.CLUSTER_LIMIT, "max_pending"),
    LimitDecision.REJECTED_PENDING_TIMEOUT: (Cause.PENDING_TIMEOUT, "pending_timeout"),
}


class ClusterStage:
    """One (route, cluster) pair: the cluster, its bound metric children, and the attempt stage."""

    __slots__ = ("attempt", "cluster", "metrics", "retries")

    def __init__(self, cluster: Cluster, metrics: RouteMetrics, retries: RetryMetrics,
                 attempt: EndpointAttempt) -> None:
        self.cluster = cluster
        self.metrics = metrics
        self.retries = retries
        self.attempt = attempt

    async def run(self, ctx: RequestContext) -> float | None:
        """One attempt: admitted, given an endpoint, sent. None when the client got its answer (or was
        reset), else the delay before the retry the retry loop decided on."""
        ctx.attempts += 1
        cluster = self.cluster
        bulkhead = cluster.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            decision = bulkhead.rejection() or await bulkhead.acquire()
            if decision is not LimitDecision.ADMITTED:
                cause, reason = _LIMIT_CAUSES[decision]
                getattr(cluster.limits_rejected, reason).inc()
                ctx.answer(local_reply(cause, f"cluster {cluster.name}: {reason}"))
                return None
        try:
            policy = cluster.hash_policy  # ring hash with a key only: no key is computed otherwise
            picked = cluster.pick(ctx.tried, None if policy is None
                                  else policy.key(ctx.stream.head, ctx.stream.peer_ip))
            if picked is None:
                ctx.answer(local_reply(Cause.UNAVAILABLE, f"cluster {cluster.name}: no endpoint available "
                                       "(none known, or all unhealthy, ejected or with breakers open)"))
                return None
            endpoint, token = picked
            if ctx.tried is not None:
                ctx.tried.append(endpoint)
            return await self.attempt.run(ctx, endpoint, token)
        finally:
            if bulkhead is not None:
                bulkhead.release()
